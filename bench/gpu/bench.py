"""GPU benchmark, one process, one card: nsac (generated PTX) vs PyTorch SDPA (flash and cuDNN
backends, dense causal) vs fla-core `fla.ops.nsa.parallel_nsa`, B=1 HQ=64 H=4 D=128 bf16,
forward only. nsa_fla runs the fla configuration (cmp 64/64 mean, top-16 of 64, keep 1+2, no
window); nsa_paper (Dqk=192, Dv=128, cmp 32/16, window 512) is one fla cannot run.

    python3 bench.py DIR [T ...]     # DIR holds nsa_fla_<T>.ptx/.json, nsa_paper_<T>.ptx/.json

CUDA events, warm-up, medians; per-kernel medians for nsac. Prints one table (ms).
NSAC_BENCH_PAPER=0 skips nsa_paper (its column reads nan).
"""

import os
import statistics
import sys

import torch

from nsac_ptx import NsacPtx

B, HQ, H, D = 1, 64, 4, 128


def time_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def iters_for(t):
    return (2, 5) if t >= 32768 else (3, 10)


def sdpa(q, k, v, backend, t):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qh = q.transpose(1, 2)
    kh = k.repeat_interleave(HQ // H, dim=2).transpose(1, 2)
    vh = v.repeat_interleave(HQ // H, dim=2).transpose(1, 2)
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def run():
        with sdpa_kernel(be):
            torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True)

    try:
        return time_ms(run, *iters_for(t))
    except Exception as e:  # backend not available on this card / build
        print(f"  sdpa {backend}: {type(e).__name__}: {str(e)[:120]}")
        return float("nan")


def fla_nsa(q, k, v, g_cmp, g_slc, t):
    try:
        from fla.ops.nsa import parallel_nsa
    except Exception as e:
        print(f"  fla import failed: {e}")
        return float("nan")

    def run():
        parallel_nsa(q, k, v, g_cmp, g_slc, None, block_counts=16, block_size=64, window_size=0)

    try:
        return time_ms(run, *iters_for(t))
    except Exception as e:
        print(f"  fla: {type(e).__name__}: {str(e)[:200]}")
        return float("nan")


def nsac(d, name, t, inputs):
    run = NsacPtx(f"{d}/{name}_{t}.ptx", f"{d}/{name}_{t}.json")
    run.bind(**inputs)
    whole = time_ms(run.launch, *iters_for(t))
    per = []
    for i, (k, _) in enumerate(run.kernels):
        per.append((k["name"].split("_", 2)[-1], time_ms(lambda: run.launch(only=i), 1, 3)))
    return whole, per


def main():
    d = sys.argv[1]
    lens = [int(x) for x in sys.argv[2:]] or [8192, 16384, 32768, 65536]
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    rows = []
    for t in lens:
        torch.manual_seed(t)
        q = torch.randn(B, t, HQ, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, t, H, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, t, H, D, device="cuda", dtype=torch.bfloat16)
        g = [torch.rand(B, t, HQ, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        flash = sdpa(q, k, v, "flash", t)
        cudnn = sdpa(q, k, v, "cudnn", t)
        fla = fla_nsa(q, k, v, g[0], g[1], t)
        ours, per = nsac(d, "nsa_fla", t, dict(q=q, k=k, v=v, g_cmp=g[0], g_slc=g[1]))
        print(f"T={t} nsac nsa_fla per kernel: " + ", ".join(f"{n} {ms:.2f}" for n, ms in per))
        paper = float("nan")
        if os.environ.get("NSAC_BENCH_PAPER", "1") != "0":
            qp = torch.randn(B, t, HQ, 192, device="cuda", dtype=torch.bfloat16)
            kp = torch.randn(B, t, H, 192, device="cuda", dtype=torch.bfloat16)
            paper, per_p = nsac(d, "nsa_paper", t, dict(q=qp, k=kp, v=v, g_cmp=g[0], g_slc=g[1], g_win=g[2]))
            print(f"T={t} nsac nsa_paper per kernel: " + ", ".join(f"{n} {ms:.2f}" for n, ms in per_p))
            del qp, kp
        rows.append((t, flash, cudnn, fla, ours, paper))
        del q, k, v, g
        torch.cuda.empty_cache()
    print()
    print("| T | SDPA flash | SDPA cuDNN | fla parallel_nsa | nsac nsa_fla | nsac nsa_paper |")
    print("|---|---|---|---|---|---|")
    for t, *ms in rows:
        print(f"| {t} | " + " | ".join(f"{x:.2f}" for x in ms) + " |")


if __name__ == "__main__":
    main()
