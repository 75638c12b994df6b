"""Choosing lambda so that the layer's constraint ||Yhat - Y||_F <= eps holds (Proposition 1),
with the columns solved by an executor (``nettrim_cli.execution``: local processes or Ray).

The squared constraint value E(lambda)^2 = sum_m e_m(lambda) is non-increasing in lambda and
the smallest lambda that meets eps is the sparsest. With scope ``layer`` every column shares one
lambda: by the KKT conditions of (4) (one multiplier for its single quadratic constraint) that
is the exact solution of program (4)/(6). With scope ``column`` every column is a group of its
own with the budget eps_m = eps ||y_m,Omega|| / ||Y_Omega||_F.

Each group's lambda is found by a bracketing search on log lambda: decade steps up from the
lambda at which the weights vanish until eps is met, then regula falsi (Illinois) on
log E - log eps until E is within [(1 - rtol) eps, eps]. Between evaluations only OSQP's q
changes (``update(q=...)``, warm start); the chosen lambda is solved once more with polishing,
which gives exact zeros, and checked.

The layer's data reaches the columns as one object, ``LayerContext``, made once per layer and
handed to the executor's evaluator (a forked worker inherits it, a Ray actor reads it from one
``ray.put``). All of the layer's arithmetic -- here and in every column solve, wherever it
runs -- uses one BLAS thread (``OSQP_THREADS``): a product split over more threads sums in
another order, and the answer would depend on where it was computed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from nettrim_cli.execution import ColumnExecutor, Evaluator, make_executor
from nettrim_cli.execution.threads import default_workers, fixed_threads
from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import LayerSolution, Progress, SolverSettings, no_progress
from nettrim_cli.solvers.osqp import ColumnQP, ScaledLayer, is_solved, settle_dead_columns

# BLAS / torch threads of every OSQP computation, on the driver and in every worker or actor
OSQP_THREADS = 1


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


@dataclass
class ColumnOutcome:
    """One column's answer at one lambda: what an evaluator gives back and a journal records."""

    wa: np.ndarray
    err: float  # squared constraint value of the column
    status: str
    iterations: int
    seconds: float
    retried: bool
    zero: bool = False  # every weight (not the bias) is zero
    state: tuple | None = None  # (last solution, working set) when a journal records it


