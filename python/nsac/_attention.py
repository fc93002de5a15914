"""``nsac.load`` and the loaded object, ``Attention``: argument checking and dispatch.

It owns the rules a call follows before any kernel runs — which keyword names a spec reads,
their shapes, dtypes and devices — so that every mistake is a Python exception naming the
tensor, and it routes the call: numpy arrays straight to the native kernel (forward only),
torch tensors through the custom ops of ``_torch_ops`` (autograd, ``torch.compile``).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _nsac

#: Every loaded attention, by handle: the custom ops find their kernel by this integer (a
#: constant in a compiled graph), so entries are never removed.
_KERNELS: List["Attention"] = []

#: The loaded attention of each (spec file as it is now, or spec text; heads, head_dim,
#: threads): loading the same thing again returns it, so that re-loading a spec in a loop
#: does not grow ``_KERNELS``.
_LOADED: Dict[Tuple[Any, ...], "Attention"] = {}

_PairLike = Union[int, str, Tuple[int, int], None]


def _pair(what: str, value: _PairLike) -> Optional[Tuple[int, int]]:
    """``16``, ``"16"``, ``"16/1"`` or ``(16, 1)`` as ``(16, 1)``-style pairs."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, 'A/B' or (A, B), got {value!r}")
    if isinstance(value, int):
        parts: Sequence[Any] = (value, value)
    elif isinstance(value, str):
        text = value.strip()
        parts = text.split("/") if "/" in text else (text, text)
    elif isinstance(value, (tuple, list)):
        parts = value
    else:
        raise TypeError(f"{what} must be an int, 'A/B' or (A, B), got {value!r}")
    if len(parts) != 2:
        raise ValueError(f"{what} must be an int, 'A/B' or (A, B), got {value!r}")
    out = []
    for p in parts:
        try:
            n = int(str(p).strip())
        except ValueError:
            raise ValueError(f"{what}: `{p}` is not a positive integer (got {value!r})") from None
        if n < 1 or n >= 2**32:
            raise ValueError(f"{what}: {n} is not a positive 32-bit integer (got {value!r})")
        out.append(n)
    return (out[0], out[1])


