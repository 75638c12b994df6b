"""`make bench` (issue 13): the default `nettrim prune` against the fast preset and SparseGPT,
side by side in one run, on Fashion-MNIST MLPs trained here (seeded, cached in .cache/bench).

Networks: 784-500-200-10 (parallel and cascade, eps 0.05) and 784-300-1000-300-10 (parallel),
each pruned on 20,000 calibration samples. Per configuration, as the user runs them:

    default   nettrim prune MODEL --acts ACTS --mode M --epsilon 0.05
    fast      ... --config fast --dtype float32          (the fast preset: --solver admm)
    sparsegpt ... --method sparsegpt --match DEFAULT_REPORT (the default's per-layer counts)

Each is timed as a whole command (start-up included), and the table gives the time as a
ratio to the default's, the fraction of weights pruned, the test accuracy (10,000 test
images), and the largest ||Yhat_l - Y_l||_F / eps_l over the layers (eps_l the default's;
<= 1 means every layer's eps holds).

In parallel mode the default also runs at the fast preset's pruning (`--sparsity`, its eps
searched; one eps for every layer as the preset has, `--allocation uniform`), to compare the
two at the same sparsity.

Usage: python benchmarks/bench_default.py [--quick] [--no-preset] [--out FILE]
(--quick: the first network, parallel mode only; --samples N: N calibration samples instead
of 20,000; --no-preset: without the fast preset and the same-sparsity run)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine  # noqa: E402

from nettrim_cli.datasets import accuracy, load_fashion_mnist, mlp, train  # noqa: E402
from nettrim_cli.dump import write_dump  # noqa: E402
from nettrim_cli.graph import trace_layers  # noqa: E402

CACHE = Path(".cache/bench")
N_CALIB = 20000
NETWORKS = {"784-500-200-10": (784, 500, 200, 10), "784-300-1000-300-10": (784, 300, 1000, 300, 10)}


def network(tag: str, n_calib: int = N_CALIB) -> tuple[Path, Path, float]:
    """The trained network ``tag`` (10 epochs on the 60,000 training images, seed 0), its
    dump of the first 20,000 training images, and its test accuracy; cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    ckpt, acts = CACHE / f"mlp_{tag}.pt", CACHE / f"mlp_{tag}_acts{n_calib}.h5"
    x, y = load_fashion_mnist("train")
    if not ckpt.exists():
        torch.manual_seed(0)
        torch.save(train(mlp(NETWORKS[tag]), x, y, epochs=10, seed=0), ckpt)
    model = torch.load(ckpt, weights_only=False)  # our own cache file
    if not acts.exists():
        layers = trace_layers(model, torch.as_tensor(x[:4]))
        write_dump(str(acts), model, layers, x[:n_calib], y[:n_calib], "bench")
    xt, yt = load_fashion_mnist("test")
    return ckpt, acts, accuracy(model, xt, yt)


def prune(ckpt: Path, acts: Path, out: Path, args: list[str]) -> tuple[float, dict]:
    """One `nettrim prune` as a user runs it; returns (wall seconds, the report)."""
    report = out.with_suffix(".json")
    shutil.rmtree(f"{out}.nettrim-work", ignore_errors=True)  # an interrupted bench's
    cmd = [sys.executable, "-m", "nettrim_cli", "prune", str(ckpt), "--acts", str(acts),
           "-o", str(out), "--report", str(report), "--force", "-q", *args]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr}")
    print(f"  {wall:7.1f} s  nettrim prune ... {' '.join(args)}", flush=True)
    return wall, json.loads(report.read_text())


def figures(out: Path, report: dict, eps: dict[str, float]) -> dict:
    xt, yt = load_fashion_mnist("test")
    model = torch.load(out, weights_only=False)  # written just now
    ratio = max(la["discrepancy"] / eps[la["name"]] for la in report["layers"])
    return {"pruned": report["network"]["pruned_fraction"], "acc": accuracy(model, xt, yt),
            "eps_ratio": ratio}


def run_case(tag: str, mode: str, n_calib: int, preset: bool = True) -> list[str]:
    """The commands on one network and mode; ``preset``: also the fast preset and, in
    parallel mode, the default at the preset's pruning (``--sparsity``, the eps searched): the
    two answers compared at the same sparsity."""
    ckpt, acts, acc0 = network(tag, n_calib)
    work = CACHE / f"run_{tag}_{mode}_{n_calib}"
    work.mkdir(exist_ok=True)
    rows: dict[str, tuple[float, dict]] = {}
    base = ["--mode", mode, "--epsilon", "0.05"]
    t, rep = prune(ckpt, acts, work / "default.pt", base)
    eps = {la["name"]: la["epsilon"] for la in rep["layers"]}
    rows["default"] = (t, figures(work / "default.pt", rep, eps))
    if preset:
        t, rep = prune(ckpt, acts, work / "fast.pt", [*base, "--config", "fast", "--dtype",
                                                      "float32"])
        rows["fast preset"] = (t, figures(work / "fast.pt", rep, eps))
        if mode == "parallel":
            s = f"{rows['fast preset'][1]['pruned']:.4f}"
            t, rep = prune(ckpt, acts, work / "same.pt", ["--mode", mode, "--sparsity", s,
                                                          "--allocation", "uniform"])
            rows[f"default --sparsity {s}"] = (t, figures(work / "same.pt", rep, eps))
    t, rep = prune(ckpt, acts, work / "sparsegpt.pt", ["--method", "sparsegpt", "--match",
                                                       str(work / "default.json")])
    rows["sparsegpt"] = (t, figures(work / "sparsegpt.pt", rep, eps))
    t0 = rows["default"][0]
    out = [f"\n### {tag}, {mode}, eps 0.05, {n_calib} samples (unpruned test accuracy "
           f"{acc0:.2%})\n",
           "| command | seconds | time / default | pruned | test acc. | max disc./eps |",
           "|---|---:|---:|---:|---:|---:|"]
    for name, (t, f) in rows.items():
        out.append(f"| {name} | {t:.1f} | {t / t0:.2f} | {f['pruned']:.2%} | {f['acc']:.2%} | "
                   f"{f['eps_ratio']:.3f} |")
    print("\n".join(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results_default.md")
    ap.add_argument("--samples", type=int, default=N_CALIB, help="calibration samples")
    ap.add_argument("--no-preset", action="store_true",
                    help="skip the fast preset (most of the bench's 40 minutes)")
    a = ap.parse_args()
    cases = [("784-500-200-10", "parallel")]
    if not a.quick:
        cases += [("784-500-200-10", "cascade"), ("784-300-1000-300-10", "parallel")]
    load = os.getloadavg()
    lines = ["# Default prune vs the fast preset vs SparseGPT (benchmarks/bench_default.py)",
             "", f"Machine: {machine()}; load average at the start {load[0]:.1f} (other jobs "
             "on the same cores inflate every time alike; the ratios are side by side)."]
    for tag, mode in cases:
        lines += run_case(tag, mode, a.samples, preset=not a.no_preset)
    lines.append(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
