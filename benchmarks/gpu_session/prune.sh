source /tmp/repo/.gpu/env.sh
touch $L/prune.started
mkdir -p /tmp/smol && cat /tmp/gguf/part_00 /tmp/gguf/part_01 | gunzip > /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
md5sum /tmp/smol/*.gguf > $L/prune.md5
date +%T > $L/t.prune.start
python3 benchmarks/bench_prune.py --gpu --model /tmp/smol --output /tmp/runs/prune > $L/prune.log 2>&1
date +%T > $L/t.prune.done; touch $L/prune.done
