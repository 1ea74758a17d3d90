"""Where AOTInductor dies on the GPU machine: a MiniLM-shaped bf16 classifier (random weights) exported with dynamic
batch and length, compiled, loaded and run — once in a fresh process (`fresh`), once after a torch.compile and a
CUDA-graph capture in the same process (`after_graphs`). Each case runs in a child under faulthandler, so a crash
prints its Python stack and the next case still runs.

    python3 -X faulthandler .gpu/aoti_probe.py          # on the GPU machine (2026-12-02: both cases SIGSEGV in
                                                        # aoti_load_package, torch 2.11 + CUDA 13, H200)
"""

from __future__ import annotations

import faulthandler
import subprocess
import sys
import time

import torch


def log(*parts: object) -> None:
    print(f"[{time.strftime('%T')}]", *parts, flush=True)


class Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).logits


def minilm_shaped() -> Logits:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                        num_labels=2, attn_implementation="sdpa")  # fmt: skip
    return Logits(BertForSequenceClassification(config).eval().cuda().to(torch.bfloat16))


def capture_graphs_first(model: Logits, ids: torch.Tensor, mask: torch.Tensor) -> None:
    compiled = torch.compile(model, mode="reduce-overhead")
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad():
        for _ in range(3):
            compiled(ids, mask)
        model(ids, mask)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            model(ids, mask)
    graph.replay()
    torch.cuda.synchronize()
    torch._dynamo.reset()
    log("graphs done")


def case(name: str) -> None:
    faulthandler.enable()
    model = minilm_shaped()
    ids = torch.randint(0, 30000, (4, 16), device="cuda")
    mask = torch.ones_like(ids)
    if name == "after_graphs":
        capture_graphs_first(model, ids, mask)
    batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=64)
    axes = {0: batch, 1: length}
    with torch.no_grad():
        exported = torch.export.export(model, (ids, mask), dynamic_shapes=(axes, axes))
        log("exported")
        path = torch._inductor.aoti_compile_and_package(exported, package_path=f"/tmp/probe-{name}.pt2")
        log("compiled", path)
    runner = torch._inductor.aoti_load_package(path)
    log("loaded")
    with torch.no_grad():
        for shape in [(1, 8), (32, 40), (256, 55)]:
            tokens = torch.randint(0, 30000, shape, device="cuda")
            logits = runner(tokens, torch.ones_like(tokens))
            torch.cuda.synchronize()
            log("ran", shape, tuple(logits.shape))
    log("ok")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        case(sys.argv[1])
    else:
        for name in ("fresh", "after_graphs"):
            log("case", name)
            done = subprocess.run([sys.executable, "-X", "faulthandler", __file__, name])
            log("case", name, "exit", done.returncode)
