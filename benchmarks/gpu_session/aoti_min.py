# Does torch's AOTInductor load any CUDA package on this image, or only compress's? A two-layer model, bf16 and fp32,
# loaded in a fresh process (as the aoti exporter's check does) and in this one.
import subprocess
import sys
import time

import torch

t0 = time.time()
for dtype in (torch.float32, torch.bfloat16):
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 2)).cuda().to(dtype).eval()
    x = torch.randn(8, 64, device="cuda", dtype=dtype)
    ep = torch.export.export(m, (x,))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=f"/tmp/min-{dtype}.pt2")
    print(dtype, "compiled", round(time.time() - t0, 1), flush=True)
    code = (
        f"import torch; f = torch._inductor.aoti_load_package('{path}'); "
        f"print(f(torch.randn(8, 64, device='cuda', dtype={dtype})).shape)"
    )
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True)
    print(dtype, "child rc", r.returncode, r.stdout.strip(), r.stderr[-1500:], flush=True)
    f = torch._inductor.aoti_load_package(path)
    print(dtype, "in-process", tuple(f(x).shape), round(time.time() - t0, 1), flush=True)
