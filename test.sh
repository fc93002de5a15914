#!/usr/bin/env bash
# The README's test command: every Rust test of the workspace, then the Python package built
# into a virtual environment and its pytest suite (python/tests), run against the CLI binary
# the Rust tests built.
#
#   NSAC_VENV   the virtual environment to use (default: target/py-venv, made when missing;
#               numpy, pytest, torch, maturin and matplotlib are installed into it when missing).
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo test --workspace"
cargo test --workspace "$@"

venv="${NSAC_VENV:-target/py-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c "import numpy, pytest, torch, maturin" 2>/dev/null; then
    # A fresh machine: install what the Python tests need (torch's CPU wheel from its own
    # index when that is reachable, else PyPI's torch; wheels cached in ~/.cache/pip).
    echo "== installing the Python test dependencies into $venv"
    pip=("$py" -m pip --disable-pip-version-check --cache-dir "$HOME/.cache/pip")
    if ! "$py" -c "import torch" 2>/dev/null; then
        "${pip[@]}" install --quiet --timeout 20 --retries 0 \
            --index-url https://download.pytorch.org/whl/cpu torch 2>/dev/null \
            || "${pip[@]}" install --quiet torch
    fi
    "${pip[@]}" install --quiet numpy pytest maturin matplotlib
fi

echo "== pip install ./python"
# As if the environment were activated: maturin's build backend runs the `maturin` program
# from PATH. With maturin in the environment the build needs no network (no isolated build env).
export PATH="$(cd "$venv" && pwd)/bin:$PATH"
isolation=()
if "$py" -c "import maturin" 2>/dev/null; then
    isolation=(--no-build-isolation)
fi
"$py" -m pip install --quiet --disable-pip-version-check "${isolation[@]}" ./python

echo "== pytest python/tests"
# From the repository root, so that `import nsac` is the installed package, not python/nsac.
NSAC_BIN="$(pwd)/target/debug/nsac" "$py" -m pytest -q python/tests
