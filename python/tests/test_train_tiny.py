"""The training demo's smoke run: examples/python/train_tiny.py for 5 steps on short
sequences, both models (nsac and dense), through its own command line."""

import subprocess
import sys

from conftest import REPO


def test_train_tiny_smoke(tmp_path):
    plot = tmp_path / "curve.png"
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python" / "train_tiny.py"),
         "--steps", "5", "--seq", "256", "--batch", "2", "--eval-batches", "1", "--plot", str(plot)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    for name in ("nsac", "dense"):
        assert f"{name} final: held-out accuracy" in run.stdout, run.stdout
    assert "tokens/s" in run.stdout
    # The plot is written when matplotlib is there, and its absence is said otherwise.
    assert plot.is_file() or "matplotlib is not installed" in run.stdout
