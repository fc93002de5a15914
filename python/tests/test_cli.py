"""The package against the command line's oracle: `nsac run … --device reference` (and
`--backward`) on the same inputs, written as a directory of .npy files. The binary is
$NSAC_BIN or one built in target/ (test.sh builds it with the workspace tests)."""

import subprocess

import numpy as np
import pytest
import torch

import nsac
from conftest import KERNELS, nsac_bin, rel_err

BIN = nsac_bin()
pytestmark = pytest.mark.skipif(BIN is None, reason="no nsac binary (set NSAC_BIN or build the CLI)")


def test_forward_and_gradients_equal_nsac_run_on_the_reference(tmp_path):
    spec = str(KERNELS / "nsa-fla.nsa")
    attn = nsac.load(spec, heads="4/1", head_dim=32)
    g = torch.Generator().manual_seed(3)
    tensors = {
        "q": torch.randn(1, 137, 4, 32, generator=g),
        "k": torch.randn(1, 137, 1, 32, generator=g),
        "v": torch.randn(1, 137, 1, 32, generator=g),
        "g_cmp": torch.rand(1, 137, 4, generator=g),
        "g_slc": torch.rand(1, 137, 4, generator=g),
    }
    do = torch.randn(1, 137, 4, 32, generator=g)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, t in {**tensors, "do": do}.items():
        np.save(inputs / f"{name}.npy", t.numpy())
    out = tmp_path / "out"
    subprocess.run(
        [BIN, "run", spec, "--heads", "4/1", "--head-dim", "32", "--device", "reference",
         "--inputs", str(inputs), "--output", str(out), "--backward"],
        check=True, capture_output=True, text=True,
    )
    leaves = {n: t.clone().requires_grad_(True) for n, t in tensors.items()}
    o = attn(leaves["q"], leaves["k"], leaves["v"], g_cmp=leaves["g_cmp"], g_slc=leaves["g_slc"])
    assert rel_err(o.detach().numpy(), np.load(out / "o.npy")) <= 1e-5
    o.backward(do)
    for name, t in leaves.items():
        assert rel_err(t.grad.numpy(), np.load(out / f"d{name}.npy")) <= 1e-4, name