class _Shape:
    """Stands in for the program's X in a remote worker: only ``.shape`` is read there."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)


@dataclass
class LayerContext:
    """What solving a column needs of its layer, made once per layer by ``solve_layer`` and
    handed to the executor (``nettrim_cli.execution.ColumnContext``).

    Attributes:
        program: the layer program.
        layer: its ScaledLayer (the scaled design and its Gram matrix), shared by the columns.
        settings: the solver settings.
        thr: weights with |w| <= thr are written as exact zeros.
        exact: solve program (8) (eps = 0) instead of eq. 11.
        persist: keep every column's OSQP problem between evaluations (see ``_persist``).
        record: give back each column's (last solution, working set) for the journal.
        states: resumed columns' (last solution, working set), from the journal.
        threads: BLAS / torch threads of every column solve, wherever it runs.
    """

    program: LayerProgram
    layer: ScaledLayer
    settings: SolverSettings
    thr: float
    exact: bool
    persist: bool
    record: bool = False
    states: dict = field(default_factory=dict)
    threads: int = OSQP_THREADS

    def work(self, m: int) -> ColumnWork:
        return ColumnWork(self, m)

    def unsolved(self, m: int, status: str) -> ColumnOutcome:
        """A column given up with ``status`` keeps, and is measured with, its original
        weights (as an unsolved column in ``ColumnWork``)."""
        wa = self.program.Wa0[m].copy()
        return ColumnOutcome(wa=wa, err=self.layer.column_error(self.program, m, wa),
                             status=status, iterations=0, seconds=0.0, retried=True,
                             zero=not wa[: self.program.n_in].any())

    def without_input(self) -> LayerContext:
        """The context without the raw X: the columns and their errors use the scaled copy in
        ``layer``; X is replaced by its shape (what a Ray actor is sent)."""
        program = copy.copy(self.program)
        program.X = _Shape(program.X.shape)
        program._Xa = None
        return dataclasses.replace(self, program=program)


class ColumnWork:
    """One column's OSQP problem across evaluations: kept alive when the layer's problems fit
    the memory budget, otherwise rebuilt each time from the last solution and working set."""

    def __init__(self, context: LayerContext, m: int) -> None:
        self.context = context
        self.m = m
        self.qp: ColumnQP | None = None
        # a resumed run starts from the state its records left (see nettrim_cli.workdir)
        self.last, self.working = context.states.get(m, (None, None))

    def solve(self, lam: float, polish: bool) -> ColumnOutcome:
        c = self.context
        program = c.program
        qp = self.qp
        if qp is None:
            qp = ColumnQP(program, self.m, c.settings.osqp, layer=c.layer, exact=c.exact,
                          working=self.working)
            qp.warm(self.last if self.last is not None else program.Wa0[self.m])
        r = qp.solve(lam, polish=polish)
        self.working = qp.working
        if c.persist:
            self.qp = qp
        if is_solved(r.status) and np.isfinite(r.wa).all():
            self.last = r.wa
            wa = threshold(r.wa, program.n_in, c.thr)
        else:
            # never write a wrong column: an unsolved one keeps (and is measured with) its
            # original weights, which is what would be written for it
            wa = program.Wa0[self.m].copy()
        err = c.layer.column_error(program, self.m, wa)
        return ColumnOutcome(wa=wa, err=err, status=r.status, iterations=r.iterations,
                             seconds=r.seconds, retried=r.retried,
                             zero=not wa[: program.n_in].any(),
                             state=(self.last, self.working) if c.record else None)


@dataclass
class _Group:
    """One lambda search: all columns (scope layer) or one (scope column)."""

    columns: list[int]
    target: float
    floor: float
    rtol: float = 0.02
    lo: float | None = None
    lo_err: float = math.inf
    hi: float | None = None
    hi_err: float = math.inf
    side: int = 0  # Illinois: which end was kept last time
    evals: int = 0
    done: bool = False
    trace: list[tuple[float, float]] = field(default_factory=list)

    def next_lambda(self) -> float:
        if self.evals == 0:
            return self.floor
        if self.hi is None:
            # expanding: extrapolate log E linearly in log lambda from the last two points,
            # stepping by a factor between 3 and 1000 (10 when there is one point)
            if len(self.trace) >= 2:
                (l1, e1), (l2, e2) = self.trace[-2], self.trace[-1]
                if e1 > e2 > 0 and l2 > l1:
                    slope = (math.log(e2) - math.log(e1)) / (math.log(l2) - math.log(l1))
                    step = (math.log(self.target * (1 - 0.25 * self.rtol)) - math.log(e2))
                    raw = step / slope if slope < -1e-12 else math.inf
                    log_factor = min(max(raw, math.log(3.0)), math.log(1000.0))
                    return self.lo * math.exp(log_factor)
            return self.lo * 10.0
        if self.lo is None:
            return self.hi / 10.0
        tl, th = math.log(self.lo), math.log(self.hi)
        fl = math.log(self.lo_err) - math.log(self.target) if self.lo_err > 0 else 1.0
        fh = math.log(max(self.hi_err, 1e-300)) - math.log(self.target)
        if math.isfinite(fl) and math.isfinite(fh) and fl > fh:
            if self.side == 1:
                fl *= 0.5
            elif self.side == -1:
                fh *= 0.5
            t = tl + (th - tl) * fl / (fl - fh)
            t = min(max(t, tl + 0.05 * (th - tl)), th - 0.05 * (th - tl))
        else:
            t = 0.5 * (tl + th)
        return math.exp(t)

    def update(self, lam: float, err: float, all_zero: bool, rtol: float) -> None:
        self.evals += 1
        self.trace.append((lam, err))
        if err <= self.target:
            prev = self.hi_err
            self.hi, self.hi_err = lam, err
            self.side = 1 if self.side != 1 else self.side
            if self.evals == 1 and all_zero:
                self.done = True  # zero weights meet eps: nothing sparser exists
            elif self.evals == 1:
                self.lo = None  # met at the start: look below it
            if err >= (1.0 - rtol) * self.target:
                self.done = True
            if self.lo is None and self.evals > 1 and (
                    abs(prev - err) <= 1e-3 * max(prev, 1e-300)
                    or lam < self.floor * 1e-4):
                # going down, the constraint value no longer changes: below the floor the
                # solution is settled (weights zero or fixed by the inequalities)
                self.done = True
        else:
            self.lo, self.lo_err = lam, err
            self.side = -1
        if self.lo is not None and self.hi is not None and self.hi / self.lo < 1.0 + 1e-4:
            self.done = True


def _persist(program: LayerProgram, n_cols: int, budget_mb: float) -> bool:
    """Keep every column's OSQP problem alive if their estimated size fits the budget."""
    n = 2 * program.n_in + 1
    per_col = 8.0 * (3 * n * n + 4 * n * 64)  # dense KKT block and factor, with some slack
    return per_col * n_cols <= budget_mb * 1e6


