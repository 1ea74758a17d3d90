# The full-data relations flagship as every GPU session runs it (sourced by chain_full.sh and one_seed.sh, so all
# seeds share one command): $D runs bench_distill.py with it, `ship RUN` gzips RUN's INT8 export stages to $SHIP.
N=distill-bert-then-int8-gpu-relations
D="python3 benchmarks/bench_distill.py --gpu --train-limit 0 --model /tmp/repo/.gpu/minilm-fp16 --name $N --set steps.1.distill.alpha_relations=1.0 --set steps.1.distill.relation_heads=16"
ship() { (cd /tmp/runs/$1/stages && for d in 0[45]-export-*-int8-*; do tar czf $SHIP/$1-${d%-*}.tgz $d; done); }
