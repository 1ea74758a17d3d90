source /tmp/repo/.gpu/env.sh
mkdir -p /tmp/res/runs
for r in /tmp/runs/*/; do n=$(basename $r); mkdir -p /tmp/res/runs/$n; cp $r/report.* /tmp/res/runs/$n/ 2>/dev/null; done
cp -r /tmp/bench-h200 /tmp/res/ 2>/dev/null; cp $L/* /tmp/res/ 2>/dev/null
tar czf $SHIP/results.tgz -C /tmp/repo benchmarks/results docs/benchmarks -C /tmp res
ls -la $SHIP