def _layer_context(program: LayerProgram, settings: SolverSettings, n_live: int,
                   journal) -> tuple[LayerContext, object]:
    """The layer's context, and the journal where it is kept: only where the columns' problems
    are rebuilt for every evaluation is a resumed evaluation bit-identical to an uninterrupted
    one; elsewhere the journal's records are cleared and the layer starts over."""
    thr = settings.zero_threshold * float(np.max(np.abs(program.W0))) if program.W0.size else 0.0
    persist = _persist(program, n_live, settings.memory_budget_mb)
    if journal is not None:
        if persist:
            journal.clear()
            journal = None
        else:
            journal.load()
    context = LayerContext(
        program=program, layer=ScaledLayer(program), settings=settings, thr=thr,
        exact=program.epsilon is not None and program.epsilon == 0.0, persist=persist,
        record=journal is not None, states=dict(journal.states) if journal is not None else {})
    return context, journal


@contextmanager
def _evaluator(executor: ColumnExecutor | None, settings: SolverSettings,
               context: LayerContext, live: list[int],
               workers: int | None) -> Iterator[Evaluator | None]:
    """The layer's evaluator (None without live columns) from the executor given or, without
    one, from an executor made from the settings for this layer; closed after the layer."""
    if not live:
        yield None
        return
    own = executor is None
    if own:
        executor = make_executor(settings)
    try:
        evaluator = executor.evaluator(context, live, workers)
        try:
            yield evaluator
        finally:
            evaluator.close()
    finally:
        if own:
            executor.close()


class _Evaluations:
    """The layer's column evaluations: answered from the journal where it holds them, the rest
    by the evaluator (and recorded in the journal as they finish); the solves counted."""

    def __init__(self, evaluator: Evaluator | None, journal, progress: Progress) -> None:
        self.evaluator, self.journal, self.progress = evaluator, journal, progress
        self.solves = self.retries = self.iterations = 0

    def __call__(self, requests: dict[int, float], polish: bool, stage: str,
                 key: str) -> dict[int, ColumnOutcome]:
        res = self._recorded(requests, key)
        todo = {m: lam for m, lam in requests.items() if m not in res}
        if todo:
            extra = {}
            if self.journal is not None:
                journal = self.journal
                extra["on_result"] = lambda m, r: journal.record(key, m, todo[m], r,
                                                                 final=polish)
            res.update(self.evaluator.evaluate(
                todo, polish, progress=lambda d, t: self.progress(stage, d, t), **extra))
        for r in res.values():
            self.solves += 1
            self.retries += int(r.retried)
            self.iterations += r.iterations
        return res

    def _recorded(self, requests: dict[int, float], key: str) -> dict[int, ColumnOutcome]:
        """The evaluations the journal already holds (a resumed run)."""
        res: dict[int, ColumnOutcome] = {}
        for m, lam in requests.items():
            e = self.journal.lookup(key, m, lam) if self.journal is not None else None
            if e is not None:
                res[m] = ColumnOutcome(wa=e.wa, err=e.err, status=e.status,
                                       iterations=e.iterations, seconds=e.seconds,
                                       retried=e.retried, zero=e.zero)
        return res


def solve_layer(program: LayerProgram, settings: SolverSettings,
                progress: Progress = no_progress, workers: int | None = None,
                journal=None, executor: ColumnExecutor | None = None) -> LayerSolution:
    """Solve the layer program column by column with OSQP; lambda fixed or chosen from eps.

    Args:
        program: the layer program (X, Y, V, eps or lambda).
        settings: OSQP, search and zero-threshold settings.
        progress: progress(stage, done, total), called as columns finish.
        workers: workers (default ``settings.workers``, 0 meaning all cores or Ray CPUs).
        journal: a ``nettrim_cli.workdir.ColumnJournal``: record every column evaluation
            durably and answer the ones it already holds (resume). Used only where the columns'
            problems are rebuilt for every evaluation (see ``_persist``), since only there a
            resumed evaluation is bit-identical to an uninterrupted one; elsewhere its records
            are cleared and the layer starts over.
        executor: where the columns are solved (``nettrim_cli.execution``); None: one made
            from ``settings.executor`` for this layer and closed after it.
    Returns:
        the pruned weights with exact zeros, the lambda(s), and the solver's record.
    """
    t0 = time.perf_counter()
    asked = workers if workers is not None else settings.workers
    with fixed_threads(OSQP_THREADS):
        Wa, status, live, dead = settle_dead_columns(program)
        context, journal = _layer_context(program, settings, len(live), journal)
        with _evaluator(executor, settings, context, live, asked) as evaluator:
            evals = _Evaluations(evaluator, journal, progress)
            lam, reached, history = _solve_columns(context, live, evals, Wa, status)
        layer = context.layer
        constraint = math.sqrt(sum(layer.column_error(program, m, Wa[m])
                                   for m in range(program.n_out)))
    failed = [{"column": m, "status": status[m], "action": "kept original weights"}
              for m in live if not is_solved(status[m])]
    return LayerSolution(
        Wa=Wa, lam=lam, constraint=constraint, status=status,
        failed=failed, solves=evals.solves,
        retries=evals.retries + (evaluator.retries if evaluator is not None else 0),
        iterations=evals.iterations, seconds=time.perf_counter() - t0,
        passes=max((len(h.get("trace", ())) or h.get("evaluations", 1) for h in history),
                   default=1), dead_columns=dead,
        eps_reached=reached, history=history,
        workers=evaluator.n_workers if evaluator is not None else asked or default_workers())


