"""Forward calls equal the f64 oracle (nsac's definition of every kernel) at the CPU bar, on
random inputs, several seeds and lengths that are no multiple of any block size; through
torch tensors, numpy arrays, varlen packing, 16-bit inputs and non-contiguous views."""

import numpy as np
import pytest
import torch

import nsac
from conftest import SPECS, random_inputs, rel_err, split

CPU_BAR = 1e-5  # docs/ARCHITECTURE.md §4: CPU f32 vs the f64 oracle


@pytest.mark.parametrize("key", sorted(SPECS))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch,tokens", [(1, 37), (2, 101)])
def test_torch_forward_equals_the_oracle(load_spec, key, seed, batch, tokens):
    attn = load_spec(key)
    inputs = random_inputs(attn, batch, tokens, seed)
    q, k, v, kw = split({n: torch.from_numpy(x) for n, x in inputs.items()})
    o = attn(q, k, v, **kw)
    hq, _ = attn.heads
    assert o.shape == (batch, tokens, hq, attn.head_dim[1]) and o.dtype == torch.float32
    want = attn.reference_forward(*split(inputs)[:3], **split(inputs)[3])["o"]
    assert rel_err(o.numpy(), want) <= CPU_BAR


@pytest.mark.parametrize("key", ["nsa-fla", "weighted-own"])
def test_numpy_forward_equals_torch_and_the_oracle(load_spec, key):
    attn = load_spec(key)
    inputs = random_inputs(attn, 1, 101, seed=5)
    q, k, v, kw = split(inputs)
    o = attn(q, k, v, **kw)
    assert isinstance(o, np.ndarray) and o.dtype == np.float32
    ot = attn(*split({n: torch.from_numpy(x) for n, x in inputs.items()})[:3],
              **split({n: torch.from_numpy(x) for n, x in inputs.items()})[3])
    np.testing.assert_array_equal(o, ot.numpy())
    assert rel_err(o, attn.reference_forward(q, k, v, **kw)["o"]) <= CPU_BAR


def test_numpy_inputs_are_read_in_place_not_copied(load_spec):
    # The same call on the same buffers after changing q in place sees the new values.
    attn = load_spec("sliding-window")
    inputs = random_inputs(attn, 1, 37, seed=3)
    q, k, v, kw = split(inputs)
    first = attn(q, k, v, **kw)
    q *= 2.0
    second = attn(q, k, v, **kw)
    assert not np.array_equal(first, second)
    assert rel_err(second, attn.reference_forward(q, k, v, **kw)["o"]) <= CPU_BAR


@pytest.mark.parametrize("cu", [[0, 37, 101], [0, 5, 64, 101, 138]])
def test_varlen_forward_equals_the_oracle(load_spec, cu):
    attn = load_spec("nsa-paper")
    inputs = random_inputs(attn, 1, cu[-1], seed=len(cu))
    q, k, v, kw = split({n: torch.from_numpy(x) for n, x in inputs.items()})
    for cu_t in (torch.tensor(cu, dtype=torch.int32), torch.tensor(cu, dtype=torch.int64)):
        o = attn(q, k, v, cu_seqlens=cu_t, **kw)
        want = attn.reference_forward(*split(inputs)[:3], cu_seqlens=np.array(cu), **split(inputs)[3])["o"]
        assert rel_err(o.numpy(), want) <= CPU_BAR
    # Packing changes the answer (segments do not see each other): the check above is not vacuous.
    batched = attn(q, k, v, **kw)
    assert rel_err(batched.numpy(), o.numpy()) > 1e-3


@pytest.mark.parametrize("dtype,bar", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_16_bit_inputs_are_computed_in_f32_and_returned_in_their_dtype(load_spec, dtype, bar):
    attn = load_spec("nsa-fla")
    inputs = random_inputs(attn, 1, 101, seed=7)
    lowp = {n: torch.from_numpy(x).to(dtype) for n, x in inputs.items()}
    o = attn(*split(lowp)[:3], **split(lowp)[3])
    assert o.dtype == dtype
    # The oracle on the same (rounded) values: the only further error is o's final rounding.
    rounded = {n: x.float().numpy() for n, x in lowp.items()}
    want = attn.reference_forward(*split(rounded)[:3], **split(rounded)[3])["o"]
    assert rel_err(o.float().numpy(), want) <= bar


def test_non_contiguous_inputs_are_made_contiguous(load_spec):
    attn = load_spec("weighted-own")
    inputs = random_inputs(attn, 2, 37, seed=11)
    t = {n: torch.from_numpy(x) for n, x in inputs.items()}
    # q as a transposed view of a [B, HQ, T, D] tensor: same values, other strides.
    q_view = t["q"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_view.is_contiguous()
    q, k, v, kw = split(t)
    np.testing.assert_array_equal(attn(q_view, k, v, **kw).numpy(), attn(q, k, v, **kw).numpy())
    # numpy: a Fortran-ordered copy works the same.
    qn, kn, vn, kwn = split(inputs)
    np.testing.assert_array_equal(attn(np.asfortranarray(qn), kn, vn, **kwn), attn(qn, kn, vn, **kwn))


def test_saved_layout_matches_what_the_training_forward_saves(load_spec):
    for key in sorted(SPECS):
        attn = load_spec(key)
        inputs = random_inputs(attn, 2, 37, seed=1)
        o, saved = attn._native.forward_train(inputs, None)
        assert sorted(saved) == [n for n, _, _ in attn._saved]
        for name, elem, dims in attn._saved:
            shape = [2 if d == "B" else 37 if d == "T" else d for d in dims]
            assert list(saved[name].shape) == shape, name
            assert saved[name].dtype == (np.int32 if elem == "i32" else np.float32)
        # the training forward's o is the forward's
        np.testing.assert_array_equal(o, attn(*split(inputs)[:3], **split(inputs)[3]))


def test_loading_the_same_spec_again_returns_the_same_attention(tmp_path):
    text = "attention w {\n heads = 4/2\n head_dim = 16\n window w { size = 8 }\n combine = sum(w)\n}\n"
    a = nsac.load(text, threads=1)
    assert nsac.load(text, threads=1) is a
    assert nsac.load(text, threads=2) is not a
    assert nsac.load(text, threads=1, heads="2/1") is not a
    path = tmp_path / "w.nsa"
    path.write_text(text)
    f = nsac.load(path, threads=1)
    assert nsac.load(str(path), threads=1) is f
    # An edited file is a new spec, compiled anew.
    path.write_text(text.replace("size = 8", "size = 16"))
    g = nsac.load(path, threads=1)
    assert g is not f and g._handle != f._handle
    assert "size = 16" in g.spec and "size = 8" in f.spec
