# Issue 16's longer recovery (benchmarks/recipes/prune-recover.yaml) on the reassembled GGUF.
source /tmp/repo/.gpu/env.sh
touch $L/prune.started
mkdir -p /tmp/smol && cat /tmp/gguf/part_00 /tmp/gguf/part_01 | gunzip > /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
md5sum /tmp/smol/*.gguf > $L/prune.md5
date +%T > $L/t.prune.start
python3 -m compress run benchmarks/recipes/prune-recover.yaml -q --set model.source=/tmp/smol --set evaluate.device=cuda \
  -o /tmp/runs/prune-recover > $L/prune.log 2>&1
date +%T > $L/t.prune.done; touch $L/prune.done
