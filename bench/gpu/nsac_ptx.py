"""Load and run nsac-generated PTX with its JSON manifest, from Python (cupy + torch).

`nsac compile SPEC --target ptx -o FILE` (or `tests/tests/gpu_emit.rs`) writes FILE.ptx and a
manifest: buffers (role input / segments / scratch / output, element type, shape) and kernels
(name, pointer parameters in order, grid, block, dynamic shared bytes), launched in order.

    run = NsacPtx("nsa_fla_8192.ptx", "nsa_fla_8192.json")
    out = run(q=q, k=k, v=v, g_cmp=g_cmp, g_slc=g_slc)   # torch CUDA tensors, manifest dtype
    out["o"]                                              # f32 [B, T, HQ, Dv]

Example / self-check:  python3 nsac_ptx.py DIR   (DIR from gpu_emit: example.ptx, example.json,
example.<tensor>.f32 inputs and example.expected_o.f32 from the f64 oracle).
"""

import json
import sys

import cupy
import numpy as np
import torch

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "i32": torch.int32}


class NsacPtx:
    def __init__(self, ptx_path, manifest_path):
        with open(manifest_path) as f:
            self.manifest = json.load(f)
        self.module = cupy.RawModule(path=ptx_path)
        self.kernels = []
        for k in self.manifest["kernels"]:
            fn = self.module.get_function(k["name"])
            if k["shared_bytes"] > 48 * 1024:
                fn.max_dynamic_shared_size_bytes = k["shared_bytes"]
            self.kernels.append((k, fn))
        self.buffers = None

    def segments(self):
        m = self.manifest
        seg = []
        for b in range(m["batch"]):
            row = b * m["seq_len"]
            for s, e in m["segments"]:
                seg += [(row + s, row + e)] * (e - s)
        return torch.tensor(seg, dtype=torch.int32, device="cuda")

    def bind(self, **inputs):
        """Allocates every buffer once; inputs are used as given (no copy when contiguous)."""
        bufs = {}
        for b in self.manifest["buffers"]:
            dt = DTYPES[b["elem"]]
            if b["role"] == "input":
                t = inputs[b["name"]]
                assert t.dtype == dt and list(t.shape) == b["shape"], (b["name"], t.dtype, t.shape, b)
                bufs[b["name"]] = t.contiguous()
            elif b["role"] == "segments":
                bufs[b["name"]] = self.segments()
            else:
                bufs[b["name"]] = torch.zeros(b["shape"], dtype=dt, device="cuda")
        self.buffers = bufs
        return bufs

    def launch(self, only=None):
        bufs = self.buffers
        for i, (k, fn) in enumerate(self.kernels):
            if only is not None and i != only:
                continue
            args = tuple(np.uint64(bufs[p].data_ptr()) for p in k["params"])
            fn(tuple(k["grid"]), tuple(k["block"]), args, shared_mem=k["shared_bytes"])

    def __call__(self, **inputs):
        self.bind(**inputs)
        self.launch()
        torch.cuda.synchronize()
        return {b["name"]: self.buffers[b["name"]] for b in self.manifest["buffers"] if b["role"] == "output"}


def _example(d):
    run = NsacPtx(f"{d}/example.ptx", f"{d}/example.json")
    m = run.manifest
    dt = DTYPES[m["dtype"]]
    inputs = {}
    for b in m["buffers"]:
        if b["role"] == "input":
            x = np.fromfile(f"{d}/example.{b['name']}.f32", dtype=np.float32).reshape(b["shape"])
            inputs[b["name"]] = torch.from_numpy(x).to("cuda").to(dt)
    out = run(**inputs)
    want = torch.from_numpy(np.fromfile(f"{d}/example.expected_o.f32", dtype=np.float32)).to("cuda")
    got = out["o"].flatten()
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"python example: {m['spec']} {m['dtype']} T={m['seq_len']}: max|o-ref|/max|ref| = {err:.3e}")
    assert err <= 1e-2, err


if __name__ == "__main__":
    _example(sys.argv[1] if len(sys.argv) > 1 else ".")
