"""Train a tiny transformer whose attention is an nsac spec on long-range key-value recall.

Each sequence of T tokens holds P key-value facts, each one token `fact(key, value)`, at
random positions in the first half among noise tokens; the last Q positions are queries
`ask(key)` for keys of those facts, and the model must name the fact's value there: the
answer sits up to T tokens behind the query. (A token is embedded as the sum of its kind's,
key's and value's embeddings, so that a query and its fact share the key's vector.) Loss and accuracy count the query
positions only (chance: 1 / values).

The same model is trained twice from the same initialisation and data — attention from
examples/python/tiny_nsa.nsa (nsac, the CPU kernels, forward and backward in Rust) and dense
causal attention (torch's scaled_dot_product_attention) — and the script prints both loss
curves, the final accuracy and tokens/s, and plots the curves (matplotlib, if installed).

    python examples/python/train_tiny.py                 # the README's run (about 8 minutes on 4 cores)
    python examples/python/train_tiny.py --steps 5 --seq 256 --plot none   # smoke test
"""

import argparse
import math
import pathlib
import time

import torch
import torch.nn.functional as F

import nsac

HERE = pathlib.Path(__file__).resolve().parent


class Task:
    """Each position is (kind, key, value): kind 0 filler, 1 fact, 2 query; key and value ids
    are `keys`/`values` ("none") where a position has none; fillers carry a random key-sized
    noise id so that the haystack is not constant. Targets are value ids at query positions."""

    def __init__(self, keys=16, values=16, noise=1):
        self.keys, self.values, self.noise = keys, values, noise

    def batch(self, gen, batch, seq, facts, queries):
        kind = torch.zeros(batch, seq, dtype=torch.long)
        key = torch.randint(self.keys + 1, self.keys + 1 + self.noise, (batch, seq), generator=gen)
        value = torch.full((batch, seq), self.values)
        y = torch.full((batch, seq), -100)  # ignored by cross_entropy
        pos = torch.arange(seq - queries, seq)
        for b in range(batch):
            keys = torch.randperm(self.keys, generator=gen)[:facts]
            values = torch.randint(0, self.values, (facts,), generator=gen)
            where = torch.randperm(seq // 2, generator=gen)[:facts]
            kind[b, where], key[b, where], value[b, where] = 1, keys, values
            asked = torch.randint(0, facts, (queries,), generator=gen)
            kind[b, pos], key[b, pos] = 2, keys[asked]
            y[b, pos] = values[asked]
        return torch.stack([kind, key, value], -1), y


class Attention(torch.nn.Module):
    """Gated nsac attention (the spec's heads and dims), or dense causal attention with the
    same projections (GQA: the key/value heads are shared by their groups)."""

    def __init__(self, dim, attn, dense):
        super().__init__()
        self.attn, self.dense = attn, dense
        self.hq, self.h = attn.heads
        self.dqk, self.dv = attn.head_dim
        self.gates = [n for n in attn.input_names if n.startswith("g_")]
        self.q = torch.nn.Linear(dim, self.hq * self.dqk, bias=False)
        self.kv = torch.nn.Linear(dim, self.h * (self.dqk + self.dv), bias=False)
        self.g = torch.nn.Linear(dim, self.hq * len(self.gates))
        self.o = torch.nn.Linear(self.hq * self.dv, dim, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.hq, self.dqk)
        k, v = self.kv(x).view(b, t, self.h, self.dqk + self.dv).split([self.dqk, self.dv], -1)
        if self.dense:
            group = self.hq // self.h
            qt, kt, vt = (z.transpose(1, 2) for z in (q, k, v))
            kt, vt = (z.repeat_interleave(group, dim=1) for z in (kt, vt))
            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).transpose(1, 2)
        else:
            g = torch.sigmoid(self.g(x)).view(b, t, self.hq, len(self.gates))
            o = self.attn(q, k, v, **{n: g[..., i] for i, n in enumerate(self.gates)})
        return self.o(o.reshape(b, t, self.hq * self.dv))


class Model(torch.nn.Module):
    def __init__(self, task, seq, dim, layers, attn, dense):
        super().__init__()
        self.kind = torch.nn.Embedding(3, dim)
        self.key = torch.nn.Embedding(task.keys + 1 + task.noise, dim)
        self.value = torch.nn.Embedding(task.values + 1, dim)
        self.pos = torch.nn.Parameter(torch.randn(seq, dim) * 0.02)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(torch.nn.ModuleDict({
                "ln1": torch.nn.LayerNorm(dim),
                "attn": Attention(dim, attn, dense),
                "ln2": torch.nn.LayerNorm(dim),
                "mlp": torch.nn.Sequential(
                    torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim)
                ),
            }))
        self.ln = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, task.values)

    def forward(self, x):
        h = self.kind(x[..., 0]) + self.key(x[..., 1]) + self.value(x[..., 2])
        h = h + self.pos[: x.shape[1]]
        for blk in self.blocks:
            h = h + blk["attn"](blk["ln1"](h))
            h = h + blk["mlp"](blk["ln2"](h))
        return self.head(self.ln(h))


def train(name, model, task, args):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    )
    gen = torch.Generator().manual_seed(args.seed + 1)  # the same data for both models
    curve, seconds, tokens = [], 0.0, 0
    for step in range(args.steps):
        x, y = task.batch(gen, args.batch, args.seq, args.facts, args.queries)
        start = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        seconds += time.perf_counter() - start
        tokens += x.shape[0] * x.shape[1]
        mask = y >= 0
        acc = (logits.argmax(-1)[mask] == y[mask]).float().mean().item()
        curve.append((loss.item(), acc))
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"{name:>5} step {step:4d}  loss {loss.item():.3f}  acc {acc:.3f}  "
                  f"{tokens / seconds:,.0f} tokens/s", flush=True)
    return curve, tokens / seconds


def evaluate(model, task, args):
    gen = torch.Generator().manual_seed(args.seed + 999)  # held-out sequences
    correct = total = 0
    with torch.no_grad():
        for _ in range(args.eval_batches):
            x, y = task.batch(gen, args.batch, args.seq, args.facts, args.queries)
            pred = model(x).argmax(-1)
            mask = y >= 0
            correct += (pred[mask] == y[mask]).sum().item()
            total += mask.sum().item()
    return correct / total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--facts", type=int, default=4)
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--models", default="nsac,dense", help="which to train: nsac, dense or both")
    p.add_argument("--spec", default=str(HERE / "tiny_nsa.nsa"))
    p.add_argument("--plot", default=str(HERE / "train_tiny.png"), help="PNG path, or 'none'")
    args = p.parse_args()

    task = Task()
    attn = nsac.load(args.spec)
    results = {}
    for name in args.models.split(","):
        torch.manual_seed(args.seed)  # the same initial weights for both models
        model = Model(task, args.seq, args.dim, args.layers, attn, dense=(name == "dense"))
        curve, tps = train(name, model, task, args)
        acc = evaluate(model, task, args)
        results[name] = (curve, tps, acc)
        print(f"{name:>5} final: held-out accuracy {acc:.3f}, {tps:,.0f} tokens/s "
              f"(training, forward + backward + step)", flush=True)

    if args.plot != "none":
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot (pip install matplotlib)")
            return
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
        for name, (curve, tps, acc) in results.items():
            label = f"{name} (acc {acc:.2f}, {tps:,.0f} tok/s)"
            ax.plot([c[0] for c in curve], label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (query positions)")
        ax.set_yscale("log")
        ax.set_title(f"key-value recall over {args.seq} tokens")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
