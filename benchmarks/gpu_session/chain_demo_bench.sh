# Session 2026-12-02b: the demo's shorter-schedule candidates over three seeds (issue 18: which of fewer augmented
# copies or fewer epochs keeps the 12k-teacher demo's accuracy), issue 15's GPU-path and `compress bench` rows on the
# bundled flagship (config c4, seed 0), and (prune_recover.sh, started by call 3) issue 16's longer recovery.
# Configs: c4 = the recipe as bundled (4 copies, 3 epochs); c3 = 3 copies; e2 = 2 epochs. One 12k teacher for all.
source /tmp/repo/.gpu/env.sh
B="python3 benchmarks/bench_distill.py --gpu --model /tmp/repo/.gpu/minilm-fp16"
declare -A CFG=([c4]="" [c3]="--set steps.1.distill.augment.copies=3" [e2]="--set steps.1.distill.epochs=2")
date +%T > $L/t.start
$B --name flagship-c4 --seeds 0 --output /tmp/runs/c4-0 > $L/c4-0.log 2>&1 &
P0=$!
until ls /tmp/runs/c4-0/stages/01-teacher-*/result.json >/dev/null 2>&1; do sleep 5; kill -0 $P0 2>/dev/null || break; done
sleep 5; date +%T > $L/t.teacher.done
for c in c4 c3 e2; do for s in 0 1 2; do
  [ $c$s = c40 ] && continue
  mkdir -p /tmp/runs/$c-$s/stages && cp -a /tmp/runs/c4-0/stages/00-* /tmp/runs/c4-0/stages/01-* /tmp/runs/$c-$s/stages/
  $B --name flagship-$c --seeds $s ${CFG[$c]} --output /tmp/runs/$c-$s > $L/$c-$s.log 2>&1 &
done; done
wait; date +%T > $L/t.seeds.done
for c in c4 c3 e2; do
  python3 benchmarks/bench_distill.py --name flagship-$c --combine benchmarks/results/flagship-$c-seed{0,1,2}.json > $L/combine-$c.log 2>&1
done
pkill -STOP -f prune-recover; date +%T > $L/t.timing.start
timeout 330 python3 benchmarks/bench_gpu_path.py --run /tmp/runs/c4-0 --models student,teacher > $L/gpupath.log 2>&1
date +%T > $L/t.gpupath.done
shopt -s nullglob; S=/tmp/runs/c4-0/stages; W=/tmp/compress-gpu-path
timeout 270 python3 -m compress bench $S/01-teacher-*/model $S/03-truncate-*/model $W/torch_compile_static8-* \
  $W/aoti-03-truncate-* $S/04-export-ort-int8-*/artifact --data evals/data/sst2/dev.tsv --text sentence \
  --batch-sizes 1,8,32,128,256 --sla-p99-ms 10 --served-rates 2000,20000 --max-seconds 5 --machine-name h200 \
  -o /tmp/bench-h200 > $L/bench.log 2>&1
date +%T > $L/t.bench.done
pkill -CONT -f prune-recover
bash /tmp/repo/.gpu/bundle.sh; touch $L/timing.done
while [ -e $L/prune.started ] && [ ! -e $L/prune.done ]; do sleep 5; done
bash /tmp/repo/.gpu/bundle.sh; touch $L/chain.done
