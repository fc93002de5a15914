#!/usr/bin/env bash
# One device call: GPU-vs-oracle tests, memcheck and racecheck on the library specs, the Python PTX example
# and the benchmark. Expects .devbin/ with gpu_oracle (test binary), emit/ (from gpu_emit),
# py/ (bench/gpu/*.py) and fla/ (the fla-core wheel, unpacked). Logs go to $OUT.
set -u
D=.devbin
OUT=${OUT:-/tmp/out}
MODE=${1:-all}
nvidia-smi -L | tee "$OUT/device.log"
if [[ $MODE == all || $MODE == test ]]; then
  timeout 240 $D/gpu_oracle --nocapture --test-threads 1 2>&1 | tee "$OUT/oracle.log" | grep -E "FAIL|test result|SKIPPED|device:|panicked" | head -40
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_oracle library_specs --test-threads 1 > "$OUT/memcheck.log" 2>&1
  echo "memcheck exit $?"; grep -E "ERROR SUMMARY|test result" "$OUT/memcheck.log"
  timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $D/gpu_oracle library_specs --test-threads 1 > "$OUT/racecheck.log" 2>&1
  echo "racecheck exit $?"; grep -E "RACECHECK SUMMARY|test result" "$OUT/racecheck.log"
fi
export PYTHONPATH=$D/py:$D/fla PYTHONUNBUFFERED=1
if [[ $MODE == all || $MODE == example ]]; then
  timeout 60 python3 $D/py/nsac_ptx.py $D/emit 2>&1 | tail -5
fi
if [[ $MODE == all || $MODE == bench ]]; then
  shift || true
  timeout 400 python3 $D/py/bench.py $D/emit "$@" 2>&1 | tee "$OUT/bench.log" | grep -v "^\s*$" | tail -30
fi
