#!/usr/bin/env bash
# Every speed measurement of the meta-step on a 16-core machine, in about 5 minutes (under 8): the model
# benchmark at 2 and 16 threads, and data-parallel meta-training of 8 tasks as 1x16, 2x8, 4x4, 8x2 and 1x2
# ranks x threads (the last one for the scaling efficiency of ranks at 2 threads each), then 8x2 again with
# hyper_parameters.optimizer.class lazy_adam (dygraph_model.LazyAdam). Output: $OUT/bench.txt
# (or ./bench.txt), also printed. Needs Paddle importable by python3 (PYTHONPATH=... where it was unpacked).
#
#     bash tools/bench/device.sh           # the full-size measurements (config_big shapes, batch 1024)
#     bash tools/bench/device.sh --tiny    # a check of the script itself: batch 32, one step, runs of 2 cores
#
# Each command has its own time limit, and all of them together stop after 7 min 30 s, so one that hangs
# costs only its own figures. Figures and their reading: docs/performance.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
out=${OUT:-.}/bench.txt
if [ "${1:-}" = "--tiny" ]; then
  batch=32 steps=1 model_threads="1 2" runs="1x2 2x1" lazy_run=2x1 limit_model=120 limit_run=120
else
  batch=1024 steps=5 model_threads="2 16" runs="1x16 2x8 4x4 8x2 1x2" lazy_run=8x2 limit_model=100 limit_run=80
fi
start=$SECONDS budget=450

run() {  # run LIMIT_SECONDS COMMAND...: the command, cut after its limit (or the budget's end), with its wall time
  local limit=$1; shift
  local left=$((budget - (SECONDS - start)))
  [ "$left" -lt "$limit" ] && limit=$left
  echo "\$ $*"
  if [ "$limit" -lt 10 ]; then echo "(not run: the $budget s budget is spent)"; echo; return; fi
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  [ $rc -eq 0 ] || echo "(exit $rc$([ $rc -eq 124 ] && echo ": cut after $limit s"))"
  echo "($((SECONDS - t0)) s)"
  echo
}

{
  echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  lscpu | grep -E '^(Model name|Socket|Core|Thread|NUMA node\(s\)|L3)' || true
  grep -E '^(MemTotal|MemAvailable)' /proc/meminfo
  $python -c "import sys, numpy, paddle; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'paddle', paddle.__version__)" 2>&1 | tail -1
  echo
  for threads in $model_threads; do
    run "$limit_model" $python tools/bench/model.py --threads "$threads" --batch "$batch" --steps "$steps"
  done
  for r in $runs; do
    extra=""
    [ "$r" = "8x2" ] && extra="--dense-all-reduce"  # the all-reduce the trainer no longer does, for reference
    run "$limit_run" $python tools/bench/distributed.py --runs "$r" --tasks 8 --batch "$batch" --steps "$steps" $extra
  done
  run "$limit_run" $python tools/bench/distributed.py --runs "$lazy_run" --tasks 8 --batch "$batch" --steps "$steps" \
    --optimizer lazy_adam
  echo "== all measurements: $((SECONDS - start)) s"
} 2>&1 | grep --line-buffered -v -E ': [0-9]+/[0-9]+ (it|step|campaign) \(' | tee "$out"
