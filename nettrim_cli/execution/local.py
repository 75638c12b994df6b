"""The columns of a layer solved on this machine: in this process, or in forked worker
processes (``--executor local``, the default).

Workers: the columns are dealt round-robin to ``workers`` forked processes. Each receives the
layer's context as its Process argument: fork shares it copy-on-write, nothing is copied per
task. A worker keeps its columns' OSQP problems between evaluations. OSQP's solve holds the
GIL, so threads would not run in parallel (measured: two threads took 1.8x longer than one).
Every evaluation runs with the context's fixed thread count (one BLAS thread for OSQP), so the
results are bit-identical whatever the number of workers, and to a Ray actor's.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from typing import Any

from nettrim_cli.execution import ColumnContext
from nettrim_cli.execution.threads import default_workers, fixed_threads


class LocalEvaluator:
    """Solves the requested columns in this process."""

    def __init__(self, context: ColumnContext, columns: list[int], n_workers: int = 1) -> None:
        self.context = context
        self.works = {m: context.work(m) for m in columns}
        self.n_workers = n_workers
        self.retries = 0

    def evaluate(self, requests: dict[int, float], polish: bool,
                 progress=None, on_result=None) -> dict[int, Any]:
        out = {}
        with fixed_threads(self.context.threads):
            for i, (m, lam) in enumerate(sorted(requests.items())):
                if m not in self.works:  # a column taken over from a lost worker
                    self.works[m] = self.context.work(m)
                out[m] = self.works[m].solve(lam, polish)
                if on_result is not None:
                    on_result(m, out[m])
                if progress is not None:
                    progress(i + 1, len(requests))
        return out

    def close(self) -> None:
        self.works.clear()


def _worker(conn, context: ColumnContext, columns: list[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    local = LocalEvaluator(context, columns)
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

    def __init__(self, context: ColumnContext, columns: list[int], workers: int) -> None:
        ctx = mp.get_context("fork")
        self.owner: dict[int, int] = {}
        self.procs, self.conns = [], []
        self.fallback = LocalEvaluator(context, [])
        self.failed: set[int] = set()
        for w in range(workers):
            mine = columns[w::workers]
            for m in mine:
                self.owner[m] = w
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, context, mine), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        self.n_workers = workers
        self.retries = 0

    def evaluate(self, requests: dict[int, float], polish: bool,
                 progress=None, on_result=None) -> dict[int, Any]:
        out: dict[int, Any] = {}
        pending = self._send(requests, polish)
        while pending:
            ready = mp.connection.wait([self.conns[w] for w in pending], timeout=1.0)
            for w in list(pending):
                if not self._receive(w, ready, out, pending, on_result):
                    continue
                if progress is not None:
                    progress(len(out), len(requests))
        missing = {m: lam for m, lam in requests.items() if m not in out}
        if missing:
            self.retries += len(missing)
            out.update(self.fallback.evaluate(missing, polish, on_result=on_result))
        return out

    def _send(self, requests: dict[int, float], polish: bool) -> set[int]:
        """Each worker's share of the requests; the workers that took one."""
        per: dict[int, dict[int, float]] = {}
        for m, lam in requests.items():
            per.setdefault(self.owner[m], {})[m] = lam
        pending = set()
        for w, req in per.items():
            if w in self.failed:
                continue
            try:
                self.conns[w].send(("solve", req, polish))
                pending.add(w)
            except (BrokenPipeError, OSError):
                self._lose(w)
        return pending

    def _receive(self, w: int, ready: list, out: dict, pending: set[int], on_result) -> bool:
        """One message from worker w if it has one; True when it was a column's answer."""
        conn = self.conns[w]
        if conn not in ready:
            if not self.procs[w].is_alive():
                pending.discard(w)
                self._lose(w)
            return False
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            pending.discard(w)
            self._lose(w)
            return False
        if msg[0] == "done":
            out[msg[1]] = msg[2]
            if on_result is not None:
                on_result(msg[1], msg[2])
            return True
        pending.discard(w)
        if msg[0] != "end":
            self._lose(w)
        return False

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


class LocalColumns:
    """The columns in forked worker processes when there are enough of them (at least two
    per worker), else in this process. Nothing outlives a layer."""

    name = "local"

    @classmethod
    def from_settings(cls, settings) -> LocalColumns:  # noqa: ARG003 - nothing to read
        return cls()

    def evaluator(self, context: ColumnContext, columns: list[int],
                  workers: int | None) -> LocalEvaluator | ProcessEvaluator:
        n = workers or default_workers()
        if n > 1 and len(columns) >= 2 * n:
            return ProcessEvaluator(context, columns, n)
        return LocalEvaluator(context, columns, n_workers=n)

    def close(self) -> None:
        return None

    def __enter__(self) -> LocalColumns:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
