"""The thread count of every computation that feeds a result: fixed, explicit, and set by the
code that computes, wherever it runs (driver, forked worker, Ray task, Ray actor).

BLAS (OpenBLAS, MKL) and torch split a large product differently with a different number of
threads, and the sums come out different in the last bits: the Gram matrix of a 1,200 x 257
design differs in 28 entries between one BLAS thread and two. Ray sets OMP_NUM_THREADS per
task from the CPUs the task asks for, while the driver runs with all its cores, so the same
layer solved in both places gave different weights once its matrices were large enough to be
threaded. Every place a layer is solved therefore sets the count itself with
``fixed_threads``: the OSQP solver uses one thread for all its arithmetic (its parallelism is
across columns, see ``solvers/search.py``); a whole-layer solver (ADMM) uses
``layer_threads(settings)``, fixed once on the driver and carried to the Ray tasks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def layer_threads(settings) -> int:
    """The explicit BLAS / torch thread count of a whole-layer solve: ``settings.threads``,
    or (0) the CPUs of the machine where the run starts."""
    return int(getattr(settings, "threads", 0) or 0) or default_workers()


@contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` BLAS / OpenMP threads and, where torch is loaded, ``n`` torch
    threads; the previous counts are restored after it."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(before)
