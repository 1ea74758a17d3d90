# Background chain: GPU tests; teacher + seed 0; seeds 1, 2 in copies of the run folder once the teacher is done;
# then (after the pruning benchmark, started by call 3) the timing runs on a quiet GPU; then the results bundle.
source /tmp/repo/.gpu/env.sh
N=distill-bert-then-int8-gpu-relations
D="python3 benchmarks/bench_distill.py --gpu --train-limit 0 --model /tmp/repo/.gpu/minilm-fp16 --name $N --set steps.1.distill.alpha_relations=1.0 --set steps.1.distill.relation_heads=16"
(python3 -m pytest -q -rs -m gpu tests/ -p no:cacheprovider > $L/tests-gpu.log 2>&1; python3 -m pytest -q -rs tests/test_aoti_export.py -p no:cacheprovider > $L/tests-aoti.log 2>&1; touch $L/tests.done) &
date +%T > $L/t.seed0.start
$D --seeds 0 --output /tmp/runs/rel0 > $L/seed0.log 2>&1 && tar cf $SHIP/seed0-int8.tar -C /tmp/runs/rel0/stages $(cd /tmp/runs/rel0/stages && ls -d 04-export-ort-int8-*) &
P0=$!
until ls /tmp/runs/rel0/stages/01-teacher-*/result.json >/dev/null 2>&1; do sleep 5; kill -0 $P0 2>/dev/null || break; done
sleep 5; date +%T > $L/t.teacher.done
for s in 1 2; do
  mkdir -p /tmp/runs/rel$s/stages && cp -a /tmp/runs/rel0/stages/00-* /tmp/runs/rel0/stages/01-* /tmp/runs/rel$s/stages/
  ($D --seeds $s --output /tmp/runs/rel$s > $L/seed$s.log 2>&1 && tar cf $SHIP/seed$s-int8.tar -C /tmp/runs/rel$s/stages $(cd /tmp/runs/rel$s/stages && ls -d 04-export-ort-int8-*)) &
done
(cd /tmp/runs/rel0/stages && tar cf - 01-teacher-*/model 01-teacher-*/result.json) | split -b 15M - $SHIP/teacher.tar.
wait; date +%T > $L/t.seeds.done
$D --combine benchmarks/results/$N-seed0.json benchmarks/results/$N-seed1.json benchmarks/results/$N-seed2.json > $L/combine.log 2>&1
# The timing runs want the GPU to themselves: the pruning benchmark and any test still running are paused meanwhile.
pkill -STOP -f bench_prune.py; pkill -STOP -f pytest
date +%T > $L/t.timing.start
timeout 420 python3 benchmarks/bench_gpu_path.py --run /tmp/runs/rel0 --models student,teacher --skip "compress aoti" > $L/gpupath.log 2>&1
date +%T > $L/t.gpupath.done
shopt -s nullglob; S=/tmp/runs/rel0/stages; W=/tmp/compress-gpu-path
timeout 240 python3 -m compress bench $S/01-teacher-*/model $S/03-truncate-*/model $W/torch_compile-03-truncate-* $W/torch_compile_static-03-truncate-* $W/torch_compile_static-01-teacher-* $S/04-export-ort-int8-*/artifact --data evals/data/sst2/dev.tsv --text sentence --batch-sizes 1,8,32,256 --sla-p99-ms 10 --served-rates 5000 --max-seconds 5 --machine-name h200 -o /tmp/bench-h200 > $L/bench.log 2>&1
date +%T > $L/t.bench.done
pkill -CONT -f bench_prune.py; pkill -CONT -f pytest
bash /tmp/repo/.gpu/bundle.sh; touch $L/timing.done
while [ -e $L/prune.started ] && [ ! -e $L/prune.done ]; do sleep 5; done
bash /tmp/repo/.gpu/bundle.sh; touch $L/chain.done