def _solve_columns(context: LayerContext, live: list[int], evals: _Evaluations,
                   Wa: np.ndarray, status: list[str]) -> tuple[float | list | None, bool,
                                                               list[dict]]:
    """The live columns at the program's lambda, or with lambda searched for eps: writes
    their weights and statuses; gives (lambda, eps reached, search history)."""
    program = context.program
    if not live:
        return None, True, []
    if program.lam is None and not context.exact:
        return _search(context, live, evals, Wa, status)
    lam = program.lam if program.lam is not None else math.inf
    res = evals({m: lam for m in live}, True, "solve", "solve")
    for m in live:
        Wa[m], status[m] = res[m].wa, res[m].status
    return (None if context.exact else float(program.lam)), True, []


def _groups(context: LayerContext, live: list[int]) -> list[_Group]:
    """The lambda searches: one for the layer, or one per column with its share of eps."""
    program, s = context.program, context.settings.search
    eps = float(program.epsilon)
    floors = {m: lambda_floor(program, context.layer, m) for m in live}
    finite = [f for f in floors.values() if math.isfinite(f)]
    base = min(finite) if finite else 1.0
    if s.scope == "layer":
        return [_Group(columns=list(live), target=eps, floor=base, rtol=s.rtol)]
    if s.scope != "column":
        raise ValueError(f"unknown lambda scope {s.scope!r}")
    # eps_m = eps ||y_m,Omega|| / ||Y_Omega||_F, Omega the program's active set (eq. 3)
    Y = np.asarray(program.Y, dtype=np.float64)
    norms = np.sqrt((np.where(program.active_set, Y, 0.0) ** 2).sum(axis=0))
    total = float(np.linalg.norm(norms)) or 1.0
    return [_Group(columns=[m], target=eps * norms[m] / total, rtol=s.rtol,
                   floor=floors[m] if math.isfinite(floors[m]) else base) for m in live]


def _search(context: LayerContext, live: list[int], evals: _Evaluations, Wa: np.ndarray,
            status: list[str]) -> tuple[float | list, bool, list[dict]]:
    s = context.settings.search
    groups = _groups(context, live)
    for step in range(s.max_evals):
        todo = [g for g in groups if not g.done]
        if not todo:
            break
        lams = {id(g): g.next_lambda() for g in todo}
        res = evals({m: lams[id(g)] for g in todo for m in g.columns}, False,
                    f"lambda step {step + 1}", f"s{step}")
        for g in todo:
            err = math.sqrt(sum(res[m].err for m in g.columns))
            zero = all(res[m].zero for m in g.columns)
            g.update(lams[id(g)], err, zero, s.rtol)
    reached = _polish(context, groups, evals, Wa, status)
    if s.scope == "layer":
        history = [{"columns": len(g.columns), "target": g.target, "lambda": g.hi,
                    "trace": [[lam, err] for lam, err in g.trace]} for g in groups]
        return groups[0].hi, reached, history
    history = [{"column": g.columns[0], "lambda": g.hi, "evaluations": g.evals} for g in groups]
    return [g.hi for g in groups], reached, history


def _polish(context: LayerContext, groups: list[_Group], evals: _Evaluations, Wa: np.ndarray,
            status: list[str]) -> bool:
    """The chosen lambdas, solved once more with polishing, and checked against eps; a group
    whose polished answer misses eps (numerically) moves its lambda up a little and retries.
    Writes the columns' weights and statuses; True when every group meets its eps."""
    rtol = context.settings.search.rtol
    pending = list(groups)
    for attempt in range(4):
        chosen = {}
        for g in pending:
            if g.hi is None:  # eps never met inside the search: go past the last lambda tried
                g.hi = (g.lo or g.floor) * 10.0
            elif attempt:
                g.hi *= 1.0 + 4 * rtol
            for m in g.columns:
                chosen[m] = g.hi
        res = evals(chosen, True, "polish", f"p{attempt}")
        still = []
        for g in pending:
            for m in g.columns:
                Wa[m], status[m] = res[m].wa, res[m].status
            if math.sqrt(sum(res[m].err for m in g.columns)) > g.target:
                still.append(g)
        pending = still
        if not pending:
            break
    for g in pending:
        for m in g.columns:
            Wa[m] = context.program.Wa0[m].copy()
            status[m] = "epsilon_not_reached"
    return not pending
