"""What the lambda scope costs in sparsity: one lambda per layer (the exact solution of program
4) against one lambda per column (each column gets eps_m = eps ||y_m|| / ||Y||), on the same
layers at the same eps. A script, not a test: `python benchmarks/scope.py [model.pt acts.h5]`.
Defaults to the demo's spiral network (run `make demo` first).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from nettrim_cli.checkpoint import load_checkpoint
from nettrim_cli.dump import DumpReader
from nettrim_cli.graph import trace_layers
from nettrim_cli.methods.netrim import PruneSettings, prune
from nettrim_cli.solvers.base import SolverSettings
from nettrim_cli.solvers.osqp_solver import OSQPSolver


def main() -> None:
    model, acts = (sys.argv[1:3] if len(sys.argv) >= 3
                   else ("demo_out/model.pt", "demo_out/acts.h5"))
    eps = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
    ckpt = load_checkpoint(model)
    print("| scope | layer | nonzeros | sparsity | constraint / eps | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    totals = {}
    with DumpReader(acts) as dump:
        ckpt.layers = trace_layers(ckpt.model, torch.as_tensor(dump.inputs(slice(0, 4))))
        for scope in ("layer", "column"):
            s = SolverSettings()
            s.search.scope = scope
            t = time.perf_counter()
            res = prune(ckpt, dump, PruneSettings(mode="parallel", epsilon=eps, solver=s),
                        OSQPSolver())
            nnz = 0
            for o in res.layers:
                k = int(np.count_nonzero(o.W))
                nnz += k
                print(f"| {scope} | {o.info.name} | {k} | {1 - k / o.W.size:.4f} | "
                      f"{o.solution.constraint / o.epsilon:.4f} | {o.seconds:.1f} |")
            totals[scope] = (nnz, time.perf_counter() - t)
    params = sum(o.W.size for o in res.layers)
    for scope, (nnz, secs) in totals.items():
        print(f"\n{scope} scope: {nnz} of {params} weights nonzero "
              f"({100 * (1 - nnz / params):.2f}% pruned), {secs:.1f} s", end="")
    print(f"\n\nper-column lambdas keep {totals['column'][0] - totals['layer'][0]} more weights "
          f"at parallel eps = {eps} ||Y_l||.")


if __name__ == "__main__":
    main()
