"""Sharper layer answers at the same eps: the support refit and iteratively reweighted l1.

Both work on a layer answer of any solver (``Sharpened`` wraps one), and neither changes the
layer program (eq. 3, the eps of eqs. 4-7):

- **Support refit** (``support_refit``). The l1 objective of (4) shrinks the kept weights
  towards zero; with the support S_m of every column fixed, the refit minimises the layer's
  constraint function of eq. 3 itself,

      f_m(u) = ||X_{Omega_m, S_m} u - y_{Omega_m}||^2 + ||max(X_{Omega_m^c, S_m} u - v, 0)||^2,

  (the misfit on the active set plus the squared violations of the inactive inequalities, the
  ``LayerProgram.column_error`` that eps bounds; least squares over every sample for a layer
  without activation). f_m is convex and piecewise quadratic; it is minimised per column by the
  semismooth Newton method of ``solvers/admm/refit.py`` (the staged fast path's refit):
  least squares over the active samples and the inactive samples above their bound (held at
  the bound), then a backtracking line search on f_m, until the layer's misfit stops moving.
  Starting from the solver's answer and only ever descending, the refit keeps every zero at
  zero and never raises the constraint value, so an answer in C_eps stays there.
  In parallel mode (V = 0) f_m is the layer's output discrepancy except on active samples
  driven below zero, where it is larger.
- **Reweighted l1** (``reweight``; Candes, Wakin and Boyd, "Enhancing sparsity by reweighted
  l1 minimization", 2008). Program (4) is solved again with per-entry weights
  c_mj = delta / (|w_mj| + delta) on the objective (delta: ``DELTA`` times the mean kept
  magnitude of the layer), warm started from the previous answer, by the whole-layer ADMM
  (``solve_layer`` with ``l1_weights``; the fast path's settings). A round is kept only when
  its answer meets eps, measured on every sample, with fewer non-zeros; the first round that
  does not stops the rounds.

Each stage records itself in the solution's ``sharpen`` field (the report's
``solver.sharpen``): constraint values before and after, non-zeros per round, seconds.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from nettrim_cli.execution.threads import fixed_threads
from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.admm.refit import misfit, refit_support
from nettrim_cli.solvers.base import LayerSolution, Progress, SolverSettings, no_progress

DELTA = 0.1  # delta of the reweighting, relative to the mean |w| of the kept weights
NEWTON_ROUNDS = 30  # at most this many Newton rounds of the layer's refit (a few suffice)


def support_refit(program: LayerProgram, Wa: np.ndarray, skip: frozenset[int] = frozenset()
                  ) -> tuple[np.ndarray, dict]:
    """Every column of ``Wa`` (M, N + bias) but those in ``skip`` refitted on its own support:
    the minimiser of the column's eq.-3 constraint function over the weights it keeps (module
    docstring; the semismooth Newton method of ``solvers/admm/refit.py``, run until the
    layer's misfit stops moving). Zeros stay exactly zero; no column's constraint value
    rises. Returns (weights, record)."""
    t0 = time.perf_counter()
    out = np.array(Wa, dtype=np.float64, copy=True)
    cols = np.array([m for m in range(program.n_out) if m not in skip], dtype=int)
    before = after = np.zeros(0)
    if cols.size:
        Y = np.asarray(program.Y, dtype=np.float64)[:, cols]
        V, act = program.bounds[:, cols], program.active_set[:, cols]
        before = misfit(program.Xa @ out[cols].T, Y, V, act)
        with fixed_threads(1):  # many small dense systems: BLAS threads only add contention
            WT, after = refit_support(program.Xa, Y, V, act, out[cols].T, program.bias,
                                      rounds=NEWTON_ROUNDS, tol=1e-10)
        out[cols] = WT.T
    record = {"columns_improved": int(np.count_nonzero(after < before)),
              "constraint_before": float(np.sqrt(before.sum())),
              "constraint_after": float(np.sqrt(after.sum())),
              "seconds": round(time.perf_counter() - t0, 4)}
    return out, record


def _weights_for(W: np.ndarray, delta_rel: float) -> np.ndarray | None:
    """c = delta / (|w| + delta) (Candes et al. 2008, scaled into (0, 1]; scaling the objective
    of (4) does not change its minimiser), delta relative to the mean kept |w|."""
    a = np.abs(W)
    kept = a[a > 0]
    if kept.size == 0:
        return None
    delta = delta_rel * float(kept.mean())
    return delta / (a + delta)


def reweight(program: LayerProgram, sol: LayerSolution, settings: SolverSettings, rounds: int,
             progress: Progress = no_progress, delta_rel: float = DELTA
             ) -> tuple[LayerSolution, dict]:
    """Up to ``rounds`` reweighted-l1 solves of (4) (module docstring); each kept only when it
    meets eps on every sample with fewer non-zeros. Returns (solution, record)."""
    from nettrim_cli.execution.threads import fixed_threads
    from nettrim_cli.solvers.admm import solve_layer
    from nettrim_cli.solvers.auto import AutoSolver, large_layer_settings

    n_in = program.n_in
    best, nnz = sol, int(np.count_nonzero(sol.Wa[:, :n_in]))
    log: list[dict] = []
    _, dtype, _ = AutoSolver().plan(program)
    threads = AutoSolver.threads(program, settings)
    for k in range(rounds):
        c = _weights_for(best.Wa[:, :n_in], delta_rel)
        if c is None:
            break
        t0 = time.perf_counter()
        with fixed_threads(threads):
            trial = solve_layer(program, settings, progress, dtype=dtype,
                                admm_settings=large_layer_settings(), l1_weights=c,
                                warm=best.Wa)
        cv = program.constraint_value(trial.Wa)
        trial_nnz = int(np.count_nonzero(trial.Wa[:, :n_in]))
        kept = bool(trial.eps_reached and not trial.failed and trial_nnz < nnz)
        log.append({"round": k + 1, "nonzeros": trial_nnz, "constraint": cv, "kept": kept,
                    "seconds": round(time.perf_counter() - t0, 4)})
        if not kept:
            break
        best = dataclasses.replace(
            trial, lam=None, constraint=cv, history=[*sol.history, *trial.history],
            seconds=sol.seconds + trial.seconds)
        nnz = trial_nnz
    return best, {"rounds": log, "nonzeros_before": int(np.count_nonzero(sol.Wa[:, :n_in])),
                  "nonzeros_after": nnz}


def sharpen(program: LayerProgram, sol: LayerSolution, settings: SolverSettings,
            refit: bool, rounds: int, progress: Progress = no_progress) -> LayerSolution:
    """The solver's answer reweighted (``rounds`` > 0, with an eps) and refitted (``refit``);
    the stages are recorded in the solution's ``sharpen`` field."""
    record: dict = {}
    if rounds > 0 and program.epsilon is not None:
        sol, record["reweight"] = reweight(program, sol, settings, rounds, progress)
    if refit and _refitted(sol):
        record["refit"] = {"skipped": "the answer is already the support refit's (the default "
                                      "solver's staged fast path, solvers/admm/staged.py)"}
    elif refit:
        # a column the solver could not settle keeps its original weights (or its mix with
        # them), as the report says; a dead neuron keeps its settled answer
        skip = frozenset([f["column"] for f in sol.failed]
                         + [m for m, st in enumerate(sol.status) if st == "dead_neuron"])
        Wa, record["refit"] = support_refit(program, sol.Wa, skip)
        cv = program.constraint_value(Wa)
        reached = sol.eps_reached or (program.epsilon is not None and cv <= program.epsilon)
        sol = dataclasses.replace(sol, Wa=Wa, constraint=cv, eps_reached=reached)
    return dataclasses.replace(sol, sharpen=record) if record else sol


def _refitted(sol: LayerSolution) -> bool:
    """True when the solver's answer is already a support refit (``solvers/admm/refit.py``:
    Newton rounds towards the same minimiser), so a second refit would mostly cost time."""
    return any(h.get("stage") == "chosen" and h.get("source") == "refit"
               for h in getattr(sol, "history", None) or [])


class Sharpened:
    """A layer solver whose answers are sharpened (``sharpen``) before they are returned; the
    inner solver's name and capabilities are its own."""

    def __init__(self, inner, refit: bool, rounds: int) -> None:
        self.inner, self.refit, self.rounds = inner, refit, rounds
        self.name, self.capabilities = inner.name, inner.capabilities

    def solve(self, program: LayerProgram, settings: SolverSettings,
              progress: Progress = no_progress, journal=None) -> LayerSolution:
        sol = self.inner.solve(program, settings, progress, journal=journal)
        return sharpen(program, sol, settings, self.refit, self.rounds, progress)


def sharpened(solver, refit: bool, rounds: int):
    """``solver`` itself when neither stage is asked for, else wrapped in ``Sharpened``."""
    return Sharpened(solver, refit, rounds) if refit or rounds > 0 else solver
