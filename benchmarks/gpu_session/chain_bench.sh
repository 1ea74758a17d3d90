# Issue 15's H200 half in one short session: train the flagship as bundled (12k-row teacher; 2.5 min), then on a
# quiet GPU the GPU-path side by side (bench_gpu_path.py), then `compress bench` of the same artifacts, whose
# bench.json is merged here with benchmarks/results/bench-cpu.json. Results are bundled after each part.
source /tmp/repo/.gpu/env.sh
date +%T > $L/t.start
python3 benchmarks/bench_distill.py --gpu --model /tmp/repo/.gpu/minilm-fp16 --output /tmp/runs/flagship > $L/flagship.log 2>&1
date +%T > $L/t.flagship.done
timeout 600 python3 benchmarks/bench_gpu_path.py --run /tmp/runs/flagship --models teacher,student > $L/gpupath.log 2>&1
date +%T > $L/t.gpupath.done; bash /tmp/repo/.gpu/bundle.sh
shopt -s nullglob; S=/tmp/runs/flagship/stages; W=/tmp/compress-gpu-path
timeout 400 python3 -m compress bench $S/01-teacher-*/model $S/03-truncate-*/model $W/torch_compile_static8-* \
  $W/aoti-03-truncate-* $S/04-export-ort-int8-*/artifact --data evals/data/sst2/dev.tsv --text sentence \
  --batch-sizes 1,8,32,128,256 --sla-p99-ms 10 --served-rates 20000 --max-seconds 3 --machine-name h200 \
  -o /tmp/bench-h200 > $L/bench.log 2>&1
date +%T > $L/t.bench.done
bash /tmp/repo/.gpu/bundle.sh; touch $L/timing.done
# with whatever device time is left: the CUDA tests (compiled path, .pt2 export, NVML), after the timing
timeout 300 python3 -m pytest -q -rs -m gpu tests/ -p no:cacheprovider > $L/tests-gpu.log 2>&1
bash /tmp/repo/.gpu/bundle.sh; touch $L/chain.done
