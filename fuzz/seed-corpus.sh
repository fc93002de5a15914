#!/usr/bin/env bash
# Builds a small seed corpus for every fuzz target under fuzz/corpus/<target>/ (not committed)
# from files already in the repository: the library specs and the diagnostics corpus, their
# YAML twins, random input tensors that `nsac run --save-inputs` writes (safetensors and npy),
# and the tuning-DB example documented in runtime/src/tune/db.rs.
# Usage: fuzz/seed-corpus.sh   (from anywhere; runs the CLI through `cargo run`, or the binary
# named by $NSAC)
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/corpus
mkdir -p "$out"/{spec_text,spec_yaml,safetensors_reader,npy_reader,tuning_db}

cp kernels/*.nsa tests/specs/broken/*.nsa "$out/spec_text/"
cp kernels/*.yaml tests/specs/broken/*.yaml "$out/spec_yaml/"

nsac() {
    if [ -n "${NSAC:-}" ]; then "$NSAC" "$@"; else cargo run --quiet -- "$@"; fi
}
for spec in kernels/*.nsa; do
    name=$(basename "$spec" .nsa)
    # Small odd problems (T = 37, 2/1 heads, dims 8): the readers do not care about the size.
    nsac run "$spec" --seq 37 --heads 2/1 --head-dim 8 --device reference \
        --save-inputs "$out/safetensors_reader/$name.safetensors" >/dev/null
    tmp=$(mktemp -d)
    nsac run "$spec" --seq 37 --heads 2/1 --head-dim 8 --device reference \
        --save-inputs "$tmp/inputs" >/dev/null
    for f in "$tmp"/inputs/*.npy; do
        cp "$f" "$out/npy_reader/$name-$(basename "$f")"
    done
    rm -r "$tmp"
done
# A varlen input: cu_seqlens is an integer tensor.
nsac run kernels/nsa-fla.nsa --cu-seqlens 0,17,40 --heads 2/1 --head-dim 8 --device reference \
    --save-inputs "$out/safetensors_reader/varlen.safetensors" >/dev/null

# The documented example file (the `yaml` block of db.rs's module docs) and two broken ones.
sed -n '/^\/\/! ```yaml$/,/^\/\/! ```$/p' runtime/src/tune/db.rs | sed '1d;$d' | sed 's|^//! \{0,1\}||' \
    > "$out/tuning_db/documented.yaml"
printf 'schema: 1\nentries: []\n' > "$out/tuning_db/empty.yaml"
printf 'schema: 2\nentries: []\n' > "$out/tuning_db/other-schema.yaml"

for t in "$out"/*; do
    echo "$(basename "$t"): $(find "$t" -type f | wc -l) seeds"
done
