"""Choosing lambda so that the layer's constraint ||Yhat - Y||_F <= eps holds (Proposition 1),
with the columns solved in parallel worker processes.

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

Workers: the columns are dealt round-robin to ``workers`` forked processes that inherit the
layer's data (copy-on-write, not copied per task) and keep their columns' OSQP problems between
evaluations. OSQP's solve holds the GIL, so threads would not run in parallel (measured: two
threads took 1.8x longer than one). BLAS is limited to one thread inside column solves so that
the results are bit-identical whatever the number of workers.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import LayerSolution, Progress, SolverSettings, no_progress
from nettrim_cli.solvers.osqp import ColumnQP, ScaledLayer, is_solved, settle_dead_columns

# The layer being solved, set before worker processes are forked so that they share it.
_SHARED: dict = {}


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
    wa: np.ndarray
    err: float  # squared constraint value of the column
    status: str
    iterations: int
    seconds: float
    retried: bool
    zero: bool = False  # every weight (not the bias) is zero
    state: tuple | None = None  # (last solution, working set) when a journal records it


class ColumnWork:
    """One column's OSQP problem across evaluations: kept alive when the layer's problems fit
    the memory budget, otherwise rebuilt each time from the last solution and working set."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.qp: ColumnQP | None = None
        # a resumed run starts from the state its records left (see nettrim_cli.workdir)
        self.last, self.working = _SHARED.get("states", {}).get(m, (None, None))

    def solve(self, lam: float, polish: bool) -> ColumnOutcome:
        sh = _SHARED
        program: LayerProgram = sh["program"]
        qp = self.qp
        if qp is None:
            qp = ColumnQP(program, self.m, sh["settings"].osqp, layer=sh["layer"],
                          exact=sh["exact"], working=self.working)
            qp.warm(self.last if self.last is not None else program.Wa0[self.m])
        r = qp.solve(lam, polish=polish)
        self.working = qp.working
        if sh["persist"]:
            self.qp = qp
        if is_solved(r.status) and np.isfinite(r.wa).all():
            self.last = r.wa
            wa = threshold(r.wa, program.n_in, sh["thr"])
            err = sh["layer"].column_error(program, self.m, wa)
        else:
            # never write a wrong column: an unsolved one keeps (and is measured with) its
            # original weights, which is what would be written for it
            wa = program.Wa0[self.m].copy()
            err = sh["layer"].column_error(program, self.m, wa)
        return ColumnOutcome(wa=wa, err=err, status=r.status, iterations=r.iterations,
                             seconds=r.seconds, retried=r.retried,
                             zero=not wa[: program.n_in].any(),
                             state=(self.last, self.working) if sh.get("record") else None)


class LocalEvaluator:
    """Solves the requested columns in this process."""

    def __init__(self, columns: list[int]) -> None:
        self.works = {m: ColumnWork(m) for m in columns}

    def evaluate(self, requests: dict[int, float], polish: bool,
                 progress=None, on_result=None) -> dict[int, ColumnOutcome]:
        out = {}
        with threadpool_limits(1):
            for i, (m, lam) in enumerate(sorted(requests.items())):
                out[m] = self.works[m].solve(lam, polish)
                if on_result is not None:
                    on_result(m, out[m])
                if progress is not None:
                    progress(i + 1, len(requests))
        return out

    def close(self) -> None:
        self.works.clear()


