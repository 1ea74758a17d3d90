# poll.sh SECONDS [FILE_GLOB...]: wait up to SECONDS for the named files in /tmp/ship (or the chain's end), copy them to $OUT, show progress
source /tmp/repo/.gpu/env.sh
limit=$1; shift; end=$(( $(date +%s) + limit ))
ready() { for g in "$@"; do ls $SHIP/$g >/dev/null 2>&1 || return 1; done; }
while [ $(date +%s) -lt $end ]; do
  if [ $# -gt 0 ] && ready "$@"; then break; fi
  [ -e $L/chain.done ] && break
  [ "$1" = timing ] && [ -e $L/timing.done ] && break
  sleep 5
done
bash /tmp/repo/.gpu/bundle.sh > /dev/null 2>&1; cp $SHIP/results.tgz $OUT/
for g in "$@"; do cp $SHIP/$g $OUT/ 2>/dev/null; done
ls $L; for f in $L/t.*; do echo "$f $(cat $f)"; done
for f in flagship seed0 seed1 seed2 kw0 kw1 kw2 prune gpupath bench combine tests-gpu tests-aoti; do [ -e $L/$f.log ] && { echo "== $f"; tail -c 400 $L/$f.log; echo; }; done
ls -la $SHIP; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
