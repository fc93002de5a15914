"""The custom ops under torch's own checkers and torch.compile: `torch.library.opcheck`
(schema, fake implementation against the real one, autograd registration), and a compiled
module with nsac attention, traced as one graph (`fullgraph=True` fails on any graph break),
matching eager forward and gradients. The backends are "eager" and "aot_eager" (the latter
traces forward and backward through the fake implementations), so no C compiler is needed."""

import pytest
import torch

from conftest import random_inputs, split


class Block(torch.nn.Module):
    """A projection to q/k/v and gates, nsac attention, an output projection."""

    def __init__(self, attn, dim):
        super().__init__()
        self.attn = attn
        hq, h = attn.heads
        dqk, dv = attn.head_dim
        self.shape = (hq, h, dqk, dv)
        self.gates = [n for n in attn.input_names if n.startswith("g_")]
        self.q = torch.nn.Linear(dim, hq * dqk)
        self.kv = torch.nn.Linear(dim, h * (dqk + dv))
        self.g = torch.nn.Linear(dim, hq * len(self.gates))
        self.out = torch.nn.Linear(hq * dv, dim)

    def forward(self, x):
        b, t, _ = x.shape
        hq, h, dqk, dv = self.shape
        q = self.q(x).view(b, t, hq, dqk)
        k, v = self.kv(x).view(b, t, h, dqk + dv).split([dqk, dv], dim=-1)  # non-contiguous
        g = torch.sigmoid(self.g(x)).view(b, t, hq, len(self.gates))
        gates = {n: g[..., i] for i, n in enumerate(self.gates)}
        o = self.attn(q, k, v, **gates)
        return self.out(o.reshape(b, t, hq * dv))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("key", ["nsa-fla", "nsa-paper"])
def test_compiled_module_matches_eager(load_spec, key, backend):
    torch.manual_seed(0)
    torch._dynamo.reset()
    block = Block(load_spec(key), dim=24)
    x = torch.randn(2, 101, 24)
    eager = block(x)
    eager.square().mean().backward()
    want = {n: p.grad.clone() for n, p in block.named_parameters()}
    block.zero_grad()
    compiled = torch.compile(block, backend=backend, fullgraph=True)
    got = compiled(x)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    got.square().mean().backward()
    for n, p in block.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)
    # another length: torch.compile recompiles with a symbolic T (automatic dynamic shapes),
    # which the fake implementations and the call's checks take as they are
    y = torch.randn(2, 77, 24)
    torch.testing.assert_close(compiled(y), block(y), rtol=1e-5, atol=1e-6)
    # the compiled module also runs without gradients (the forward-only op)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["weighted-own", "linear-noncausal"])
def test_opcheck(load_spec, key):
    from nsac import _torch_ops

    attn = load_spec(key)
    t = {n: torch.from_numpy(x) for n, x in random_inputs(attn, 1, 37, seed=1).items()}
    q, k, v, kw = split(t)
    extras = [kw[n] for n in attn.input_names[3:]]
    torch.library.opcheck(_torch_ops.attention, (attn._handle, q, k, v, extras, None))
    grads = [x.clone().requires_grad_(True) for x in (q, k, v)]
    torch.library.opcheck(
        _torch_ops.attention_train,
        (attn._handle, *grads, [e.clone().requires_grad_(True) for e in extras], None),
    )