def load(
    spec: Union[str, "os.PathLike[str]"],
    *,
    heads: _PairLike = None,
    head_dim: _PairLike = None,
    threads: Optional[int] = None,
) -> "Attention":
    """Loads a spec and prepares it for calls.

    ``spec`` is a path to a ``.nsa``/``.yaml`` file (a ``str`` without a newline or ``{``, or
    any ``os.PathLike``) or the spec text itself. ``heads`` (``"16/1"``, ``16`` or
    ``(16, 1)``) and ``head_dim`` (``64``, ``"192/128"``) override the spec's; ``threads``
    sets the CPU worker threads (default: the tuned count, else every core). A spec with
    problems raises :class:`nsac.SpecError` whose message is the rendered diagnostic.
    Loading the same spec (the same unchanged file, or the same text) with the same arguments
    again returns the same object (a loaded attention is kept for the life of the process).
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
        is_path = True
    elif isinstance(spec, str):
        is_path = "\n" not in spec and "{" not in spec
    else:
        raise TypeError(f"spec must be a path or spec text, got {type(spec).__name__}")
    if is_path and not os.path.isfile(spec):
        raise FileNotFoundError(f"no spec file `{spec}`")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise TypeError(f"threads must be an int, got {threads!r}")
    pair_heads, pair_dims = _pair("heads", heads), _pair("head_dim", head_dim)
    if is_path:
        # Keyed by the file's identity and change time too: an edited file is a new spec.
        st = os.stat(spec)
        key: Tuple[Any, ...] = (os.path.realpath(spec), st.st_ino, st.st_size, st.st_mtime_ns)
    else:
        key = (None, spec)
    key += (pair_heads, pair_dims, threads)
    if key in _LOADED:
        return _LOADED[key]
    native = _nsac.Kernel(
        spec,
        is_path=is_path,
        heads=pair_heads,
        head_dim=pair_dims,
        threads=threads,
    )
    attn = Attention(native)
    _LOADED[key] = attn
    return attn


def _dim(d: str) -> Union[str, int]:
    return d if d in ("B", "T") else int(d)


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class Attention:
    """A loaded spec; call it as ``attn(q, k, v, **tensors)``.

    Keywords are the README's tensor names (``g_<branch>``, ``w_<branch>``, ``wk_<branch>``,
    ``wv_<branch>``, ``k_<branch>``, ``v_<branch>``) and ``cu_seqlens`` (int32/int64, for
    varlen inputs packed into B = 1). Returns ``o`` [B, T, HQ, DV] in ``q``'s dtype.
    """

    def __init__(self, native: "_nsac.Kernel") -> None:
        self._native = native
        self._handle = len(_KERNELS)
        # Shapes as templates over "B" and "T" (plain Python data, so that checking a call
        # is traceable by torch.compile without calling into the native module).
        self._layout: List[Tuple[str, List[Union[str, int]]]] = [
            (n, [_dim(d) for d in dims]) for n, dims in native.input_layout()
        ]
        self._names: List[str] = [n for n, _ in self._layout]
        self._extras: List[str] = self._names[3:]
        self._saved: List[Tuple[str, str, List[Union[str, int]]]] = [
            (n, elem, [_dim(d) for d in dims]) for n, elem, dims in native.saved_layout()
        ]
        _KERNELS.append(self)

    # -- what it is -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._native.name

    @property
    def heads(self) -> Tuple[int, int]:
        """(query heads, key/value heads)."""
        return self._native.heads

    @property
    def head_dim(self) -> Tuple[int, int]:
        """(query-key dim, value dim)."""
        return self._native.head_dim

    @property
    def input_names(self) -> List[str]:
        """The tensors a call reads: ``q``, ``k``, ``v``, then the keyword tensors."""
        return list(self._names)

    @property
    def spec(self) -> str:
        """The spec in canonical text form (heads/dims as written, before overrides)."""
        return self._native.spec_text()

    def __repr__(self) -> str:
        hq, h = self.heads
        dqk, dv = self.head_dim
        return f"nsac.Attention({self.name}, heads={hq}/{h}, head_dim={dqk}/{dv})"

    def tune(self, seq: int, *, batch: int = 1, retune: bool = False, db: Optional[str] = None) -> Dict[str, Any]:
        """Tunes the CPU kernel for ``batch`` rows of ``seq`` tokens, as ``nsac tune`` does:
        the best Variant is kept in the tuning database (``db``, default the user's cache)
        unless it holds one already (``retune`` searches again); later calls take it. Returns
        ``{variant, threads, source: "tuned" | "stored", best_ms, db}``. 10-30 s on 2 cores."""
        return self._native.tune(batch, seq, retune, db)

    # -- checking a call --------------------------------------------------------------------

    def _collect(self, q: Any, k: Any, v: Any, tensors: Dict[str, Any]) -> Tuple[List[Any], Any]:
        """The inputs in kernel order and ``cu_seqlens``; TypeError/ValueError naming the
        tensor for an unknown or missing keyword or a wrong shape."""
        tensors = dict(tensors)
        cu = tensors.pop("cu_seqlens", None)
        unknown = sorted(set(tensors) - set(self._extras))
        if unknown:
            raise TypeError(
                f"unknown tensor keyword `{unknown[0]}`: {self.name} reads "
                f"{', '.join(self._names)} (and cu_seqlens)"
            )
        missing = [n for n in self._extras if n not in tensors]
        if missing:
            raise TypeError(f"missing tensor keyword `{missing[0]}` (needed by {self.name})")
        values = [q, k, v] + [tensors[n] for n in self._extras]
        for name, x in zip(self._names, values):
            if x is None:
                raise TypeError(f"tensor `{name}` is None")
            if not hasattr(x, "shape"):
                raise TypeError(
                    f"tensor `{name}` must be a torch.Tensor or numpy.ndarray like `q`, "
                    f"got {type(x).__name__}"
                )
        qs = tuple(q.shape)
        if len(qs) != 4:
            raise ValueError(f"tensor `q` must be [B, T, HQ, DQK], got shape {list(qs)}")
        sizes = {"B": qs[0], "T": qs[1]}
        for (name, dims), x in zip(self._layout, values):
            want = [sizes[d] if isinstance(d, str) else d for d in dims]
            got = list(x.shape)
            if got != want:
                raise ValueError(f"tensor `{name}` has shape {got}, expected {want}")
        if cu is not None and int(qs[0]) != 1:
            raise ValueError(f"with cu_seqlens the inputs are packed into B = 1, but `q` has B = {qs[0]}")
        return values, cu

    # -- calls --------------------------------------------------------------------------------

    def __call__(self, q: Any, k: Any, v: Any, **tensors: Any) -> Any:
        if not (_is_torch(q) or isinstance(q, np.ndarray)):
            raise TypeError(
                f"tensor `q` must be a torch.Tensor or numpy.ndarray, got {type(q).__name__}"
            )
        values, cu = self._collect(q, k, v, tensors)
        if _is_torch(q):
            from . import _torch_ops

            return _torch_ops.call(self, values, cu)
        return self._numpy_forward(values, cu)

    def _numpy_forward(self, values: List[Any], cu: Any) -> np.ndarray:
        out_dtype = None
        arrays = {}
        for name, x in zip(self._names, values):
            if not isinstance(x, np.ndarray):
                raise TypeError(f"tensor `{name}` must be a numpy.ndarray like `q`, got {type(x).__name__}")
            if x.dtype == np.float16:
                x = x.astype(np.float32)  # computed in f32; o is returned as float16
                out_dtype = out_dtype or np.float16
            elif x.dtype != np.float32:
                raise TypeError(
                    f"tensor `{name}` has dtype {x.dtype}: the CPU kernels take float32 "
                    f"(float16 is converted); use .astype(np.float32)"
                )
            arrays[name] = np.ascontiguousarray(x)
        b, t = values[0].shape[:2]
        hq, _ = self.heads
        _, dv = self.head_dim
        o = np.empty((b, t, hq, dv), dtype=np.float32)
        self._native.forward(arrays, _cu_list(cu), o)
        if values[0].dtype == np.float16:
            return o.astype(np.float16)
        return o

    def _numpy_inputs(self, q: Any, k: Any, v: Any, tensors: Dict[str, Any]) -> Tuple[Dict[str, np.ndarray], Any]:
        values, cu = self._collect(q, k, v, tensors)
        arrays = {}
        for name, x in zip(self._names, values):
            if _is_torch(x):
                x = x.detach().cpu().float().numpy()
            arrays[name] = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        return arrays, cu

    def reference_forward(self, q: Any, k: Any, v: Any, **tensors: Any) -> Dict[str, np.ndarray]:
        """The f64 oracle on the same arguments (numpy or torch, widened from f32): a dict of
        numpy arrays, ``o`` and each ``o_<branch>`` (float64), each ``idx_<branch>`` (int32).
        Slow; it defines what every kernel computes."""
        arrays, cu = self._numpy_inputs(q, k, v, tensors)
        return self._native.reference_forward(arrays, _cu_list(cu))

    def reference_backward(self, do: Any, q: Any, k: Any, v: Any, **tensors: Any) -> Dict[str, np.ndarray]:
        """The f64 oracle's gradients of ``sum(do * o)`` for every input, ``d<name>`` (float64)."""
        arrays, cu = self._numpy_inputs(q, k, v, tensors)
        if _is_torch(do):
            do = do.detach().cpu().float().numpy()
        do = np.ascontiguousarray(np.asarray(do, dtype=np.float32))
        return self._native.reference_backward(arrays, _cu_list(cu), do)


def _cu_list(cu: Any) -> Optional[List[int]]:
    """``cu_seqlens`` (a 1-D int tensor, array or sequence) as a list of ints."""
    if cu is None:
        return None
    if _is_torch(cu):
        import torch

        if cu.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"tensor `cu_seqlens` has dtype {cu.dtype}, expected int32 or int64")
        if cu.dim() != 1:
            raise ValueError(f"tensor `cu_seqlens` must be 1-D, got shape {list(cu.shape)}")
        values = [int(x) for x in cu.tolist()]
    else:
        arr = np.asarray(cu)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"tensor `cu_seqlens` has dtype {arr.dtype}, expected int32 or int64")
        if arr.ndim != 1:
            raise ValueError(f"tensor `cu_seqlens` must be 1-D, got shape {list(arr.shape)}")
        values = [int(x) for x in arr.tolist()]
    if any(x < 0 for x in values):
        raise ValueError(f"cu_seqlens must not be negative, got {values}")
    return values
