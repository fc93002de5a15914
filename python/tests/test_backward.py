"""Gradients through torch autograd equal the f64 oracle's (kernels::reference::backward) at
1e-4, for every differentiable input the spec reads; and central finite differences of the
op itself agree with them, which checks the wiring (the right gradient on the right input)
independently of the oracle. Includes the issue's acceptance check, literally."""

import numpy as np
import pytest
import torch

import nsac
from conftest import KERNELS, SPECS, random_inputs, rel_err, split

GRAD_BAR = 1e-4  # the CPU backward's bar against the oracle (as in the Rust tests)


def grad_err(got, want):
    """rel_err, except that a gradient the oracle says is exactly 0 (an input without
    influence: e.g. the compressed branch's gate when T is shorter than one block) must be 0."""
    if not np.abs(want).max() > 0:
        return float(np.abs(got).max())
    return rel_err(got, want)


def leaves(inputs, dtype=torch.float32):
    return {n: torch.from_numpy(x).to(dtype).requires_grad_(True) for n, x in inputs.items()}


@pytest.mark.parametrize("key", sorted(SPECS))
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch,tokens", [(1, 37), (2, 101)])
def test_gradients_equal_the_oracle(load_spec, key, seed, batch, tokens):
    attn = load_spec(key)
    inputs = random_inputs(attn, batch, tokens, seed)
    t = leaves(inputs)
    o = attn(*split(t)[:3], **split(t)[3])
    do = torch.from_numpy(np.random.default_rng(seed + 100).standard_normal(o.shape).astype(np.float32))
    o.backward(do)
    want = attn.reference_backward(do, *split(inputs)[:3], **split(inputs)[3])
    assert sorted(want) == sorted("d" + n for n in attn.input_names)
    for name, x in t.items():
        assert x.grad is not None, name
        assert grad_err(x.grad.numpy(), want["d" + name]) <= GRAD_BAR, name


def test_varlen_gradients_equal_the_oracle(load_spec):
    attn = load_spec("weighted-own")
    cu = [0, 29, 67, 101]
    inputs = random_inputs(attn, 1, cu[-1], seed=4)
    t = leaves(inputs)
    o = attn(*split(t)[:3], cu_seqlens=torch.tensor(cu, dtype=torch.int32), **split(t)[3])
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(4))
    (o * do).sum().backward()
    want = attn.reference_backward(do, *split(inputs)[:3], cu_seqlens=cu, **split(inputs)[3])
    for name, x in t.items():
        assert grad_err(x.grad.numpy(), want["d" + name]) <= GRAD_BAR, name


def test_gradients_of_16_bit_inputs_arrive_in_their_dtype(load_spec):
    attn = load_spec("nsa-fla")
    inputs = random_inputs(attn, 1, 101, seed=9)
    t = leaves(inputs, torch.bfloat16)
    o = attn(*split(t)[:3], **split(t)[3])
    assert o.dtype == torch.bfloat16
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    o.backward(do)
    # The oracle on the same rounded values: computed in f32, only the gradients' final
    # rounding to bf16 (2^-8 relative) remains.
    rounded = {n: x.detach().float().numpy() for n, x in t.items()}
    want = attn.reference_backward(do.float(), *split(rounded)[:3], **split(rounded)[3])
    for name, x in t.items():
        assert x.grad is not None and x.grad.dtype == torch.bfloat16, name
        assert grad_err(x.grad.float().numpy(), want["d" + name]) <= 1e-2, name


def test_only_inputs_that_ask_get_gradients(load_spec):
    attn = load_spec("nsa-fla")
    inputs = random_inputs(attn, 1, 37, seed=2)
    t = {n: torch.from_numpy(x) for n, x in inputs.items()}
    t["g_slc"].requires_grad_(True)
    attn(*split(t)[:3], **split(t)[3]).sum().backward()
    assert t["q"].grad is None and t["g_slc"].grad is not None


def test_finite_differences_through_the_op():
    # A spec with no selection (its block choice is piecewise constant, so a perturbation
    # could flip a block and break the difference quotient): every output is smooth in every
    # input, pool weights included.
    attn = nsac.load(
        """attention fd {
    heads = 2/1
    head_dim = 4
    compress c { block = 4, stride = 2, pool = weighted }
    window w { size = 3 }
    combine = gate(c, w)
}"""
    )
    inputs = random_inputs(attn, 1, 11, seed=0)
    t = leaves(inputs)
    o = attn(*split(t)[:3], **split(t)[3])
    w = torch.from_numpy(np.random.default_rng(1).standard_normal(o.shape).astype(np.float32))
    (o * w).sum().backward()

    def loss(values):
        out = attn(*split(values)[:3], **split(values)[3])
        return float((out.double() * w.double()).sum())

    # Central differences of the f32 op, summed in f64. With h = 1e-2 the truncation error is
    # O(h^2 |f'''|) ~ 1e-4 for these O(1) inputs and the rounding error ~ 2 * 6e-8 * |L| / h
    # ~ 1e-4 (|L| ~ 10), so agreement to 2e-3 of the largest gradient proves the gradients,
    # while a wrong, swapped or missing gradient is off by O(1).
    h = 1e-2
    for name, x in t.items():
        base = {n: torch.from_numpy(a.copy()) for n, a in inputs.items()}
        flat = base[name].view(-1)
        fd = np.zeros(flat.numel())
        for i in range(flat.numel()):
            old = float(flat[i])
            flat[i] = old + h
            up = loss(base)
            flat[i] = old - h
            down = loss(base)
            flat[i] = old
            fd[i] = (up - down) / (2 * h)
        got = x.grad.numpy().reshape(-1)
        assert np.abs(got).max() > 0, name
        assert np.abs(got - fd).max() <= 2e-3 * np.abs(fd).max(), name


def test_acceptance_nsa_fla_16_1_64_t1000():
    """The issue's acceptance check: nsa-fla, heads 16/1, head dim 64, float32 CPU tensors
    [1,1000,16,64] / [1,1000,1,64]: forward vs the oracle at 1e-5, and .backward() fills
    q, k, v, g_cmp, g_slc's gradients, each matching the oracle's at 1e-4."""
    attn = nsac.load(str(KERNELS / "nsa-fla.nsa"), heads="16/1", head_dim=64)
    g = torch.Generator().manual_seed(15)
    q = torch.randn(1, 1000, 16, 64, generator=g, requires_grad=True)
    k = torch.randn(1, 1000, 1, 64, generator=g, requires_grad=True)
    v = torch.randn(1, 1000, 1, 64, generator=g, requires_grad=True)
    g1 = torch.rand(1, 1000, 16, generator=g, requires_grad=True)
    g2 = torch.rand(1, 1000, 16, generator=g, requires_grad=True)
    o = attn(q, k, v, g_cmp=g1, g_slc=g2)
    assert o.shape == (1, 1000, 16, 64) and o.dtype == torch.float32
    ref = attn.reference_forward(q, k, v, g_cmp=g1, g_slc=g2)
    assert rel_err(o.detach().numpy(), ref["o"]) <= 1e-5
    do = torch.randn(o.shape, generator=g)
    o.backward(do)
    want = attn.reference_backward(do, q, k, v, g_cmp=g1, g_slc=g2)
    for name, x in [("q", q), ("k", k), ("v", v), ("g_cmp", g1), ("g_slc", g2)]:
        assert x.grad is not None, name
        assert rel_err(x.grad.numpy(), want["d" + name]) <= 1e-4, name
