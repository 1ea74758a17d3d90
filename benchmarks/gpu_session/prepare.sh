# Run here (not on the GPU machine), from the repository root: builds the ignored folders the device calls carry.
#   .gpu/   wheels the H200 image lacks (Python 3.12), a float16 copy of MiniLM-L6 (45 MB), these scripts
#   .gguf/a .gguf/b   the SmolLM2 Q4_1 GGUF, gzipped and split in two halves (one per call: 64 MiB a call)
#   .ova/ .ovb/   the OpenVINO wheel (59 MB) in two halves, one per call (with the working tree it exceeds a call's
#                 64 MiB), so the flagship's OpenVINO INT8 export runs there too
set -euo pipefail
printf '/.gpu/\n/.gguf/\n/.ov/\n/.ova/\n/.ovb/\n' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/minilm-fp16 .gguf/a .gguf/b .ov .ova .ovb
cp benchmarks/gpu_session/*.sh benchmarks/gpu_session/*.py .gpu/
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  datasets==5.2.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 compressed-tensors==0.19.0 loguru==0.7.3 \
  nncf==3.4.0 openvino-telemetry==2025.2.0 pydot==4.0.1 pyparsing==3.2.5 tabulate==0.9.0 ninja==1.13.0
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .ov openvino==2026.4.1
wheel=$(ls .ov/openvino-*.whl); basename "$wheel" > .ova/name
split -n 2 -d "$wheel" .ov/half_ && mv .ov/half_00 .ova/ && mv .ov/half_01 .ovb/
src=${MINILM:-../shared/models/all-MiniLM-L6-v2}
cp "$src"/{config.json,special_tokens_map.json,tokenizer.json,tokenizer_config.json,vocab.txt} .gpu/minilm-fp16/
python - "$src" <<'PY'
import sys
import torch
from safetensors.torch import load_file, save_file
weights = load_file(f"{sys.argv[1]}/model.safetensors")
half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
save_file(half, ".gpu/minilm-fp16/model.safetensors", metadata={"format": "pt"})
PY
gguf=${GGUF:-../shared/models/SmolLM2-135M-Instruct-Q4_1-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf}
gzip -c "$gguf" > .gguf/smol.gz  # split -n needs a file (its size), not a pipe
split -n 2 -d .gguf/smol.gz .gguf/part_ && rm .gguf/smol.gz && mv .gguf/part_00 .gguf/a/ && mv .gguf/part_01 .gguf/b/
du -sh .gpu .gguf/a .gguf/b .ova .ovb
