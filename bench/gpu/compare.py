"""Compare several builds of nsa_fla in one process, on one card: whole-call and per-kernel
median ms at one length, plus whether each build's `o` and `idx_slc` equal the first one's.
Used to measure one change against the previous PTX (same inputs, same process).

    python3 compare.py T DIR [DIR ...]     # each DIR holds nsa_fla_<T>.ptx/.json (gpu_emit)
    python3 compare.py T DIR --once        # two plain launches per DIR (for ncu)
"""

import sys

import torch

from nsac_ptx import NsacPtx

# The benchmark's shape and its CUDA-event timer (median of `iters` runs after `warmup`).
from bench import B, D, H, HQ
from bench import time_ms as median_ms


def main():
    t = int(sys.argv[1])
    once = "--once" in sys.argv
    dirs = [d for d in sys.argv[2:] if not d.startswith("--")]
    torch.manual_seed(t)
    q = torch.randn(B, t, HQ, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, t, H, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, t, H, D, device="cuda", dtype=torch.bfloat16)
    g = [torch.rand(B, t, HQ, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    print("device:", torch.cuda.get_device_name())
    first = None
    for d in dirs:
        run = NsacPtx(f"{d}/nsa_fla_{t}.ptx", f"{d}/nsa_fla_{t}.json")
        run.bind(q=q, k=k, v=v, g_cmp=g[0], g_slc=g[1])
        if once:
            for _ in range(2):
                run.launch()
                torch.cuda.synchronize()
            continue
        whole = median_ms(run.launch, 2, 7)
        per = []
        for i, (kern, _) in enumerate(run.kernels):
            per.append((kern["name"].split("_", 3)[-1], median_ms(lambda: run.launch(only=i), 1, 5)))
        o, idx = run.buffers["o"].clone(), run.buffers["idx_slc"].clone()
        same = ""
        if first is not None:
            diff = (o - first[0]).abs().max().item()
            same = f" | vs first: max|do| {diff:.2e}, idx equal {bool((idx == first[1]).all())}"
        first = first or (o, idx)
        kernels = ", ".join(f"{n} {ms:.2f}" for n, ms in per)
        print(f"{d}: T={t} nsa_fla {whole:.2f} ms | {kernels}{same}")


if __name__ == "__main__":
    main()
