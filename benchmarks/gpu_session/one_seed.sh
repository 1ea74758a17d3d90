# One full-data relations seed alone, for a seed whose machine went back before its exports came home:
#   SEED=2 setsid nohup bash .gpu/one_seed.sh &   (after .gpu/setup.sh; the OpenVINO wheel as in chain_full.sh)
# The teacher is trained again first (a stage folder only counts as cached with its manifest, which the shipped
# teacher parts leave out): training here is deterministic, so it is the other seeds' teacher (same accuracy, same
# key). Its command and shipping are chain_full.sh's (relations.sh).
source /tmp/repo/.gpu/env.sh
source /tmp/repo/.gpu/relations.sh
s=${SEED:?set SEED}
date +%T > $L/t.seed$s.start
$D --seeds $s --output /tmp/runs/rel$s > $L/seed$s.log 2>&1 && ship rel$s
date +%T > $L/t.seeds.done
bash /tmp/repo/.gpu/bundle.sh > /dev/null; touch $L/chain.done
