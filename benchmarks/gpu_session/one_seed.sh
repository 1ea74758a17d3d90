# One full-data relations seed alone, for a seed whose machine went back before its exports came home:
#   SEED=2 setsid nohup bash benchmarks/gpu_session/one_seed.sh &   (after .gpu/setup.sh; the OpenVINO wheel as in chain_full.sh)
# The teacher is trained again first (a stage folder only counts as cached with its manifest, which the shipped
# teacher parts leave out): training here is deterministic, so it is the other seeds' teacher (same accuracy, same
# key). Its INT8 exports are shipped as chain_full.sh ships them.
source /tmp/repo/.gpu/env.sh
s=${SEED:?set SEED}
N=distill-bert-then-int8-gpu-relations
date +%T > $L/t.seed$s.start
python3 benchmarks/bench_distill.py --gpu --train-limit 0 --model /tmp/repo/.gpu/minilm-fp16 --name $N \
  --set steps.1.distill.alpha_relations=1.0 --set steps.1.distill.relation_heads=16 \
  --seeds $s --output /tmp/runs/rel$s > $L/seed$s.log 2>&1
(cd /tmp/runs/rel$s/stages && for d in 0[45]-export-*-int8-*; do tar czf $SHIP/rel$s-${d%-*}.tgz $d; done)
date +%T > $L/t.seeds.done
bash /tmp/repo/.gpu/bundle.sh > /dev/null; touch $L/chain.done
