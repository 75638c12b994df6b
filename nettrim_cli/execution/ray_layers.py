"""Parallel mode (Algorithm 1) on a Ray cluster: the layers, which are independent, solved at the
same time (``--mode parallel --executor ray``).

``RayLayers`` is handed the pending layers' shapes first, then each layer's program
(``submit``), and gives the solutions back as they finish (``results``); the prune records and
writes them in network order (``nettrim_cli.methods.netrim``). Its remote function is its own
attribute, made when it is, and its column actors belong to the task that made them.

- **Object store.** The driver puts each layer's program (X, Y, W0, b0, eps) in the object store
  once (``ray.put``); the layer's task -- and its retry -- gets that reference, and the driver
  reads the same object back to measure the layer's discrepancy. The task takes a private copy
  of the arrays (objects in the store are read-only and a solver may work in place).
- **CPUs.** C = the cluster's CPUs (``--workers N``: at most N). With at least as many layers
  as C, every layer is one task with one CPU and Ray queues the rest; the biggest layers are
  submitted first. With fewer layers than C, the C CPUs are shared out in proportion to the
  layers' estimated cost (greedily, each layer at least one, an OSQP layer at most one per
  column), so that all layers finish at about the same time:
    * OSQP: a layer given k > 1 CPUs is a coordinator task (no CPU of its own: it runs the
      lambda search and waits) that hands its columns to k column actors of one CPU each --
      the machinery of ``ray_columns.RayEvaluator`` (warm starts, an actor's death replayed
      bit for bit, ``worker_lost`` columns reported), ended with the task; a layer with one
      CPU is solved in its task, columns one after another (``LocalEvaluator``);
    * ADMM (and any other solver): one task with k CPUs.
  A run that needs GPUs (``--osqp-algebra cuda``, ``--device cuda``) gives every layer one CPU
  and an equal share (at most one) of the cluster's GPUs.
- **Same answer as the local run.** Every task solves its layer with the very solver of the
  local run and with the local run's thread counts, not the task's CPUs (Ray sets
  OMP_NUM_THREADS per task, and a product threaded differently sums differently): OSQP uses
  one BLAS thread for all its arithmetic wherever it runs; a whole-layer solver (ADMM) uses
  ``settings.threads``, fixed on the driver (``threads.layer_threads``) and sent with the
  settings. So the weights are bit-identical (on nodes with the same CPU type and
  numpy/BLAS/torch builds).
- **Failures.** A task whose worker dies (``WorkerCrashedError``, a lost node, its coordinator
  killed with its actors) or that raises is submitted once more with the same reference (a
  warning names the layer). A second failure ends the run: ``SolverFailure`` (exit 1, one
  line, nothing written; finished layers stay in the work folder for ``--resume``). An error
  of ours from the solver (``NettrimError``, e.g. bad input) is not retried: it is the answer.
- **Ctrl-C** (or any error in the driver) cancels the tasks in flight (``ray.cancel(force=
  True)``, which also ends a coordinator's column actors).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Iterator

import numpy as np

from nettrim_cli.errors import BadInput, NettrimError, SolverFailure
from nettrim_cli.execution.ray_columns import connect
from nettrim_cli.execution.threads import fixed_threads, layer_threads
from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import LayerSolution, LayerSolver, SolverSettings, no_progress

log = logging.getLogger("nettrim")

ATTEMPTS = 2  # a failed layer task is submitted once more


def layer_cost(samples: int, n_in: int, n_out: int) -> float:
    """A layer's relative solving cost: n_out column problems of n_in + 1 variables over the
    samples (one pass over the data and one n x n factorisation per column)."""
    n = n_in + 1
    return float(n_out) * n * (samples + n)


def allocate(costs: list[float], cpus: int, limits: list[int] | None = None) -> list[int]:
    """CPUs per layer: one each when there are at least as many layers as CPUs; otherwise each
    spare CPU goes, one at a time, to the layer with the largest cost per CPU (which minimises
    the largest cost / CPUs), never more than its limit."""
    n = len(costs)
    share = [1] * n
    if n == 0 or n >= cpus:
        return share
    limits = limits or [cpus] * n
    for _ in range(cpus - n):
        open_ = [j for j in range(n) if share[j] < limits[j]]
        if not open_:
            break
        j = max(open_, key=lambda j: (costs[j] / share[j], -j))
        share[j] += 1
    return share


def _writable(program: LayerProgram) -> LayerProgram:
    """The program with private, writable copies of its arrays (the object store's are
    read-only)."""
    arrays = {f.name: np.array(getattr(program, f.name))
              for f in dataclasses.fields(program)
              if isinstance(getattr(program, f.name), np.ndarray)}
    return dataclasses.replace(program, **arrays)


def _run_layer(program: LayerProgram, solver: LayerSolver, settings: SolverSettings, cpus: int,
               coordinate: bool, fault: str | None = None) -> tuple[LayerSolution, float]:
    """One layer in a Ray worker: ``solver`` on the program with ``cpus`` CPUs and
    ``settings.threads`` threads; (solution, seconds). ``fault`` is a test hook: "kill" ends
    this worker process, "raise" raises."""
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "raise":
        raise RuntimeError("injected fault")
    t0 = time.perf_counter()
    program = _writable(program)
    settings = copy.deepcopy(settings)
    # k > 1 CPUs for an OSQP layer: k column actors (ray_columns), made by the solver for this
    # layer and ended with it; otherwise the columns in this process
    settings.executor = "ray" if coordinate else "local"
    settings.workers = cpus
    with fixed_threads(settings.threads):  # the driver's count, not this task's CPUs
        sol = solver.solve(program, settings, no_progress)
    return sol, time.perf_counter() - t0


def _device(solver) -> str:
    """The torch device a solver instance was made for (``device``; OSQP has none)."""
    return getattr(solver, "device", "cpu")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class RayLayers:
    """Pending layers of a parallel-mode prune, solved concurrently on a Ray cluster.

    Args:
        solver: the layer solver of the local run (pickled to the workers by reference:
            nettrim must be installed there).
        settings: the solver settings (``workers``: at most that many CPUs; ``address``;
            ``threads``: 0 is fixed here, on the driver, see ``threads.layer_threads``).
        shapes: {key: (samples, n_in, n_out)} of every layer that will be submitted.
    """

    # test hooks: _hook(self, key, attempt) after every submission; _faults[(key, attempt)]
    # is handed to that task (see _run_layer)
    _hook = None
    _faults: dict = {}

    def __init__(self, solver: LayerSolver, settings: SolverSettings,
                 shapes: dict[object, tuple[int, int, int]]) -> None:
        ray = self.ray = connect(settings.address)
        self.solver = solver
        # every task computes with the thread count of this machine, not with its own CPUs
        self.settings = dataclasses.replace(settings, threads=layer_threads(settings))
        # retries are ours (logged, and counted per layer): Ray's own are off
        self.remote = ray.remote(max_retries=0)(_run_layer)
        res = ray.cluster_resources()
        cluster = max(int(res.get("CPU", 1)), 1)
        cpus = max(1, min(settings.workers or cluster, cluster))
        keys = list(shapes)
        costs = [layer_cost(*shapes[k]) for k in keys]
        self.osqp = solver.name == "osqp"
        gpu = getattr(settings.osqp, "algebra", "builtin") == "cuda" or _device(solver) == "cuda"
        self.num_gpus = 0.0
        if gpu:
            gpus = float(res.get("GPU", 0))
            if gpus <= 0:
                raise BadInput("a CUDA solver with --executor ray: the Ray cluster has no GPU",
                               "--executor")
            share = [1] * len(keys)
            self.num_gpus = min(1.0, gpus / max(1, min(len(keys), cpus)))
        else:
            limits = [shapes[k][2] for k in keys] if self.osqp else None
            share = allocate(costs, cpus, limits)
        self.cpus = dict(zip(keys, share, strict=True))
        # the biggest layers first: with more layers than CPUs, Ray runs them in this order
        cost = dict(zip(keys, costs, strict=True))
        self.order = sorted(keys, key=lambda k: (-cost[k], keys.index(k)))
        self.refs: dict = {}  # key -> the program's object reference
        self.names: dict = {}
        self.futures: dict = {}  # task reference -> key
        self.attempts: dict = {}
        self.retries = 0
        log.info("ray: %d layer(s) on %d CPU(s); CPUs per layer: %s", len(keys), cpus,
                 ", ".join(str(self.cpus[k]) for k in keys))

    def submit(self, key, program: LayerProgram) -> None:
        """Put the layer's program in the object store (once) and start its task."""
        self.refs[key] = self.ray.put(program)
        self.names[key] = program.name
        self.attempts[key] = 0
        self._start(key)

    def _start(self, key) -> None:
        k = self.cpus[key]
        coordinate = self.osqp and k > 1
        attempt = self.attempts[key]
        fn = self.remote.options(num_cpus=0 if coordinate else k, num_gpus=self.num_gpus)
        ref = fn.remote(self.refs[key], self.solver, self.settings, k, coordinate,
                        RayLayers._faults.get((key, attempt)))
        self.futures[ref] = key
        if RayLayers._hook is not None:
            RayLayers._hook(self, key, attempt)

    def program(self, key) -> LayerProgram:
        """The layer's program, read back from the object store."""
        return self.ray.get(self.refs[key])

    def release(self, key) -> None:
        self.refs.pop(key, None)

    def results(self) -> Iterator[tuple[object, LayerSolution, float]]:
        """(key, solution, seconds) of every submitted layer, as they finish."""
        ray = self.ray
        while self.futures:
            ready, _ = ray.wait(list(self.futures), num_returns=1, timeout=1.0)
            for ref in ready:
                key = self.futures.pop(ref)
                try:
                    sol, seconds = ray.get(ref)
                except ray.exceptions.RayError as e:
                    self._failed(key, e)
                    continue
                yield key, sol, seconds

    def _failed(self, key, err: Exception) -> None:
        cause = getattr(err, "cause", None)
        if isinstance(cause, NettrimError):
            raise cause  # the solver's own verdict (bad input, ...): no retry changes it
        what = _first_line(cause if isinstance(cause, BaseException) else err)
        self.attempts[key] += 1
        if self.attempts[key] >= ATTEMPTS:
            raise SolverFailure(f"layer {self._name(key)}: its Ray task failed {ATTEMPTS} times "
                                f"(last: {what}); nothing was written")
        self.retries += 1
        log.warning("ray: the task of layer %s failed (%s); running it once more",
                    self._name(key), what)
        self._start(key)

    def _name(self, key) -> str:
        return str(self.names.get(key, key))

    def close(self) -> None:
        """Cancel the tasks still in flight (an error or Ctrl-C in the driver)."""
        for ref in list(self.futures):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished or gone already
                pass
        self.futures.clear()
        self.refs.clear()

    def __enter__(self) -> RayLayers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
