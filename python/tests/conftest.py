"""Shared helpers of the Python tests: the repository's paths, random inputs drawn the way the
Rust tests draw them (standard-normal activations, uniform (0, 1) gates, pool weights scaled by
1/sqrt(fan-in); never zeros or constants), and the numerics bar's measure."""

import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
KERNELS = REPO / "kernels"

# Small specs covering every input kind: gates, a weighted and a linear pool, own k/v, GQA,
# non-causal. (Heads and dims are kept small so that the f64 oracle stays fast.)
SPECS = {
    "nsa-fla": (str(KERNELS / "nsa-fla.nsa"), {"heads": "4/1", "head_dim": 32}),
    "nsa-paper": (str(KERNELS / "nsa-paper.nsa"), {"heads": "8/2", "head_dim": "24/16"}),
    "sliding-window": (str(KERNELS / "sliding-window.nsa"), {"heads": "4/2", "head_dim": 16}),
    "weighted-own": (
        """attention weighted_own {
    heads = 4/2
    head_dim = 16/8
    compress c { block = 8, stride = 4, pool = weighted }
    select s { block = 8, top = 3, scored_by = c, keep_first = 1, keep_last = 1 }
    window w { size = 9, kv = own }
    combine = gate(c, s, w)
}""",
        {},
    ),
    "linear-noncausal": (
        """attention linear_noncausal {
    heads = 2/1
    head_dim = 8
    causal = false
    compress c { block = 4, stride = 4, pool = linear }
    window w { size = 5 }
    combine = sum(c, w)
}""",
        {},
    ),
}


def rel_err(got, want):
    """max |got - want| / max |want| (docs/ARCHITECTURE.md §4)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.abs(want).max()
    assert scale > 0, "a reference of zeros proves nothing"
    return float(np.abs(got - want).max() / scale)


def random_inputs(attn, batch, tokens, seed):
    """float32 numpy inputs for `attn` on [batch, tokens], by kind of tensor."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, dims in attn._layout:
        shape = [batch if d == "B" else tokens if d == "T" else d for d in dims]
        if name.startswith("g_"):
            x = rng.uniform(0.0, 1.0, shape)
        elif name.startswith(("w_", "wk_", "wv_")):
            fan_in = int(np.prod(shape[1:-1])) if name.startswith(("wk_", "wv_")) else shape[-1]
            x = rng.standard_normal(shape) / np.sqrt(fan_in)
        else:
            x = rng.standard_normal(shape)
        out[name] = x.astype(np.float32)
    return out


def split(inputs):
    """(q, k, v, keywords) of an inputs dict."""
    rest = {n: x for n, x in inputs.items() if n not in ("q", "k", "v")}
    return inputs["q"], inputs["k"], inputs["v"], rest


@pytest.fixture(scope="session")
def load_spec():
    import nsac

    cache = {}

    def get(key):
        if key not in cache:
            spec, kw = SPECS[key]
            cache[key] = nsac.load(spec, **kw)
        return cache[key]

    return get


def nsac_bin():
    """The CLI binary: $NSAC_BIN, else a built one in the repository's target/."""
    env = os.environ.get("NSAC_BIN")
    if env:
        return env
    for profile in ("release", "debug"):
        p = REPO / "target" / profile / "nsac"
        if p.is_file():
            return str(p)
    return None
