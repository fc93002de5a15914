#!/usr/bin/env bash
# The README's test command: every Rust test of the workspace, then the Python package built
# into a virtual environment and its pytest suite (python/tests), run against the CLI binary
# the Rust tests built.
#
#   NSAC_VENV   the virtual environment to use (default: target/py-venv, made when missing).
#               It needs numpy, pytest and torch (`.ci/run` installs them; by hand:
#               `pip install numpy pytest torch matplotlib`).
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo test --workspace"
cargo test --workspace "$@"

venv="${NSAC_VENV:-target/py-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c "import numpy, pytest, torch" 2>/dev/null; then
    echo "test.sh: $venv lacks numpy, pytest or torch: $py -m pip install numpy pytest torch" >&2
    exit 1
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
