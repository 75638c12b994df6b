"""solve_layer: the stages of the whole-layer ADMM solver in order, and ADMMSolver.

ADMM (``iterate.py``) gives a sparse answer; the polish (``polish.py``) tries to certify it.
When the KKT conditions of (4) hold the columns are ``solved``; otherwise the best feasible
candidate (polished or ADMM's own, pulled onto the constraint, ``repair.py``) is kept as
``solved_inaccurate``, and as a last resort the layer is mixed with the original weights until
the constraint holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from nettrim_cli.program import NONE, LayerProgram
from nettrim_cli.solvers.admm.grow import _Growth
from nettrim_cli.solvers.admm.iterate import _ADMM
from nettrim_cli.solvers.admm.polish import _Candidate, _Polish
from nettrim_cli.solvers.admm.refit import refit_support
from nettrim_cli.solvers.admm.repair import (
    _bisect,
    _gram_form,
    _l1,
    _refit_mix,
    _threshold,
)
from nettrim_cli.solvers.admm.settings import (
    INACCURATE,
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


@dataclass
class _Answer:
    """A feasible answer for the layer's weights: whether the polish certified it (the KKT
    conditions of (4) hold), its l1 norm (weights only; at a fixed lambda eq. 11's objective,
    ``_LayerSolve.score``) and where it came from."""

    Wa: np.ndarray
    certified: bool
    l1: float
    source: str  # "polish" or "admm"
    col_certified: np.ndarray | None = None  # at a fixed lambda: per live column

    def beats(self, other: _Answer | None) -> bool:
        """Certified first, then the smaller l1 norm (objective); a tie keeps the earlier
        answer."""
        return other is None or (self.certified, -self.l1) > (other.certified, -other.l1)


class _LayerSolve(_Growth):
    """One layer's solve, stage by stage: ADMM on the live columns, the polish, the repair of
    ADMM's own answer, and the choice among the answers; the state they share and the record
    (history, failed columns, counts) they write."""

    def __init__(self, program: LayerProgram, settings: SolverSettings, opts: ADMMSettings,
                 progress: Progress, l1_weights: np.ndarray | None = None,
                 warm: np.ndarray | None = None) -> None:
        self.program, self.opts, self.progress = program, opts, progress
        self.l1_weights, self.warm = l1_weights, warm
        self.n_in = program.n_in
        self.Xa = program.Xa
        self.Wa0 = program.Wa0
        self.Y = np.asarray(program.Y, dtype=np.float64)
        W0 = program.W0
        self.thr = settings.zero_threshold * float(np.max(np.abs(W0))) if W0.size else 0.0
        self.eps = None if program.epsilon is None else float(program.epsilon)
        self.lam = None if program.lam is None else float(program.lam)
        self.ytop = max(1.0, float(np.abs(self.Y).max())) if self.Y.size else 1.0
        # eps = 0 (program 8) is met to rounding only
        eps = self.eps
        self.eps_ok = (None if eps is None
                       else (eps if eps > 0 else 1e-10 * float(np.linalg.norm(self.Y))))
        self.Wa, self.status, self.live, self.dead = settle_dead_columns(program)
        self.idx = idx = np.asarray(self.live)
        self.Yl, self.Vl = self.Y[:, idx], program.bounds[:, idx]
        self.actl = program.active_set[:, idx]  # Omega of eq. 3, as the program stores it
        self.failed: list[dict] = []
        self.history: list[dict] = []
        self.lam_out: float | None = self.lam
        self.solver: _ADMM | None = None
        self.rounds = self.retries = 0
        self.admm_conv = self.pol_conv = True
        self.best: _Answer | None = None
        self.targets = None  # the refits' refit.Targets on the live columns (staged.py)
        self.gram_source = None  # X_a in the refits' Gram dtype, a refit.GramSource (staged.py)
        self._measured: tuple[np.ndarray, float] | None = None  # the last constraint value

    def constraint(self, W: np.ndarray) -> float:
        """The eq. 3 constraint value of W; the last one is kept for the same array object
        (the answer chosen is checked, then measured for the solution: one product with X on
        a 20,000 x 785 layer takes 0.1 s). Weights are never changed in place once built."""
        if self._measured is None or self._measured[0] is not W:
            self._measured = (W, self.program.constraint_value(W))
        return self._measured[1]

    def ok(self, W: np.ndarray) -> bool:
        """W in C_eps (eq. 3); with a fixed lambda, the inactive inequalities hold."""
        if self.eps_ok is None:
            return self.program.inactive_violation(W) <= 1e-8 * self.ytop
        return self.constraint(W) <= self.eps_ok

    def assemble(self, WT: np.ndarray) -> np.ndarray:
        """The layer's weights from the live columns' W^T, small weights set to exact zeros."""
        out = self.Wa.copy()
        out[self.idx] = WT.T
        return _threshold(out, self.n_in, self.thr)

    def column_scores(self, W: np.ndarray) -> np.ndarray:
        """Per column (all M): the l1 norm of its weights, plus lambda times its active misfit
        at a fixed lambda (eq. 14's objective)."""
        l1 = np.abs(W[:, : self.n_in]).sum(axis=1)
        if self.lam is None:
            return l1
        r = np.where(self.program.active_set, self.Xa @ W.T - self.Y, 0.0)
        return l1 + self.lam * np.einsum("pm,pm->m", r, r)

    def score(self, W: np.ndarray) -> float:
        """What the answers compete on: the l1 norm of the weights (eq. 11's objective at a
        fixed lambda)."""
        return _l1(W, self.n_in) if self.lam is None else float(self.column_scores(W).sum())

    def merge(self, a: _Answer, b: _Answer) -> _Answer:
        """At a fixed lambda the columns are independent: each live column from the answer
        with the lower eq. 14 objective (``a`` on a tie)."""
        sa, sb = self.column_scores(a.Wa)[self.idx], self.column_scores(b.Wa)[self.idx]
        take = sb < sa * (1.0 - 1e-12)
        W = a.Wa.copy()
        W[self.idx[take]] = b.Wa[self.idx[take]]

        def cert(x: _Answer) -> np.ndarray:
            return (x.col_certified if x.col_certified is not None
                    else np.full(len(self.idx), x.certified))
        mask = np.where(take, cert(b), cert(a))
        source = a.source if not take.any() else b.source if take.all() else (
            f"{a.source}+{b.source}")
        return _Answer(W, bool(mask.all()), float(np.where(take, sb, sa).sum()), source, mask)

    def shift_bias(self, W: np.ndarray) -> np.ndarray:
        """At a fixed lambda, ADMM's answer meets the inactive inequalities of eq. 3 only to
        its tolerance: every column's bias lowered by its largest violation meets them exactly
        (each sample's pre-activation drops by the same amount), at a cost in the objective
        of the order of that violation."""
        Z = self.Xa @ W.T
        over = np.where(self.program.active_set, -np.inf, Z - self.program.bounds).max(axis=0)
        out = W.copy()
        out[:, -1] -= np.maximum(over, 0.0)
        return out

    def offer(self, answer: _Answer) -> None:
        if self.lam is not None and self.best is not None:
            answer = self.merge(self.best, answer)
        if answer.beats(self.best):
            self.best = answer

    def start(self, device: str, dtype: str, rows: np.ndarray | None = None) -> None:
        """The live columns' program for ADMM (in Gram form without activation) and the
        polish. ``rows``: ADMM on these samples only, its eps scaled by the share of ||Y||
        they hold (the staged path's support search; its refits use every sample)."""
        program, opts, idx, Xa, eps = self.program, self.opts, self.idx, self.Xa, self.eps
        l1mask = np.ones(Xa.shape[1])
        if self.l1_weights is not None:  # (M, N) per-entry weights: the live columns' (Na, L)
            l1mask = np.zeros((Xa.shape[1], len(idx)))
            l1mask[: self.n_in] = np.asarray(self.l1_weights, dtype=np.float64)[idx].T
        if program.bias:
            l1mask[-1] = 0.0  # the bias is not penalised
        self.gram = _gram_form(Xa, self.Yl, eps) if program.activation == NONE else None
        W0T = (self.Wa0 if self.warm is None else np.asarray(self.warm, np.float64))[idx].T
        if self.gram is not None:
            # no activation: the misfit lives in the span of X, so ADMM runs on an
            # (rank x L) sample block instead of (P x L), exactly the same program; every
            # entry of the block is in the ball, none has a bound
            Rg, Bg, eps_g = self.gram
            self.solver = _ADMM(Rg, Bg, np.zeros_like(Bg), np.ones_like(Bg, dtype=bool), W0T,
                                l1mask, eps_g, self.lam, opts, device, dtype)
            self.history.append({"stage": "gram_form", "rows": int(Rg.shape[0]),
                                 "samples": int(Xa.shape[0])})
        elif rows is not None:
            Yr = self.Yl[rows]
            eps_r = eps * float(np.linalg.norm(Yr) / max(np.linalg.norm(self.Yl), 1e-300))
            self.solver = _ADMM(Xa[rows], Yr, self.Vl[rows], self.actl[rows], W0T, l1mask,
                                eps_r, self.lam, opts, device, dtype)
            self.history.append({"stage": "admm_rows", "rows": int(len(rows)),
                                 "samples": int(Xa.shape[0])})
        else:
            self.solver = _ADMM(Xa, self.Yl, self.Vl, self.actl, W0T, l1mask, eps, self.lam,
                                opts, device, dtype)
        self.target = None if eps is None else eps * (1.0 - 1e-9)
        wscale = float(np.abs(self.Wa0).max()) if self.Wa0.size else 1.0
        self.pol = _Polish(Xa, self.Yl, self.Vl, self.actl, program.bias, self.n_in, eps,
                           self.lam, wscale=wscale or 1.0)
        self.tol = (opts.eps_abs, opts.eps_rel)

    def attempt(self, attempt: int, last: bool) -> bool:
        """One attempt: ADMM (resumed after the first), the polish, ADMM's own answer pulled
        onto the constraint. True when the best answer so far is certified."""
        WT, tight = self.run_admm(attempt)
        first = self.polish(WT, tight, attempt, last) if self.opts.polish else None
        self.offer_admm(WT, tight, first)
        return self.best is not None and self.best.certified

    def run_admm(self, attempt: int) -> tuple[np.ndarray, np.ndarray]:
        """ADMM until its stopping rule; returns (W^T of the live columns, the inactive
        entries it holds at the bound)."""
        opts, solver = self.opts, self.solver
        if attempt:
            self.retries += 1
            # a support-driven stop whose answer could not be repaired continues to the
            # residual stop; a low-precision run continues in float64 at the same
            # tolerances; a float64 run continues with tighter ones
            if opts.support_stop > 0 and not opts.polish:
                solver.opts = dataclasses.replace(opts, support_stop=0.0, rho_growth=1.0)
            elif not solver.promote():
                self.tol = (self.tol[0] / opts.retry_factor, self.tol[1] / opts.retry_factor)
        self.admm_conv = solver.run(opts.max_iter, *self.tol, self.progress)
        WT, tight = solver.result()
        if self.gram is not None:
            tight = np.zeros_like(self.actl)  # every entry is active: no bounds to hold
        self.history.append({"stage": "admm", "attempt": attempt + 1,
                             "iterations": solver.iterations, "converged": self.admm_conv,
                             "rho": solver.rho, "rho_updates": solver.rho_updates,
                             "factorizations": solver.factorizations,
                             "seconds": round(solver.seconds, 4),
                             "trace": solver.trace[-5:]})
        return WT, tight

    def polish(self, WT: np.ndarray, tight: np.ndarray, attempt: int,
               last: bool) -> _Candidate | None:
        """The active-set polish of ADMM's answer; offers its best candidate (stepped back
        towards t = 0 when thresholding pushed it over eps). Returns the first round's
        candidate (ADMM's sets), for pulling ADMM's answer onto the constraint."""
        opts, tp = self.opts, time.perf_counter()
        # an ADMM answer that the polish cannot settle quickly goes on (in float64, or with
        # tighter tolerances) rather than being pushed through many rounds
        n_rounds = opts.polish_rounds if last else min(opts.polish_rounds, 10)
        with _blas_threads(opts.polish_blas_threads):
            res = self.pol.run(WT, tight, n_rounds, self.target, deadline=tp + max(
                opts.polish_min_seconds, opts.polish_time_factor * self.solver.seconds))
        self.rounds += len(res.log)
        self.progress("polish", len(res.log), opts.polish_rounds)
        cand = res.best
        if cand is not None:
            Wc = self.assemble(cand.U)
            if not self.ok(Wc) and self.eps is not None and self.eps > 0 and cand.t > 0:
                # thresholding or rounding pushed it over: the misfit grows with t
                _, Wc = _bisect(lambda s, c=cand: self.assemble(_Polish.at(c, s)), self.ok,
                                0.0, cand.t)
            if Wc is not None and self.ok(Wc):
                self.offer(_Answer(Wc, cand.certified, self.score(Wc), "polish",
                                   cand.col_certified))
                if self.lam is None and cand.t > 0:
                    self.lam_out = 1.0 / (2.0 * cand.t)  # t = 1 / (2 lambda)
        self.history.append({"stage": "polish", "attempt": attempt + 1, "rounds": len(res.log),
                             "certified": bool(cand is not None and cand.certified),
                             "lambda": self.lam_out, "lp_calls": self.pol.lp_calls,
                             "seconds": round(time.perf_counter() - tp, 4),
                             "log": res.log[-6:]})
        return res.first

    def offer_admm(self, WT: np.ndarray, tight: np.ndarray, first: _Candidate | None) -> None:
        """ADMM's own answer, pulled onto the constraint when it is marginally outside
        (towards the least-squares fit on its support and bound set): by the support refit,
        else towards the polish's first fit."""
        Wadmm = self.assemble(WT)
        feasible = self.ok(Wadmm)  # each check is a product with X: kept, not recomputed
        if not feasible and self.lam is not None and self.program.bias:
            Wadmm = self.shift_bias(Wadmm)
            feasible = self.ok(Wadmm)
        if not feasible and self.eps is not None and self.eps > 0:
            Wadmm, feasible = self.repair(WT, tight, Wadmm)
        if not feasible and first is None:
            with _blas_threads(self.opts.polish_blas_threads):
                first = self.pol.run(WT, tight, 1, self.target).first
        if not feasible and first is not None:
            tfit = 0.0 if self.lam is None else first.t
            Wfit = self.assemble(_Polish.at(first, tfit))
            _, Wadmm = _bisect(lambda s, a=Wadmm, b=Wfit: _threshold(
                s * a + (1 - s) * b, self.n_in, self.thr), self.ok, 0.0, 1.0)
            feasible = Wadmm is not None
        if feasible:
            self.offer(_Answer(Wadmm, False, self.score(Wadmm), "admm"))

    def repair(self, WT: np.ndarray, tight: np.ndarray,
               Wadmm: np.ndarray) -> tuple[np.ndarray, bool]:
        """The cheap repair first: refit every column on its own support (a few CG steps),
        then move from ADMM's answer towards the refit just far enough to meet eps; when that
        misses, the exact refit on the support (``refit.refit_support``; on NN3-60K after the
        default fine-tune the CG steps missed eps on three layers whose exact refit met it,
        and the support grown for them held 2-4x the weights). Returns (weights,
        feasible): the repaired weights, or ``Wadmm`` unchanged when the repair fails."""
        tr = time.perf_counter()
        rest = np.setdiff1d(np.arange(len(self.Wa)), self.idx)
        rest2 = self.program.constraint_value(self.Wa[rest], columns=rest) ** 2
        with _blas_threads(None):
            rep = _refit_mix(self.Xa, self.Yl, self.Vl, self.actl, WT, self.program.bias,
                             self.target, rest2, tight)
        entry = {"stage": "repair", "method": "support refit",
                 "mix": None if rep is None else rep[1]}
        feasible = False
        if rep is not None:
            Wr = self.assemble(rep[0])
            if not self.ok(Wr):  # thresholding moved it: step back with exact checks
                # (_bisect returns a feasible point or None)
                _, Wr = _bisect(lambda s, a=rep[0], b=rep[2]: self.assemble(
                    s * a + (1 - s) * b), self.ok, 0.0, rep[1])
            if Wr is not None:
                Wadmm, feasible = Wr, True
        if not feasible:  # those were a few CG steps: the exact refit may still meet eps
            with _blas_threads(None):
                WF, f = refit_support(self.Xa, self.Yl, self.Vl, self.actl, WT,
                                      self.program.bias, rounds=8, source=self.gram_source,
                                      targets=self.targets)  # the staged refits' (if any)
            Wr = self.assemble(WF)
            if float(f.sum()) + rest2 <= self.target ** 2 and self.ok(Wr):
                Wadmm, feasible = Wr, True
                entry["method"] = "exact support refit"
        entry.update(ok=feasible, seconds=round(time.perf_counter() - tr, 4))
        self.history.append(entry)
        return Wadmm, feasible

    def choose(self) -> None:
        """The answer for the live columns and their status: the best answer (``solved``
        when certified, else ``solved_inaccurate``); without one, ADMM's answer mixed with
        the original weights when those are feasible; else ADMM's answer as it is."""
        best = self.best
        self.pol_conv = bool(best is not None and best.certified)
        if best is not None:
            self.Wa = best.Wa
            st = SOLVED if best.certified else INACCURATE
            self.history.append({"stage": "chosen", "source": best.source,
                                 "certified": best.certified})
            if best.col_certified is not None:  # a fixed lambda: column by column
                for m, ok in zip(self.live, best.col_certified, strict=True):
                    self.status[m] = SOLVED if ok else INACCURATE
                return
        elif self.ok(self.Wa0):
            st = self.grow_support() or self.mix_with_original()
        else:
            self.Wa = self.assemble(self.solver.result()[0])
            st = NOT_REACHED
            for m in self.live:
                self.failed.append({"column": m, "status": NOT_REACHED,
                                    "action": "kept ADMM's answer; the original weights are "
                                              "infeasible too"})
        for m in self.live:
            self.status[m] = st

    def solution(self, t0: float) -> ADMMSolution:
        constraint = self.constraint(self.Wa)
        reached = self.ok(self.Wa)
        iterations = self.solver.iterations if self.solver is not None else 0
        return ADMMSolution(
            Wa=self.Wa, lam=self.lam_out, constraint=constraint, status=self.status,
            failed=self.failed, solves=1 if self.live else 0, retries=self.retries,
            iterations=iterations, seconds=time.perf_counter() - t0, passes=self.rounds,
            dead_columns=self.dead, eps_reached=bool(reached), history=self.history,
            admm_converged=self.admm_conv, polish_converged=self.pol_conv,
        )


def solve_layer(program: LayerProgram, settings: SolverSettings,
                progress: Progress = no_progress, device: str = "cpu", dtype: str = "float64",
                admm_settings: ADMMSettings | None = None, l1_weights: np.ndarray | None = None,
                warm: np.ndarray | None = None) -> ADMMSolution:
    """Solve program (4)/(6) -- or eq. 11 for every column at a fixed ``program.lam`` -- for the
    whole layer with ADMM and an active-set polish. ``admm_settings`` (or ``settings.admm``
    when the settings carry one) tunes ADMM; ``device``/``dtype`` are torch's for ADMM (the
    polish runs in float64 numpy). Dead neurons are settled first (``dead_neuron``); when the
    polish cannot certify the answer, ADMM resumes once (``ADMMSettings.retry``).

    ``l1_weights`` (M, N), positive: the objective of (4) becomes sum_mj c_mj |W_mj| (the
    reweighted l1 of Candes, Wakin and Boyd 2008); the polish, which certifies the unweighted
    program, is then off. ``warm`` (M, N + bias): ADMM starts there instead of at W0 (W0
    stays the feasible fallback)."""
    t0 = time.perf_counter()
    opts = admm_settings or getattr(settings, "admm", None) or ADMMSettings()
    if l1_weights is not None and opts.polish:
        opts = dataclasses.replace(opts, polish=False)
    run = _LayerSolve(program, settings, opts, progress, l1_weights, warm)
    if run.live:
        run.start(device, dtype)
        # a retry when the polish cannot certify, or when ADMM stopped on its support and
        # no feasible answer came of it
        attempts = 1 + int(opts.retry and (opts.polish or opts.support_stop > 0))
        for attempt in range(attempts):
            if run.attempt(attempt, last=attempt + 1 == attempts):
                break
            if not opts.polish and run.best is not None:
                break
        run.choose()
    return run.solution(t0)


class ADMMSolver:
    """The whole-layer ADMM solver (``--solver admm``) behind the solver protocol."""

    name = "admm"
    capabilities = Capabilities(journal=False, devices=("cpu", "cuda"), granularity="layer")

    def __init__(self, device: str = "cpu", dtype: str = "float64") -> None:
        self.device, self.dtype = device, dtype

    def solve(self, program: LayerProgram, settings: SolverSettings,
              progress: Progress = no_progress, journal=None) -> ADMMSolution:  # noqa: ARG002
        return solve_layer(program, settings, progress, device=self.device, dtype=self.dtype)
