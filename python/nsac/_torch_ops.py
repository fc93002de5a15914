"""The torch side: three ``torch.library`` custom ops and their autograd.

* ``nsac::attention(handle, q, k, v, extras, cu_seqlens) -> o`` — the forward alone (no
  saved state), taken when no input needs a gradient;
* ``nsac::attention_train(...) -> [o, *saved]`` — the forward that keeps what the backward
  needs; the saved tensors (each branch's log-sum-exp and output, each selection's chosen
  blocks) are *outputs of the op*, so torch owns them: nothing is keyed by object identity,
  and the op is a pure function that ``torch.compile`` can trace, reorder and replay;
* ``nsac::attention_backward(handle, do, q, k, v, extras, cu_seqlens, saved) -> grads``.

Each has a fake (meta) implementation computing output shapes from the spec's layout (plain
Python data captured at load time), so ``torch.compile`` traces through without graph breaks.
``handle`` is the loaded attention's index in ``_attention._KERNELS``.

The real implementations pass CPU float32 tensors to the native kernels as numpy views of the
same memory (``Tensor.numpy()``: no copy); ``o`` is allocated by torch and written in place.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor

from ._attention import _KERNELS, Attention, _cu_list

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _np(t: Tensor) -> Any:
    """A numpy view of a CPU tensor (copied only when not contiguous)."""
    return t.detach().contiguous().numpy()


def _inputs(attn: Attention, q: Tensor, k: Tensor, v: Tensor, extras: Sequence[Tensor]) -> dict:
    return {n: _np(t) for n, t in zip(attn._names, [q, k, v, *extras])}


def _sizes(attn: Attention, q: Tensor) -> dict:
    return {"B": q.shape[0], "T": q.shape[1]}


def _o_shape(attn: Attention, q: Tensor) -> List[Any]:
    return [q.shape[0], q.shape[1], attn.heads[0], attn.head_dim[1]]


@torch.library.custom_op("nsac::attention", mutates_args=())
def attention(
    handle: int, q: Tensor, k: Tensor, v: Tensor, extras: List[Tensor], cu_seqlens: Optional[Tensor]
) -> Tensor:
    attn = _KERNELS[handle]
    o = torch.empty(_o_shape(attn, q), dtype=torch.float32)
    attn._native.forward(_inputs(attn, q, k, v, extras), _cu_list(cu_seqlens), o.numpy())
    return o


@attention.register_fake
def _attention_fake(handle, q, k, v, extras, cu_seqlens):
    return q.new_empty(_o_shape(_KERNELS[handle], q))


@torch.library.custom_op("nsac::attention_train", mutates_args=())
def attention_train(
    handle: int, q: Tensor, k: Tensor, v: Tensor, extras: List[Tensor], cu_seqlens: Optional[Tensor]
) -> List[Tensor]:
    attn = _KERNELS[handle]
    o, saved = attn._native.forward_train(_inputs(attn, q, k, v, extras), _cu_list(cu_seqlens))
    return [torch.from_numpy(o)] + [torch.from_numpy(saved[name]) for name, _, _ in attn._saved]


@attention_train.register_fake
def _attention_train_fake(handle, q, k, v, extras, cu_seqlens):
    attn = _KERNELS[handle]
    sizes = _sizes(attn, q)
    out = [q.new_empty(_o_shape(attn, q))]
    for _, elem, dims in attn._saved:
        shape = [sizes[d] if isinstance(d, str) else d for d in dims]
        out.append(q.new_empty(shape, dtype=torch.int32 if elem == "i32" else torch.float32))
    return out


@torch.library.custom_op("nsac::attention_backward", mutates_args=())
def attention_backward(
    handle: int,
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    extras: List[Tensor],
    cu_seqlens: Optional[Tensor],
    saved: List[Tensor],
) -> List[Tensor]:
    attn = _KERNELS[handle]
    state = {name: _np(t) for (name, _, _), t in zip(attn._saved, saved)}
    grads = attn._native.backward(
        _inputs(attn, q, k, v, extras), _cu_list(cu_seqlens), state, _np(do)
    )
    return [torch.from_numpy(grads["d" + name]) for name in attn._names]


@attention_backward.register_fake
def _attention_backward_fake(handle, do, q, k, v, extras, cu_seqlens, saved):
    return [torch.empty_like(t) for t in [q, k, v, *extras]]


def _setup_context(ctx, inputs, output):
    handle, q, k, v, extras, cu_seqlens = inputs
    ctx.handle = handle
    ctx.n_extras = len(extras)
    ctx.has_cu = cu_seqlens is not None
    saved = list(output[1:])
    ctx.mark_non_differentiable(*saved)
    ctx.save_for_backward(q, k, v, *extras, *saved, *([cu_seqlens] if ctx.has_cu else []))


def _backward(ctx, grads):
    do = grads[0]
    tensors = ctx.saved_tensors
    q, k, v = tensors[:3]
    extras = list(tensors[3 : 3 + ctx.n_extras])
    rest = tensors[3 + ctx.n_extras :]
    cu = rest[-1] if ctx.has_cu else None
    saved = list(rest[:-1] if ctx.has_cu else rest)
    if do is None:
        return None, None, None, None, [None] * ctx.n_extras, None
    g = attention_backward(ctx.handle, do.contiguous(), q, k, v, extras, cu, saved)
    return None, g[0], g[1], g[2], list(g[3:]), None


attention_train.register_autograd(_backward, setup_context=_setup_context)


def call(attn: Attention, values: List[Any], cu: Optional[Any]) -> Tensor:
    """``attn(q, k, v, **tensors)`` on torch tensors, checked by ``Attention._collect``."""
    q = values[0]
    for name, x in zip(attn._names, values):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"tensor `{name}` must be a torch.Tensor like `q`, got {type(x).__name__}")
        if x.device.type == "cuda":
            raise NotImplementedError(
                f"tensor `{name}` is on {x.device}: CUDA tensors are not supported by the Python "
                "package yet (the CPU kernels take CPU tensors; move them with .cpu())"
            )
        if x.device.type != "cpu":
            raise ValueError(f"tensor `{name}` is on {x.device}, expected a CPU tensor")
        if x.dtype not in _FLOATS:
            raise TypeError(
                f"tensor `{name}` has dtype {x.dtype}: expected float32 "
                "(float16/bfloat16 are converted to float32, the CPU kernels' type)"
            )
    if cu is not None:
        if not isinstance(cu, torch.Tensor):
            cu = torch.as_tensor(cu)
        if cu.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"tensor `cu_seqlens` has dtype {cu.dtype}, expected int32 or int64")
        if cu.dim() != 1:
            raise ValueError(f"tensor `cu_seqlens` must be 1-D, got shape {list(cu.shape)}")
        if cu.device.type != "cpu":
            raise ValueError(f"tensor `cu_seqlens` is on {cu.device}, expected a CPU tensor")
    # The kernels compute in f32 on contiguous rows: both conversions are autograd-aware and
    # no-ops for contiguous float32 tensors.
    xs = [x.to(torch.float32).contiguous() for x in values]
    q32, k32, v32, extras = xs[0], xs[1], xs[2], xs[3:]
    if torch.is_grad_enabled() and any(x.requires_grad for x in values):
        o = attention_train(attn._handle, q32, k32, v32, extras, cu)[0]
    else:
        o = attention(attn._handle, q32, k32, v32, extras, cu)
    return o if q.dtype == torch.float32 else o.to(q.dtype)
