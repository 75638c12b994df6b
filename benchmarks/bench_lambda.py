"""`make bench` (issue 13): `--lambda` (eq. 14 at a fixed lambda) on the 785 x 500 first layer
of the 784-500-200-10 bench MLP with 2,000 calibration samples: the default solver (``auto``:
a large layer at a fixed lambda takes float32 ADMM to 2e-5, then the active-set polish column
by column, each column the better of the polish and ADMM's answer with its bias lowered onto
the inequalities) against the plain OSQP column program on a sample of the same columns.

At a fixed lambda eq. 14 decouples by column, so the whole-layer answer's per-column objective
||u_m||_1 + lambda ||(X u_m - y_m) on Omega_m||^2 (inactive inequalities required) is compared
with OSQP's on each sampled column, solved alone at OSQP tolerances 1e-6 with polishing. The
table gives the default's time for the whole layer, OSQP's time per column (and what the 500
columns would take at that rate), and the largest relative objective difference.

Usage: python benchmarks/bench_lambda.py [--lam 0.2] [--columns 12] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine  # noqa: E402
from bench_default import network  # noqa: E402

from nettrim_cli.dump import DumpReader  # noqa: E402
from nettrim_cli.program import LayerProgram  # noqa: E402
from nettrim_cli.solvers.auto import AutoSolver  # noqa: E402
from nettrim_cli.solvers.base import OSQPSettings, SolverSettings  # noqa: E402
from nettrim_cli.solvers.search import solve_layer  # noqa: E402


def first_layer(lam: float, cols: np.ndarray | None = None) -> LayerProgram:
    """The 785 x 500 layer's eq. 14 program at ``lam`` (all columns, or ``cols``)."""
    ckpt, acts, _ = network("784-500-200-10", 2000)
    model = torch.load(ckpt, weights_only=False)  # our own cache file
    fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][0]
    with DumpReader(str(acts)) as d:
        X = np.asarray(d.layer_input(0), dtype=np.float64)
        Z = np.asarray(d.layer_preact(0), dtype=np.float64)
    W0 = fc.weight.detach().double().numpy()
    b0 = fc.bias.detach().double().numpy()
    if cols is not None:
        Z, W0, b0 = Z[:, cols], W0[cols], b0[cols]
    return LayerProgram(X=X, Y=np.maximum(Z, 0.0), W0=W0, b0=b0, activation="relu", lam=lam)


def objective(program: LayerProgram, Wa: np.ndarray) -> np.ndarray:
    """eq. 14's objective per column (weights' l1 norm plus lambda times the active misfit)."""
    Z = program.Xa @ Wa.T
    r = np.where(program.active_set, Z - program.Y, 0.0)
    return np.abs(Wa[:, :program.n_in]).sum(1) + program.lam * (r * r).sum(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lam", type=float, default=0.2)
    ap.add_argument("--columns", type=int, default=12)
    ap.add_argument("--out", default="benchmarks/results_lambda.md")
    a = ap.parse_args()
    load = os.getloadavg()[0]
    whole = first_layer(a.lam)
    t = time.perf_counter()
    sol = AutoSolver().solve(whole, SolverSettings())
    t_auto = time.perf_counter() - t
    cols = np.sort(np.random.default_rng(0).choice(whole.n_out, a.columns, replace=False))
    part = first_layer(a.lam, cols)
    ref_settings = SolverSettings(osqp=OSQPSettings(eps_abs=1e-6, eps_rel=1e-6))
    t = time.perf_counter()
    ref = solve_layer(part, ref_settings)
    t_osqp = time.perf_counter() - t
    mine = objective(whole, sol.Wa)[cols]
    theirs = objective(part, ref.Wa)
    # a dead neuron's column is zero in both (objective 0): its difference is 0 or it is off
    rel = np.abs(mine - theirs) / np.where(theirs != 0, np.abs(theirs), 1.0)
    viol = whole.inactive_violation(sol.Wa) / float(np.abs(whole.Y).max())
    kinds, counts = np.unique(sol.status, return_counts=True)
    statuses = ", ".join(f"{k} {v}" for k, v in zip(kinds, counts, strict=True))
    rows = [
        "# `--lambda` on the 785 x 500 layer, 2,000 samples (benchmarks/bench_lambda.py)", "",
        f"Machine: {machine()}; load average at the start {load:.1f}, at the end "
        f"{os.getloadavg()[0]:.1f}. lambda = {a.lam}; {a.columns} columns sampled (seed 0).",
        "", "| solver | seconds | columns | seconds / column | 500 columns at that rate |",
        "|---|---:|---:|---:|---:|",
        f"| default (auto: float32 ADMM + polish by column, whole layer) | {t_auto:.1f} | 500 | "
        f"{t_auto / 500:.3f} | {t_auto:.0f} |",
        f"| OSQP columns (plain eq. 14, tol 1e-6) | {t_osqp:.1f} | {a.columns} | "
        f"{t_osqp / a.columns:.2f} | {500 * t_osqp / a.columns:.0f} |", "",
        f"Largest relative objective difference on the sampled columns: {rel.max():.2e} "
        f"(median {np.median(rel):.2e}); the default's worst inactive-inequality violation: "
        f"{viol:.1e} of max |Y|; its columns: {statuses}.",
    ]
    Path(a.out).write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
