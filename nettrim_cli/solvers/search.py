"""Choosing lambda so that the layer's constraint ||Yhat - Y||_F <= eps holds (Proposition 1).

The column programs (11) are solved for several lambdas per pass: each column's OSQP problem is
set up once per pass and every further lambda is only ``update(q=...)`` with a warm start. The
squared constraint value E(lambda)^2 = sum_m e_m(lambda) is non-increasing in lambda, and the
smallest lambda that meets eps is the sparsest. Pass 1 brackets it on a decade grid; later
passes refine the bracket geometrically until E is within [ (1 - rtol) eps, eps ].

With scope ``layer`` all columns share one lambda: by the KKT conditions of (4) (one multiplier
for its single quadratic constraint) that is the exact solution of program (4)/(6). With scope
``column`` every column is its own group with the budget eps_m = eps ||y_m|| / ||Y||.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import LayerSolution, Progress, SolverSettings, no_progress
from nettrim_cli.solvers.osqp import ColumnQP, ScaledLayer, dead_column, is_solved


@dataclass
class _Group:
    columns: list[int]
    target: float  # eps for the group
    lo: float  # a lambda known (or assumed) to violate the target
    hi: float | None = None  # smallest lambda known to meet it
    hi_err: float = np.inf
    done: bool = False


class _Tally:
    def __init__(self) -> None:
        self.solves = self.retries = self.iterations = 0
        self.seconds = 0.0


def threshold(wa: np.ndarray, n_in: int, thr: float) -> np.ndarray:
    """Exact zeros for weights with |w| <= thr (the bias, last when present, is kept)."""
    out = wa.copy()
    w = out[:n_in]
    w[np.abs(w) <= thr] = 0.0
    return out


def lambda_floor(program: LayerProgram, layer: ScaledLayer, m: int) -> float:
    """The largest lambda at which zero weights (with the best free bias) solve eq. 11 when the
    inactive constraints are slack: 1 / max_i (d_i |2 x_i^T r|), r the residual of the bias-only
    fit on the active set, x_i the scaled features. Only a starting point for the search."""
    act = program.active(m)
    y = np.asarray(program.Y[act, m], dtype=np.float64)
    Xs = layer.Xs[act]
    r = y - (y.mean() if program.bias and y.size else 0.0)
    g = 2.0 * np.abs(Xs[:, : program.n_in].T @ r) * layer.d
    top = float(g.max()) if g.size else 0.0
    return 1.0 / top if top > 0 else np.inf


def _solve_grid(program: LayerProgram, m: int, lams: list[float], settings: SolverSettings,
                layer: ScaledLayer, warm: np.ndarray, thr: float, tally: _Tally, exact: bool):
    """Solve column m at each lambda (ascending), one setup, warm starts; returns per lambda
    (weights, squared error, status). A failed solve keeps the original column."""
    qp = ColumnQP(program, m, settings.osqp, layer=layer, exact=exact)
    qp.warm(warm)
    out = []
    for lam in lams:
        r = qp.solve(lam)
        tally.solves += 1
        tally.retries += int(r.retried)
        tally.iterations += r.iterations
        tally.seconds += r.seconds
        if is_solved(r.status) and np.isfinite(r.wa).all():
            wa = threshold(r.wa, program.n_in, thr)
        else:
            wa = program.Wa0[m].copy()
        out.append((wa, program.column_error(m, wa), r.status))
    return out


def solve_layer(program: LayerProgram, settings: SolverSettings,
                progress: Progress = no_progress) -> LayerSolution:
    """Solve the layer program column by column with OSQP; lambda fixed or chosen from eps."""
    t0 = time.perf_counter()
    M = program.n_out
    Wa0 = program.Wa0
    thr = settings.zero_threshold * float(np.max(np.abs(program.W0))) if program.W0.size else 0.0
    layer = ScaledLayer(program)
    tally = _Tally()
    Wa = Wa0.copy()
    status = ["unsolved"] * M
    failed: list[dict] = []

    dead = 0
    live: list[int] = []
    for m in range(M):
        wa = dead_column(program, m)
        if wa is None:
            live.append(m)
        else:
            Wa[m] = wa
            status[m] = "dead_neuron"
            dead += 1

    def record(m: int, wa: np.ndarray, st: str) -> None:
        Wa[m] = wa
        status[m] = st
        if not is_solved(st):
            failed.append({"column": m, "status": st, "action": "kept original weights"})

    exact = program.epsilon is not None and program.epsilon == 0.0
    history: list[dict] = []
    if program.lam is not None or exact:
        lam = program.lam if program.lam is not None else np.inf
        for i, m in enumerate(live):
            (wa, _, st), = _solve_grid(program, m, [lam], settings, layer, Wa0[m], thr, tally,
                                       exact)
            record(m, wa, st)
            progress("solve", i + 1, len(live))
        sol_lam: float | list[float] | None = None if exact else float(program.lam)
        passes = 1
        reached = True
    else:
        sol_lam, passes, reached = _search(program, settings, live, layer, thr, tally, Wa,
                                           record, history, progress)
    failed.sort(key=lambda f: f["column"])
    return LayerSolution(
        Wa=Wa, lam=sol_lam, constraint=program.constraint_value(Wa), status=status,
        failed=failed, solves=tally.solves, retries=tally.retries, iterations=tally.iterations,
        seconds=time.perf_counter() - t0, passes=passes, dead_columns=dead, eps_reached=reached,
        history=history,
    )


def _search(program, settings, live, layer, thr, tally, Wa, record, history, progress):
    s = settings.search
    eps = float(program.epsilon)
    Wa0 = program.Wa0
    floors = {m: lambda_floor(program, layer, m) for m in live}
    finite = [f for f in floors.values() if np.isfinite(f)]
    base = min(finite) if finite else 1.0
    if s.scope == "layer":
        groups = [_Group(columns=list(live), target=eps, lo=base)] if live else []
    elif s.scope == "column":
        Y = np.asarray(program.Y, dtype=np.float64)
        act = Y > 0 if program.activation != "none" else np.ones_like(Y, dtype=bool)
        norms = np.sqrt((np.where(act, Y, 0.0) ** 2).sum(axis=0))
        total = float(np.linalg.norm(norms)) or 1.0
        groups = [_Group(columns=[m], target=eps * norms[m] / total,
                         lo=floors[m] if np.isfinite(floors[m]) else base) for m in live]
    else:
        raise ValueError(f"unknown lambda scope {s.scope!r}")

    best: dict[int, tuple[np.ndarray, str]] = {}
    passes = 0
    while passes < s.max_passes and any(not g.done for g in groups):
        passes += 1
        todo = [g for g in groups if not g.done]
        grids = {}
        for g in todo:
            if g.hi is None:
                # bracket on a decade grid, starting at the group's lambda floor
                start = 0 if passes == 1 else 1
                grids[id(g)] = [g.lo * 10.0 ** k for k in range(start, start + 5)]
            else:
                k = s.grid
                grids[id(g)] = list(np.geomspace(g.lo, g.hi, k + 2)[1:-1])
        n_cols = sum(len(g.columns) for g in todo)
        done_cols = 0
        for g in todo:
            lams = grids[id(g)]
            per_col = {}
            for m in g.columns:
                warm = best[m][0] if m in best else Wa0[m]
                per_col[m] = _solve_grid(program, m, lams, settings, layer, warm, thr, tally,
                                         exact=False)
                done_cols += 1
                progress(f"lambda pass {passes}", done_cols, n_cols)
            errs = [float(np.sqrt(sum(per_col[m][k][1] for m in g.columns)))
                    for k in range(len(lams))]
            history.append({"pass": passes, "columns": len(g.columns),
                            "lambdas": [float(x) for x in lams], "constraint": errs}
                           if s.scope == "layer" else {"pass": passes, "column": g.columns[0]})
            ok = [k for k, e in enumerate(errs) if e <= g.target]
            if ok:
                k = ok[0]
                g.hi, g.hi_err = lams[k], errs[k]
                if k > 0:
                    g.lo = lams[k - 1]
                elif g.hi <= g.lo * (1 + 1e-12):
                    if all(not per_col[m][0][0][: program.n_in].any() for m in g.columns):
                        g.done = True  # all weights zero at the smallest lambda: optimal
                    else:
                        g.lo = g.hi / 1e4  # met at the start: look below it too
                for m in g.columns:
                    best[m] = (per_col[m][k][0], per_col[m][k][2])
                if g.hi_err >= (1.0 - s.rtol) * g.target or g.hi / g.lo < 1.0 + 1e-3:
                    g.done = True
            else:
                g.lo = lams[-1]
    reached = True
    for g in groups:
        for m in g.columns:
            if m in best:
                record(m, *best[m])
            else:
                # eps never met within the passes: keep the original column, say so
                record(m, Wa0[m].copy(), "epsilon_not_reached")
                reached = False
    if s.scope == "layer":
        lam = float(groups[0].hi) if groups and groups[0].hi is not None else None
    else:
        lam = [float(g.hi) if g.hi is not None else None for g in groups]
    return lam, passes, reached
