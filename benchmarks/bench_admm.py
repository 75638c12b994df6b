"""Time the whole-layer ADMM solver against the OSQP column solver with lambda search on one
random ReLU layer (a script, not a test).

    .venv/bin/python benchmarks/bench_admm.py                 # 2000 samples, 300 -> 300 + bias
    .venv/bin/python benchmarks/bench_admm.py --no-osqp --device cuda --dtype float32

Prints seconds, sparsity, constraint value / eps, discrepancy and the time ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers import search
from nettrim_cli.solvers.admm import ADMMSettings
from nettrim_cli.solvers.admm import solve_layer as admm_solve
from nettrim_cli.solvers.base import SearchSettings, SolverSettings


def make_layer(P: int, N: int, M: int, eps_r: float, seed: int) -> LayerProgram:
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.standard_normal((P, N)), 0.0)  # post-ReLU inputs
    W0 = rng.standard_normal((M, N)) / np.sqrt(N)
    b0 = 0.1 * rng.standard_normal(M)
    Y = np.maximum(X @ W0.T + b0, 0.0)
    return LayerProgram(X=X, Y=Y, W0=W0, b0=b0, activation="relu",
                        epsilon=eps_r * float(np.linalg.norm(Y)))


def report(name: str, program: LayerProgram, sol, seconds: float) -> dict:
    N = program.n_in
    W = sol.Wa[:, :N]
    row = {
        "solver": name,
        "seconds": seconds,
        "zeros": float(np.mean(W == 0)),
        "l1": float(np.abs(W).sum()),
        "constraint/eps": program.constraint_value(sol.Wa) / program.epsilon,
        "discrepancy": program.discrepancy(sol.Wa),
        "status": dict(sol.summary()["status_counts"]),
    }
    print(f"{name:>5}: {seconds:8.2f} s  zeros {row['zeros']:.4f}  l1 {row['l1']:.6f}  "
          f"constraint/eps {row['constraint/eps']:.9f}  discrepancy {row['discrepancy']:.6f}  "
          f"status {row['status']}", flush=True)
    return row


def printer(name: str):
    last = {"stage": None, "t": time.perf_counter()}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage != last["stage"] or now - last["t"] > 30 or done == total:
            print(f"  [{name}] {stage} {done}/{total}", flush=True)
            last["stage"], last["t"] = stage, now

    return progress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--n-in", type=int, default=300)
    ap.add_argument("--n-out", type=int, default=300)
    ap.add_argument("--eps", type=float, default=0.1, help="relative eps: eps = eps_r ||Y||_F")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--rtol", type=float, default=0.02, help="OSQP lambda search rtol")
    ap.add_argument("--no-osqp", action="store_true")
    ap.add_argument("--no-admm", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    program = make_layer(args.samples, args.n_in, args.n_out, args.eps, args.seed)
    print(f"layer: {args.samples} samples, {args.n_in} inputs + bias -> {args.n_out} relu, "
          f"eps = {args.eps} ||Y||_F = {program.epsilon:.6g}; torch threads "
          f"{torch.get_num_threads()}, device {args.device}, dtype {args.dtype}", flush=True)
    settings = SolverSettings(search=SearchSettings(rtol=args.rtol))

    ra = None
    if not args.no_admm:
        t = time.perf_counter()
        sol = admm_solve(program, settings, printer("admm"), device=args.device,
                         dtype=args.dtype, admm_settings=ADMMSettings())
        ta = time.perf_counter() - t
        ra = report("admm", program, sol, ta)
        for h in sol.history:
            print("       ", {k: v for k, v in h.items() if k not in ("trace", "log")})
    if args.no_osqp:
        return
    t = time.perf_counter()
    ref = search.solve_layer(program, settings, printer("osqp"))
    to = time.perf_counter() - t
    ro = report("osqp", program, ref, to)
    if ra is not None:
        print(f"ratio osqp/admm seconds: {to / ra['seconds']:.2f}; "
              f"l1 admm/osqp: {ra['l1'] / ro['l1']:.6f}")

if __name__ == "__main__":
    main()
