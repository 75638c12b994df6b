"""solve_layer: the stages of the whole-layer ADMM solver in order, and ADMMSolver.

ADMM (``iterate.py``) gives a sparse answer; the polish (``polish.py``) tries to certify it.
When the KKT conditions of (4) hold the columns are ``solved``; otherwise the best feasible
candidate (polished or ADMM's own, pulled onto the constraint, ``repair.py``) is kept as
``solved_inaccurate``, and as a last resort the layer is mixed with the original weights until
the constraint holds.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from nettrim_cli.program import NONE, LayerProgram
from nettrim_cli.solvers.admm.iterate import _ADMM
from nettrim_cli.solvers.admm.polish import _Polish
from nettrim_cli.solvers.admm.repair import (
    _bisect,
    _gram_form,
    _l1,
    _refit_mix,
    _threshold,
)
from nettrim_cli.solvers.admm.settings import (
    INACCURATE,
    MIXED,
    NOT_REACHED,
    SOLVED,
    ADMMSettings,
    ADMMSolution,
)
from nettrim_cli.solvers.base import (
    Capabilities,
    Progress,
    SolverSettings,
    no_progress,
)
from nettrim_cli.solvers.osqp import settle_dead_columns

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - optional
    threadpool_limits = None


def _blas_threads(n: int | None):
    """Limit numpy/scipy BLAS threads (the polish solves many small dense systems, where
    threads only add overhead and, on a busy machine, contention)."""
    if n is None or threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n)



def solve_layer(program: LayerProgram, settings: SolverSettings,
                progress: Progress = no_progress, device: str = "cpu", dtype: str = "float64",
                admm_settings: ADMMSettings | None = None) -> ADMMSolution:
    """Solve program (4)/(6) -- or eq. 11 for every column at a fixed ``program.lam`` -- for the
    whole layer with ADMM and an active-set polish. ``admm_settings`` (or ``settings.admm``
    when the settings carry one) tunes ADMM; ``device``/``dtype`` are torch's for ADMM (the
    polish runs in float64 numpy)."""
    t0 = time.perf_counter()
    opts = admm_settings or getattr(settings, "admm", None) or ADMMSettings()
    N = program.n_in
    Xa = program.Xa
    Wa0 = program.Wa0
    Y = np.asarray(program.Y, dtype=np.float64)
    V = program.bounds
    act = program.active_set  # Omega of eq. 3, as the program stores it
    thr = settings.zero_threshold * float(np.max(np.abs(program.W0))) if program.W0.size else 0.0
    eps = None if program.epsilon is None else float(program.epsilon)
    lam = None if program.lam is None else float(program.lam)
    ytop = max(1.0, float(np.abs(Y).max())) if Y.size else 1.0

    # eps = 0 (program 8) is met to rounding only
    eps_ok = None if eps is None else (eps if eps > 0 else 1e-10 * float(np.linalg.norm(Y)))

    def ok(W: np.ndarray) -> bool:
        if eps_ok is None:
            return program.inactive_violation(W) <= 1e-8 * ytop
        return program.constraint_value(W) <= eps_ok

    Wa, status, live, dead = settle_dead_columns(program)
    failed: list[dict] = []

    history: list[dict] = []
    lam_out: float | None = lam
    solver = None
    rounds = retries = 0
    admm_conv = pol_conv = True
    if live:
        idx = np.asarray(live)
        l1mask = np.ones(Xa.shape[1])
        if program.bias:
            l1mask[-1] = 0.0
        Yl, Vl, actl = Y[:, idx], V[:, idx], act[:, idx]
        gram = _gram_form(Xa, Yl, eps) if program.activation == NONE else None
        if gram is not None:
            # no activation: the misfit lives in the span of X, so ADMM runs on an
            # (rank x L) sample block instead of (P x L), exactly the same program
            Rg, Bg, eps_g = gram
            solver = _ADMM(Rg, Bg, np.zeros_like(Bg), np.ones_like(Bg, dtype=bool), Wa0[idx].T,
                           l1mask, eps_g, lam, opts, device, dtype)
            history.append({"stage": "gram_form", "rows": int(Rg.shape[0]),
                            "samples": int(Xa.shape[0])})
        else:
            solver = _ADMM(Xa, Yl, Vl, actl, Wa0[idx].T, l1mask, eps, lam, opts, device, dtype)

        def assemble(WT: np.ndarray) -> np.ndarray:
            out = Wa.copy()
            out[idx] = WT.T
            return _threshold(out, N, thr)

        target = None if eps is None else eps * (1.0 - 1e-9)
        wscale = float(np.abs(Wa0).max()) if Wa0.size else 1.0
        pol = _Polish(Xa, Yl, Vl, actl, program.bias, N, eps, lam, wscale=wscale or 1.0)
        tol_abs, tol_rel = opts.eps_abs, opts.eps_rel
        attempts = 1 + int(opts.retry and opts.polish)
        best: tuple | None = None  # (W, certified, l1, source)
        for attempt in range(attempts):
            if attempt:
                retries += 1
                # a low-precision run continues in float64 at the same tolerances; a float64
                # run continues with tighter ones
                if not solver.promote():
                    tol_abs, tol_rel = tol_abs / opts.retry_factor, tol_rel / opts.retry_factor
            admm_conv = solver.run(opts.max_iter, tol_abs, tol_rel, progress)
            WT, tight = solver.result()
            if gram is not None:
                tight = np.zeros_like(actl)  # every entry is active: no bounds to hold
            history.append({"stage": "admm", "attempt": attempt + 1,
                            "iterations": solver.iterations, "converged": admm_conv,
                            "rho": solver.rho, "rho_updates": solver.rho_updates,
                            "factorizations": solver.factorizations,
                            "seconds": round(solver.seconds, 4), "trace": solver.trace[-5:]})
            found: list[tuple] = []
            first = None
            if opts.polish:
                tp = time.perf_counter()
                # an ADMM answer that the polish cannot settle quickly goes on (in float64,
                # or with tighter tolerances) rather than being pushed through many rounds
                last = attempt + 1 == attempts
                n_rounds = opts.polish_rounds if last else min(opts.polish_rounds, 10)
                with _blas_threads(opts.polish_blas_threads):
                    res = pol.run(WT, tight, n_rounds, target, deadline=tp + max(
                        opts.polish_min_seconds, opts.polish_time_factor * solver.seconds))
                rounds += len(res.log)
                first = res.first
                progress("polish", len(res.log), opts.polish_rounds)
                cand = res.best
                if cand is not None:
                    Wc = assemble(cand.U)
                    if not ok(Wc) and eps is not None and eps > 0 and cand.t > 0:
                        # thresholding or rounding pushed it over: the misfit grows with t
                        _, Wc = _bisect(lambda s, c=cand: assemble(_Polish.at(c, s)), ok,
                                        0.0, cand.t)
                    if Wc is not None and ok(Wc):
                        found.append((Wc, cand.certified, _l1(Wc, N), "polish"))
                        if lam is None and cand.t > 0:
                            lam_out = 1.0 / (2.0 * cand.t)
                history.append({"stage": "polish", "attempt": attempt + 1,
                                "rounds": len(res.log),
                                "certified": bool(cand is not None and cand.certified),
                                "lambda": lam_out, "lp_calls": pol.lp_calls,
                                "seconds": round(time.perf_counter() - tp, 4),
                                "log": res.log[-6:]})
            # ADMM's own answer, pulled onto the constraint when it is marginally outside
            # (towards the least-squares fit on its support and bound set)
            Wadmm = assemble(WT)
            feasible = ok(Wadmm)  # each check is a product with X: kept, not recomputed
            if not feasible and eps is not None and eps > 0:
                # the cheap repair first: refit every column on its own support, then move
                # from ADMM's answer towards the refit just far enough to meet eps
                tr = time.perf_counter()
                rest = np.setdiff1d(np.arange(len(Wa)), idx)
                rest2 = program.constraint_value(Wa[rest], columns=rest) ** 2
                with _blas_threads(None):
                    rep = _refit_mix(Xa, Yl, Vl, actl, WT, program.bias, target, rest2, tight)
                entry = {"stage": "repair", "method": "support refit",
                         "mix": None if rep is None else rep[1]}
                if rep is not None:
                    Wr = assemble(rep[0])
                    if not ok(Wr):  # thresholding moved it: step back with exact checks
                        # (_bisect returns a feasible point or None)
                        _, Wr = _bisect(lambda s, a=rep[0], b=rep[2]: assemble(
                            s * a + (1 - s) * b), ok, 0.0, rep[1])
                    if Wr is not None:
                        Wadmm, feasible = Wr, True
                entry.update(ok=feasible, seconds=round(time.perf_counter() - tr, 4))
                history.append(entry)
            if not feasible and first is None:
                with _blas_threads(opts.polish_blas_threads):
                    first = pol.run(WT, tight, 1, target).first
            if not feasible and first is not None:
                tfit = 0.0 if lam is None else first.t
                Wfit = assemble(_Polish.at(first, tfit))
                _, Wadmm = _bisect(lambda s, a=Wadmm, b=Wfit: _threshold(s * a + (1 - s) * b,
                                                                         N, thr), ok, 0.0, 1.0)
                feasible = Wadmm is not None
            if feasible:
                found.append((Wadmm, False, _l1(Wadmm, N), "admm"))
            for f in found:
                if best is None or (f[1], -f[2]) > (best[1], -best[2]):
                    best = f
            if best is not None and best[1]:
                break
        pol_conv = bool(best is not None and best[1])
        if best is not None:
            Wa = best[0]
            st = SOLVED if best[1] else INACCURATE
            history.append({"stage": "chosen", "source": best[3], "certified": best[1]})
        elif ok(Wa0):
            # last resort: pull ADMM's answer towards the (feasible) original weights
            Wadmm = assemble(solver.result()[0])
            s, Wa = _bisect(lambda s: _threshold(s * Wadmm + (1 - s) * Wa0, N, thr), ok,
                            0.0, 1.0)
            if Wa is None:  # thresholding the original weights already breaks eps
                s, Wa = 0.0, Wa0.copy()
            st = MIXED
            history.append({"stage": "chosen", "source": MIXED,
                            "admm_weight": s})
            for m in live:
                failed.append({"column": m, "status": MIXED,
                               "action": f"mixed with the original weights ({s:.3g} ADMM)"})
        else:
            Wa = assemble(solver.result()[0])
            st = NOT_REACHED
            for m in live:
                failed.append({"column": m, "status": NOT_REACHED,
                               "action": "kept ADMM's answer; the original weights are "
                                         "infeasible too"})
        for m in live:
            status[m] = st
    constraint = program.constraint_value(Wa)
    reached = ok(Wa)
    iterations = solver.iterations if solver is not None else 0
    return ADMMSolution(
        Wa=Wa, lam=lam_out, constraint=constraint, status=status, failed=failed,
        solves=1 if live else 0, retries=retries, iterations=iterations,
        seconds=time.perf_counter() - t0, passes=rounds, dead_columns=dead,
        eps_reached=bool(reached), history=history, admm_converged=admm_conv,
        polish_converged=pol_conv,
    )


class ADMMSolver:
    """The whole-layer ADMM solver (``--solver admm``) behind the solver protocol."""

    name = "admm"
    capabilities = Capabilities(journal=False, devices=("cpu", "cuda"), granularity="layer")

    def __init__(self, device: str = "cpu", dtype: str = "float64") -> None:
        self.device, self.dtype = device, dtype

    def solve(self, program: LayerProgram, settings: SolverSettings,
              progress: Progress = no_progress, journal=None) -> ADMMSolution:  # noqa: ARG002
        return solve_layer(program, settings, progress, device=self.device, dtype=self.dtype)
