"""`make bench`, export part: what `nettrim export` and `sparse_model` buy, in one run.

Sizes: each candidate way of storing the pruned weights (torch's CSR with int64 indices, CSR
with int32 indices, kept values plus a packed bitmask -- the chosen `torch` format -- and the
same bitmask in safetensors) against the dense pruned file and that file gzipped (and the
chosen export gzipped, for shipping), at 80, 90
and 95% sparsity, on the MLPs 784-300-100-10 and 784-500-200-10 and on section 6's CNN
(conv weights flattened). Latency: `sparse_model` against the dense model at batch 1, 64 and
256, and the predictions of both on the Fashion-MNIST test set; then one conv layer's sparse
product (unfold + CSR) against the dense conv, which decides whether conv layers go sparse.

The MLPs are trained for EPOCHS epochs on Fashion-MNIST (seed 0, cached in .cache/bench/) and
every weight matrix is magnitude-pruned to the same sparsity; file sizes depend only on the
sparsity and the shapes. Each timing is the fastest of N single calls (the least disturbed
by other processes; the median is printed too), dense and sparse interleaved in blocks.

Usage: python benchmarks/bench_export.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import os
import time
import warnings
from pathlib import Path

import bench  # benchmarks/bench.py (this script's folder): the machine line
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.datasets import load_fashion_mnist, mlp, train
from nettrim_cli.export import export_checkpoint, sparse_model
from nettrim_cli.export.formats import SafetensorsFormat, TorchFormat

CACHE = Path(".cache/bench")
NETS = ((784, 300, 100, 10), (784, 500, 200, 10))
SPARSITIES = (0.8, 0.9, 0.95)
BATCHES = (1, 64, 256)
EPOCHS = 2
TARGETS = {0.9: 0.20, 0.95: 0.12}  # the size targets: export / dense file
SPEED_TARGET = 2.0  # sparse at least this much faster than dense at batch 1, 95%


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{bench.machine()}, {torch.get_num_threads()} torch threads; load average "
            f"{load:.1f} at start")


def cnn() -> nn.Sequential:
    """Section 6's CNN (experiments/run.py): two 5x5 convs of 32 filters, 512, 10."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, 10))


def trained(widths: tuple[int, ...], x: np.ndarray, y: np.ndarray) -> nn.Module:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"export_mlp_{'-'.join(map(str, widths))}_e{EPOCHS}.pt"
    model = mlp(widths)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    model = train(mlp(widths), x, y, epochs=EPOCHS, seed=0)
    torch.save(model.state_dict(), path)
    return model.eval()


