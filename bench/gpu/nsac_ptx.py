"""Load and run nsac-generated PTX with its JSON manifest, from Python (cupy + torch).

`nsac compile SPEC --target ptx -o FILE` (or `tests/tests/gpu_emit.rs`) writes FILE.ptx and a
manifest: buffers (the plan's role in / out / scratch, element type, shape, for the manifest's
problem; the scratch buffer `seg` is the segment table), the `seg` table's columns, and kernels,
launched in order: name, typed parameters (`{"kind": "buffer", "name": ...}` pointers, then `{"kind": "u32", "name": "ntok" |
"score_bytes"}` sizes) and the launch geometry as formulas of the call's tokens and longest
segment (`geometry`; `grid`/`shared_bytes` are its values for the manifest's problem). The PTX
holds no length: this launcher evaluates the geometry and the sizes for the problem it binds.

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
            self.kernels.append((k, fn))
        for (k, fn), (_, _, shared, _) in zip(self.kernels, self.launches()):
            if shared > 48 * 1024:
                fn.max_dynamic_shared_size_bytes = shared
        self.buffers = None

    def segments(self):
        """The `seg` table: per token, the columns the manifest lists (segment start and end in
        flattened tokens, then per compress branch the segment's first compressed slot)."""
        m = self.manifest
        cols = m["seg_columns"]

        def ntok_c(n, c):  # compressed tokens of a segment of n keys
            return (n - c["block"]) // c["stride"] + 1 if n >= c["block"] else 0

        per_row = {i: sum(ntok_c(e - s, c) for s, e in m["segments"])
                   for i, c in enumerate(cols) if c["kind"] == "compressed_base"}
        seg = []
        for b in range(m["batch"]):
            row = b * m["seq_len"]
            done = {i: 0 for i in per_row}
            for s, e in m["segments"]:
                vals = []
                for i, c in enumerate(cols):
                    if c["kind"] == "start":
                        vals.append(row + s)
                    elif c["kind"] == "end":
                        vals.append(row + e)
                    else:
                        vals.append(b * per_row[i] + done[i])
                seg += [vals] * (e - s)
                for i, c in enumerate(cols):
                    if i in done:
                        done[i] += ntok_c(e - s, c)
        return torch.tensor(seg, dtype=torch.int32, device="cuda")

    def launches(self):
        """(grid, block, shared bytes, u32 arguments) per kernel for the manifest's problem, from
        each kernel's geometry (the same numbers as its `grid` and `shared_bytes`)."""
        m = self.manifest
        tokens = m["batch"] * m["seq_len"]
        max_len = max(e - s for s, e in m["segments"])
        assert tokens <= m["max_tokens"], f"{tokens} tokens: the kernels index at most {m['max_tokens']}"
        out = []
        for k, _ in self.kernels:
            g = k["geometry"]
            gx = -(-tokens * g["grid_x"]["per_token"] // g["grid_x"]["per_block"]) * g["grid_x"]["times"]
            sh = g["shared"]
            score = 0 if sh["score_block"] == 0 else (-(-4 * -(-max_len // sh["score_block"]) // 16) * 16)
            shared = sh["bytes"] + sh["score_arrays"] * score
            sizes = {"ntok": tokens, "score_bytes": score}
            scalars = [sizes[p["name"]] for p in k["params"] if p["kind"] == "u32"]
            out.append(((gx, 1, 1), (g["block_x"], 1, 1), shared, scalars))
        return out

    def bind(self, **inputs):
        """Allocates every buffer once; inputs are used as given (no copy when contiguous)."""
        bufs = {}
        for b in self.manifest["buffers"]:
            dt = DTYPES[b["elem"]]
            if b["role"] == "in":
                t = inputs[b["name"]]
                assert t.dtype == dt and list(t.shape) == b["shape"], (b["name"], t.dtype, t.shape, b)
                bufs[b["name"]] = t.contiguous()
            elif b["name"] == "seg":
                bufs[b["name"]] = self.segments()
            else:
                bufs[b["name"]] = torch.zeros(b["shape"], dtype=dt, device="cuda")
        self.buffers = bufs
        return bufs

    def launch(self, only=None):
        bufs = self.buffers
        if not hasattr(self, "_launches"):
            self._launches = self.launches()
        for i, ((k, fn), (grid, block, shared, scalars)) in enumerate(zip(self.kernels, self._launches)):
            if only is not None and i != only:
                continue
            ptrs = [np.uint64(bufs[p["name"]].data_ptr()) for p in k["params"] if p["kind"] == "buffer"]
            args = tuple(ptrs + [np.uint32(x) for x in scalars])
            fn(grid, block, args, shared_mem=shared)

    def __call__(self, **inputs):
        self.bind(**inputs)
        self.launch()
        torch.cuda.synchronize()
        return {b["name"]: self.buffers[b["name"]] for b in self.manifest["buffers"] if b["role"] == "out"}


def _example(d):
    run = NsacPtx(f"{d}/example.ptx", f"{d}/example.json")
    m = run.manifest
    dt = DTYPES[m["dtype"]]
    inputs = {}
    for b in m["buffers"]:
        if b["role"] == "in":
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
