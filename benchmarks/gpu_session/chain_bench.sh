# Issue 15's H200 half, for a session of its own (written after the 2026-12-02 run, not yet run as a whole):
# train the flagship as bundled (12k-row teacher; a few minutes), then on a quiet GPU the GPU-path side by side
# with the recompile fix, then `compress bench` of the same artifacts, whose bench.json is merged here with
# benchmarks/results/bench-cpu.json (`compress bench merge ... -o runs/bench-merged`).
source /tmp/repo/.gpu/env.sh
python3 benchmarks/bench_distill.py --gpu --model /tmp/repo/.gpu/minilm-fp16 --output /tmp/runs/flagship > $L/flagship.log 2>&1
date +%T > $L/t.flagship.done
timeout 540 python3 benchmarks/bench_gpu_path.py --run /tmp/runs/flagship --models student,teacher > $L/gpupath.log 2>&1
date +%T > $L/t.gpupath.done
shopt -s nullglob; S=/tmp/runs/flagship/stages; W=/tmp/compress-gpu-path
timeout 540 python3 -m compress bench $S/01-teacher-*/model $S/03-truncate-*/model $W/torch_compile_static8-* \
  $W/aoti-03-truncate-* $S/04-export-ort-int8-*/artifact --data evals/data/sst2/dev.tsv --text sentence \
  --batch-sizes 1,8,32,128,256 --sla-p99-ms 10 --served-rates 2000,20000 --max-seconds 10 --machine-name h200 \
  -o /tmp/bench-h200 > $L/bench.log 2>&1
date +%T > $L/t.bench.done
bash /tmp/repo/.gpu/bundle.sh; touch $L/timing.done $L/chain.done