def pruned(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy with each Linear/conv weight's smallest |w| set to zero (exactly ``sparsity``)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for mod in out.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                w = mod.weight.view(-1)
                k = round(sparsity * w.numel())
                w[w.abs().argsort()[:k]] = 0.0
    return out.eval()


# ----------------------------------------------------------------------------------------------
# Sizes


def _bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


def _csr(w: torch.Tensor, int32: bool) -> torch.Tensor:
    c = w.reshape(w.shape[0], -1).to_sparse_csr()
    if not int32:
        return c
    return torch.sparse_csr_tensor(c.crow_indices().int(), c.col_indices().int(), c.values(),
                                   c.shape)


def sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of the pruned state_dict stored each way."""
    sd = model.state_dict()
    weights = {f"{n}.weight" for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))}
    dense = io.BytesIO()
    torch.save(sd, dense)
    export = export_checkpoint(Checkpoint(model=model, form="state_dict", path="bench",
                                          container=sd))
    with warnings.catch_warnings():  # torch calls sparse CSR "beta"
        warnings.simplefilter("ignore")
        csr64 = _bytes({k: _csr(v, False) if k in weights else v for k, v in sd.items()})
        csr32 = _bytes({k: _csr(v, True) if k in weights else v for k, v in sd.items()})
    chosen = TorchFormat().encode(export)
    return {"dense": len(dense.getvalue()),
            "dense gzip -9": len(gzip.compress(dense.getvalue(), 9)),
            "torch CSR int64": csr64, "CSR int32": csr32,
            "bitmask (torch, chosen)": len(chosen),
            "bitmask (safetensors)": len(SafetensorsFormat().encode(export)),
            "chosen gzip -9": len(gzip.compress(chosen, 9))}


def size_table(models: dict[str, nn.Module]) -> list[str]:
    rows = []
    cols = None
    met = []
    for name, model in models.items():
        for s in SPARSITIES:
            got = sizes(pruned(model, s))
            cols = cols or list(got)
            dense = got["dense"]
            cells = [f"{got['dense']:>10,}"] + [f"{100 * v / dense:6.1f}% ({dense / v:4.1f}x)"
                                               for k, v in got.items() if k != "dense"]
            rows.append(f"| {name:<17} | {s:.0%} | " + " | ".join(cells) + " |")
            if s in TARGETS and not name.startswith("CNN"):
                ratio = got["bitmask (torch, chosen)"] / dense
                met.append(f"{name} at {s:.0%}: export {ratio:.1%} of dense (target <= "
                           f"{TARGETS[s]:.0%}: {'met' if ratio <= TARGETS[s] else 'MISSED'})")
    head = ("| network           | sparsity | dense bytes | " + " | ".join(cols[1:]) + " |")
    return [head, "|" + "---|" * (len(cols) + 2)] + rows + [""] + met


# ----------------------------------------------------------------------------------------------
# Latency


def per_call(fn, x: torch.Tensor, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn(x)
        out.append((time.perf_counter_ns() - t) / 1e3)
    return out


def timed(dense, sparse, x: torch.Tensor, n: int, blocks: int = 10) -> tuple[float, ...]:
    """(dense min, dense median, sparse min, sparse median) in microseconds; the two models
    alternate in ``blocks`` blocks so that both see the same load from other processes."""
    d, s = [], []
    with torch.inference_mode():
        for _ in range(3):
            dense(x), sparse(x)
        for _ in range(blocks):
            d += per_call(dense, x, max(n // blocks, 1))
            s += per_call(sparse, x, max(n // blocks, 1))
    return min(d), float(np.median(d)), min(s), float(np.median(s))


def same_predictions(dense, sparse, x: np.ndarray, n_single: int) -> str:
    xt = torch.as_tensor(x)
    with torch.inference_mode():
        batched = all(torch.equal(dense(xt[a:a + 256]).argmax(1), sparse(xt[a:a + 256]).argmax(1))
                      for a in range(0, len(xt), 256))
        single = sum(int(torch.equal(dense(xt[i:i + 1]).argmax(1), sparse(xt[i:i + 1]).argmax(1)))
                     for i in range(n_single))
    return (f"{'identical' if batched else 'DIFFERENT'} on {len(xt)} at batch 256, "
            f"{single}/{n_single} identical at batch 1")


def latency_table(models: dict[str, nn.Module], x_test: np.ndarray, quick: bool) -> list[str]:
    calls = {1: 600 if quick else 3000, 64: 100 if quick else 400, 256: 40 if quick else 150}
    rows = ["| network | sparsity | batch | dense min / median (us) | sparse min / median (us) "
            "| dense / sparse (min) | (median) |", "|---|---|---|---|---|---|---|"]
    notes = []
    rng = np.random.default_rng(0)
    for name, model in models.items():
        for s in SPARSITIES:
            dense = pruned(model, s)
            sparse = sparse_model(dense, min_sparsity=0.0)  # every layer, whatever it gains
            notes.append(f"{name} at {s:.0%}: predictions "
                         f"{same_predictions(dense, sparse, x_test, 200 if quick else 1000)}")
            for b in BATCHES:
                x = torch.as_tensor(x_test[rng.choice(len(x_test), b, replace=False)])
                dm, dmed, sm, smed = timed(dense, sparse, x, calls[b])
                rows.append(f"| {name} | {s:.0%} | {b} | {dm:,.0f} / {dmed:,.0f} | "
                            f"{sm:,.0f} / {smed:,.0f} | {dm / sm:.2f}x | {dmed / smed:.2f}x |")
                if b == 1 and s == 0.95:
                    notes.append(f"{name} at 95%, batch 1: sparse {dm / sm:.2f}x faster (target "
                                 f">= {SPEED_TARGET:g}x: "
                                 f"{'met' if dm / sm >= SPEED_TARGET else 'MISSED'})")
    return rows + [""] + notes


def conv_row(quick: bool) -> str:
    """Section 6's second conv (32 -> 32, 5x5, 12x12 input) at 95%, batch 1: dense conv
    against unfold + CSR product, the path a sparse conv module would take."""
    torch.manual_seed(0)
    conv = pruned(nn.Sequential(nn.Conv2d(32, 32, 5)), 0.95)[0]
    w = conv.weight.detach().reshape(32, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csr = w.to_sparse_csr()
    bias = conv.bias.detach().unsqueeze(1)

    def sparse(x):
        return torch.addmm(bias, csr, F.unfold(x, 5)[0]).reshape(1, 32, 8, 8)

    def unfold(x):
        return F.unfold(x, 5)

    x = torch.randn(1, 32, 12, 12)
    n = 500 if quick else 2000
    dm, dmed, sm, smed = timed(conv, sparse, x, n)
    with torch.inference_mode():
        um = min(per_call(unfold, x, n // 4))
    return (f"conv 32->32 5x5 on 12x12 at 95%, batch 1: dense {dm:.0f} us, unfold + CSR "
            f"{sm:.0f} us (unfold alone {um:.0f} us): dense / sparse {dm / sm:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed calls")
    args = ap.parse_args()
    print(f"# nettrim export bench\n\nMachine: {machine()}\n")
    x, y = load_fashion_mnist("train")
    x_test, _ = load_fashion_mnist("test")
    models = {f"MLP {'-'.join(map(str, w))}": trained(w, x, y) for w in NETS}
    torch.manual_seed(0)
    sized = dict(models, **{"CNN (section 6)": cnn().eval()})
    print("## File sizes (% of the dense pruned state_dict file, and how many times smaller)\n")
    print("\n".join(size_table(sized)))
    print("\n## Latency: sparse_model against dense (per forward call)\n")
    print("\n".join(latency_table(models, x_test, args.quick)))
    print("\n## Conv\n")
    print(conv_row(args.quick))


if __name__ == "__main__":
    main()
