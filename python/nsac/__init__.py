"""nsac: sparse-attention (NSA) kernels compiled from a spec, called from numpy and PyTorch.

    >>> import nsac, torch
    >>> attn = nsac.load("kernels/nsa-fla.nsa", heads="16/1", head_dim=64)
    >>> o = attn(q, k, v, g_cmp=g1, g_slc=g2)        # [B, T, HQ, DV], q's dtype

Tensors follow the README's names and the FlashAttention / fla layout ([B, T, H, D]). CPU
tensors run the JIT-compiled kernels in place; torch calls go through the custom ops
``torch.ops.nsac.attention`` / ``attention_train`` (autograd, ``torch.compile``).
"""

from ._nsac import NsacError, SpecError, __version__
from ._attention import Attention, load

__all__ = ["Attention", "NsacError", "SpecError", "__version__", "load"]