def _worker(conn, columns: list[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    local = LocalEvaluator(columns)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        _, requests, polish = msg
        try:
            for m, lam in sorted(requests.items()):
                conn.send(("done", m, local.evaluate({m: lam}, polish)[m]))
            conn.send(("end",))
        except Exception:  # noqa: BLE001 - report, the parent decides
            conn.send(("error", traceback.format_exc()))


class ProcessEvaluator:
    """Columns dealt round-robin to forked worker processes that keep their OSQP problems.

    A worker that dies or raises is replaced by solving its outstanding columns here, in this
    process (they lose their warm start, nothing else)."""

    def __init__(self, columns: list[int], workers: int) -> None:
        ctx = mp.get_context("fork")
        self.owner: dict[int, int] = {}
        self.procs, self.conns = [], []
        self.fallback = LocalEvaluator([])
        self.failed: set[int] = set()
        for w in range(workers):
            mine = columns[w::workers]
            for m in mine:
                self.owner[m] = w
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, mine), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        self.retries = 0

    def evaluate(self, requests: dict[int, float], polish: bool,
                 progress=None, on_result=None) -> dict[int, ColumnOutcome]:
        per: dict[int, dict[int, float]] = {}
        for m, lam in requests.items():
            per.setdefault(self.owner[m], {})[m] = lam
        out: dict[int, ColumnOutcome] = {}
        pending = set()
        for w, req in per.items():
            if w in self.failed:
                continue
            try:
                self.conns[w].send(("solve", req, polish))
                pending.add(w)
            except (BrokenPipeError, OSError):
                self._lose(w)
        while pending:
            ready = mp.connection.wait([self.conns[w] for w in pending], timeout=1.0)
            for w in list(pending):
                conn = self.conns[w]
                if conn not in ready:
                    if not self.procs[w].is_alive():
                        pending.discard(w)
                        self._lose(w)
                    continue
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    pending.discard(w)
                    self._lose(w)
                    continue
                if msg[0] == "done":
                    out[msg[1]] = msg[2]
                    if on_result is not None:
                        on_result(msg[1], msg[2])
                    if progress is not None:
                        progress(len(out), len(requests))
                elif msg[0] == "end":
                    pending.discard(w)
                else:
                    pending.discard(w)
                    self._lose(w)
        missing = {m: lam for m, lam in requests.items() if m not in out}
        if missing:
            self.retries += len(missing)
            for m in missing:
                self.fallback.works.setdefault(m, ColumnWork(m))
            out.update(self.fallback.evaluate(missing, polish, on_result=on_result))
        return out

    def _lose(self, w: int) -> None:
        self.failed.add(w)
        if self.procs[w].is_alive():
            self.procs[w].kill()

    def close(self) -> None:
        for w, conn in enumerate(self.conns):
            if w not in self.failed:
                try:
                    conn.send(("stop",))
                except (BrokenPipeError, OSError):
                    pass
        for p in self.procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()


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


def _evaluator(columns: list[int], workers: int, settings: SolverSettings | None = None,
               requested: int | None = None):
    if settings is not None and settings.executor == "ray":
        from nettrim_cli.solvers.ray_exec import RayEvaluator

        # --workers N: N actors; unset or 0: one per CPU of the Ray cluster
        asked = requested if requested is not None else settings.workers
        return RayEvaluator(columns, asked or None, settings.address)
    if workers > 1 and len(columns) >= 2 * workers:
        return ProcessEvaluator(columns, workers)
    return LocalEvaluator(columns)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _persist(program: LayerProgram, n_cols: int, budget_mb: float) -> bool:
    """Keep every column's OSQP problem alive if their estimated size fits the budget."""
    n = 2 * program.n_in + 1
    per_col = 8.0 * (3 * n * n + 4 * n * 64)  # dense KKT block and factor, with some slack
    return per_col * n_cols <= budget_mb * 1e6


def solve_layer(program: LayerProgram, settings: SolverSettings,
                progress: Progress = no_progress, workers: int | None = None,
                journal=None) -> LayerSolution:
    """Solve the layer program column by column with OSQP; lambda fixed or chosen from eps.

    Args:
        program: the layer program (X, Y, V, eps or lambda).
        settings: OSQP, search and zero-threshold settings.
        progress: progress(stage, done, total), called as columns finish.
        workers: worker processes (default ``settings.workers``, 0 meaning all cores).
        journal: a ``nettrim_cli.workdir.ColumnJournal``: record every column evaluation
            durably and answer the ones it already holds (resume). Used only where the columns'
            problems are rebuilt for every evaluation (see ``_persist``), since only there a
            resumed evaluation is bit-identical to an uninterrupted one; elsewhere its records
            are cleared and the layer starts over.
    Returns:
        the pruned weights with exact zeros, the lambda(s), and the solver's record.
    """
    t0 = time.perf_counter()
    M = program.n_out
    n_workers = workers if workers is not None else settings.workers
    n_workers = n_workers or default_workers()
    thr = settings.zero_threshold * float(np.max(np.abs(program.W0))) if program.W0.size else 0.0
    layer = ScaledLayer(program)
    Wa, status, live, dead = settle_dead_columns(program)
    failed: list[dict] = []
    exact = program.epsilon is not None and program.epsilon == 0.0
    persist = _persist(program, len(live), settings.memory_budget_mb)
    if journal is not None:
        if persist:
            journal.clear()
            journal = None
        else:
            journal.load()
    _SHARED.clear()
    _SHARED.update(program=program, layer=layer, settings=settings, thr=thr, exact=exact,
                   persist=persist, record=journal is not None,
                   states=dict(journal.states) if journal is not None else {})
    stats = {"solves": 0, "retries": 0, "iterations": 0}
    history: list[dict] = []
    lam_out: float | list | None = None
    reached = True
    evaluator = _evaluator(live, n_workers, settings, workers) if live else None
    try:
        def run(requests: dict[int, float], polish: bool, stage: str, key: str):
            res: dict[int, ColumnOutcome] = {}
            todo = requests
            if journal is not None:
                for m, lam in requests.items():
                    e = journal.lookup(key, m, lam)
                    if e is not None:
                        res[m] = ColumnOutcome(
                            wa=e.wa, err=e.err, status=e.status, iterations=e.iterations,
                            seconds=e.seconds, retried=e.retried, zero=e.zero)
                todo = {m: lam for m, lam in requests.items() if m not in res}

            def on_result(m: int, r: ColumnOutcome) -> None:
                journal.record(key, m, todo[m], r, final=polish)

            if todo:
                extra = {"on_result": on_result} if journal is not None else {}
                res.update(evaluator.evaluate(
                    todo, polish, progress=lambda d, t: progress(stage, d, t), **extra))
            for r in res.values():
                stats["solves"] += 1
                stats["retries"] += int(r.retried)
                stats["iterations"] += r.iterations
            return res

        if not live:
            pass
        elif program.lam is not None or exact:
            lam = program.lam if program.lam is not None else math.inf
            res = run({m: lam for m in live}, True, "solve", "solve")
            for m in live:
                Wa[m], status[m] = res[m].wa, res[m].status
            lam_out = None if exact else float(program.lam)
        else:
            lam_out, reached = _search(program, settings, layer, live, run, Wa, status,
                                       history)
    finally:
        if evaluator is not None:
            stats["retries"] += getattr(evaluator, "retries", 0)
            evaluator.close()
        _SHARED.clear()
    for m in live:
        if not is_solved(status[m]):
            failed.append({"column": m, "status": status[m], "action": "kept original weights"})
    constraint = math.sqrt(sum(layer.column_error(program, m, Wa[m]) for m in range(M)))
    del layer
    return LayerSolution(
        Wa=Wa, lam=lam_out, constraint=constraint, status=status,
        failed=failed, solves=stats["solves"], retries=stats["retries"],
        iterations=stats["iterations"], seconds=time.perf_counter() - t0,
        passes=max((len(h.get("trace", ())) or h.get("evaluations", 1) for h in history),
                   default=1), dead_columns=dead,
        eps_reached=reached, history=history,
        workers=getattr(evaluator, "n_workers", n_workers))


def _search(program, settings, layer, live, run, Wa, status, history):
    s = settings.search
    eps = float(program.epsilon)
    floors = {m: lambda_floor(program, layer, m) for m in live}
    finite = [f for f in floors.values() if math.isfinite(f)]
    base = min(finite) if finite else 1.0
    if s.scope == "layer":
        groups = [_Group(columns=list(live), target=eps, floor=base, rtol=s.rtol)]
    elif s.scope == "column":
        Y = np.asarray(program.Y, dtype=np.float64)
        act = Y > 0 if program.activation != "none" else np.ones_like(Y, dtype=bool)
        norms = np.sqrt((np.where(act, Y, 0.0) ** 2).sum(axis=0))
        total = float(np.linalg.norm(norms)) or 1.0
        groups = [_Group(columns=[m], target=eps * norms[m] / total, rtol=s.rtol,
                         floor=floors[m] if math.isfinite(floors[m]) else base) for m in live]
    else:
        raise ValueError(f"unknown lambda scope {s.scope!r}")
    for step in range(s.max_evals):
        todo = [g for g in groups if not g.done]
        if not todo:
            break
        lams = {id(g): g.next_lambda() for g in todo}
        res = run({m: lams[id(g)] for g in todo for m in g.columns}, False,
                  f"lambda step {step + 1}", f"s{step}")
        for g in todo:
            err = math.sqrt(sum(res[m].err for m in g.columns))
            zero = all(res[m].zero for m in g.columns)
            g.update(lams[id(g)], err, zero, s.rtol)
    # the chosen lambdas, solved once more with polishing, and checked against eps; a group
    # whose polished answer misses eps (numerically) moves its lambda up a little and retries
    reached = True
    pending = list(groups)
    for attempt in range(4):
        chosen = {}
        for g in pending:
            if g.hi is None:  # eps never met inside the search: go past the last lambda tried
                g.hi = (g.lo or g.floor) * 10.0
            elif attempt:
                g.hi *= 1.0 + 4 * s.rtol
            for m in g.columns:
                chosen[m] = g.hi
        res = run(chosen, True, "polish", f"p{attempt}")
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
        reached = False
        for m in g.columns:
            Wa[m] = program.Wa0[m].copy()
            status[m] = "epsilon_not_reached"
    for g in groups:
        if s.scope == "layer":
            history.append({"columns": len(g.columns), "target": g.target, "lambda": g.hi,
                            "trace": [[lam, err] for lam, err in g.trace]})
        else:
            history.append({"column": g.columns[0], "lambda": g.hi, "evaluations": g.evals})
    if s.scope == "layer":
        return groups[0].hi, reached
    return [g.hi for g in groups], reached
