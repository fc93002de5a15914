#!/usr/bin/env bash
# One device call: GPU-vs-oracle tests, memcheck and racecheck on the library specs and on the
# tuner's non-default Variants, the Python PTX example, the benchmark, and the tuner (`tune T`:
# the GPU tuner test, then `nsac tune` of nsa_fla at T with tuned-vs-default `nsac bench`).
# Expects .devbin/ with gpu_oracle and gpu_tune (test binaries), nsac (the CLI), emit/ (from
# gpu_emit), py/ (bench/gpu/*.py) and fla/ (the fla-core wheel, unpacked). Logs go to $OUT.
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
  for tool in memcheck racecheck; do
    timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 $D/gpu_oracle tuner_variants --test-threads 1 > "$OUT/$tool-variants.log" 2>&1
    echo "$tool (tuner variants) exit $?"; grep -E "SUMMARY|test result" "$OUT/$tool-variants.log"
  done
fi
if [[ $MODE == ab ]]; then
  # `ab T…`: the previous build (.devbin/nsac-old) against this one (.devbin/nsac), alternating,
  # on nsa-fla (bf16) at each T, two rounds; then the new binary alone on a varlen packing.
  shift
  for T in "$@"; do
    for round in 1 2; do
      for bin in nsac-old nsac; do
        echo "== $bin T=$T round $round"
        timeout 120 $D/$bin bench kernels/nsa-fla.nsa --device cuda --seq $T --dtype bf16 --runs 20 2>&1 \
          | tee -a "$OUT/ab-$bin-$T.log" | grep -E "median|time|error|GFLOP"
      done
    done
  done
  timeout 120 $D/nsac run kernels/nsa-fla.nsa --device cuda --cu-seqlens 0,1000,5099,8192 --dtype bf16 2>&1 | tail -4
  exit 0
fi
if [[ $MODE == cpu-ab ]]; then
  # `cpu-ab ROUNDS`: the CPU backend, previous build (.devbin/nsac-old) against this one
  # (.devbin/nsac), alternating within each round, pinned to the same two cores, on the GPU
  # host's otherwise idle CPUs: nsa-fla and nsa-paper at T=16384, heads 16/1, dim 64.
  ROUNDS=${2:-3}
  for round in $(seq "$ROUNDS"); do
    for spec in ${SPECS:-nsa-fla nsa-paper}; do
      for bin in nsac-old nsac; do
        echo "== $bin $spec round $round"
        taskset -c 2,3 timeout 150 $D/$bin bench kernels/$spec.nsa --seq 16384 --heads 16/1 \
          --head-dim 64 --device cpu --threads 2 --variant key_tile=64 --oracle-seq 0 --json \
          > "$OUT/cpu-$bin-$spec-$round.json" 2> "$OUT/cpu-$bin-$spec-$round.err"
        echo "exit $?"
        python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("median_ms", j["median_ms"], "ceiling_ratio", round(j["ceiling_ratio"], 4))' \
          "$OUT/cpu-$bin-$spec-$round.json" 2>&1 | tail -1
      done
    done
  done
  exit 0
fi
if [[ $MODE == cpu-backward ]]; then
  # `cpu-backward [T]`: `nsac bench --backward` (the CPU training pair) of nsa-fla and nsa-paper,
  # heads 16/1, dim 64, pinned to two cores of the GPU host's otherwise idle CPUs.
  T=${2:-16384}
  for spec in ${SPECS:-nsa-fla nsa-paper}; do
    echo "== backward $spec T=$T"
    taskset -c 2,3 timeout 280 $D/nsac bench kernels/$spec.nsa --seq "$T" --heads 16/1 \
      --head-dim 64 --device cpu --threads 2 --backward --runs "${RUNS:-3}" --json \
      > "$OUT/bwd-$spec-$T.json" 2> "$OUT/bwd-$spec-$T.err"
    echo "exit $?"; cat "$OUT/bwd-$spec-$T.json"; tail -2 "$OUT/bwd-$spec-$T.err"
  done
  exit 0
fi
if [[ $MODE == train ]]; then
  # `train "ARGS1" "ARGS2" …`: examples/python/train_tiny.py once per argument string, in
  # parallel, each on its own 4 cores of the GPU host's CPUs, with the nsac wheel from .devbin/.
  shift
  python3 -m pip install --quiet --no-deps --target "$D/pylib" $D/nsac-*.whl 2>&1 | tail -2
  i=0
  for a in "$@"; do
    cores="$((4 * i))-$((4 * i + 3))"
    echo "== run $i (cores $cores): $a"
    OMP_NUM_THREADS=4 PYTHONPATH="$D/pylib" taskset -c "$cores" timeout 560 \
      python3 examples/python/train_tiny.py $a --plot "$OUT/train-$i.png" > "$OUT/train-$i.log" 2>&1 &
    i=$((i + 1))
  done
  wait
  for j in $(seq 0 $((i - 1))); do echo "== run $j"; grep -vE "step +[0-9]*[1-9]+ " "$OUT/train-$j.log" | tail -8; done
  exit 0
fi
if [[ $MODE == tune ]]; then
  T=${2:-65536}
  timeout 240 $D/gpu_tune --nocapture 2>&1 | tee "$OUT/gpu_tune.log" | grep -E "device|test result|panicked|SKIPPED"
  P="kernels/nsa-fla.nsa --device cuda --seq $T --dtype bf16 --db $OUT/tuning.yaml"
  /usr/bin/time -f "tune wall %e s" timeout 400 $D/nsac tune $P 2>&1 | tee "$OUT/tune.log"
  $D/nsac tune $P --json > "$OUT/tune.json" 2>/dev/null
  for round in 1 2; do
    $D/nsac bench $P --runs 20 --variant "" 2>&1 | tee -a "$OUT/bench-default.log" | grep -E "variant|time"
    $D/nsac bench $P --runs 20 2>&1 | tee -a "$OUT/bench-tuned.log" | grep -E "variant|time"
  done
  exit 0
fi
export PYTHONPATH=$D/py:$D/fla PYTHONUNBUFFERED=1
if [[ $MODE == all || $MODE == example ]]; then
  timeout 60 python3 $D/py/nsac_ptx.py $D/emit 2>&1 | tail -5
fi
if [[ $MODE == all || $MODE == bench ]]; then
  shift || true
  timeout 400 python3 $D/py/bench.py $D/emit "$@" 2>&1 | tee "$OUT/bench.log" | grep -v "^\s*$" | tail -30
fi
