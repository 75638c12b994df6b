"""The columns of a layer solved by Ray actors on a Ray cluster (``--executor ray``).

``RayColumns`` is the executor: it joins the cluster and owns a ``RayColumnPool``, the column
actors kept between the layers of a run (a new layer is a ``load`` of its object reference, not
a new process); the run that makes it closes it, which ends the actors. For each layer it gives
a ``RayEvaluator``, which has the interface of the local evaluators (``evaluate`` / ``close`` /
``retries`` / ``n_workers``), so the lambda search does not change:

- the layer's context -- the program without the raw X (Y, V, W0, b0; X only by its shape),
  the ``ScaledLayer`` (Xs, its Gram matrix, the scales), the solver settings -- is put in the
  object store ONCE per layer (``ray.put``); every actor is handed the same reference and reads
  the arrays zero-copy from its node's shared memory;
- a few actors (one CPU each) each own a fixed round-robin share of the columns, exactly as
  the worker processes do, and keep their columns' OSQP problems between lambda evaluations
  (warm starts); they solve with the context's fixed thread count, as the driver and the local
  workers do, so the pruned weights are bit-identical to a local run.

Failures: an actor that dies (``RayActorError``, a crashed worker, a lost node) or whose call
raises is replaced by a new actor that loads the same object reference and replays every
evaluation its columns have had in this layer, in order, then the one in progress. OSQP is
deterministic, so the replayed problems reach the same state and the answer stays
bit-identical (it costs the replayed solves). After ``MAX_RESTARTS`` replacements of one share
in one layer, its columns are reported with the status ``worker_lost``: they keep (and are
measured with) their original weights and appear in the report's ``failed_columns``, like any
column the solver could not settle -- never dropped.

Ray is an optional extra (``pip install 'nettrim[ray]'``); this module imports it only when
an executor is made.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from nettrim_cli.errors import BadInput
from nettrim_cli.execution import ColumnContext
from nettrim_cli.execution.local import LocalEvaluator

log = logging.getLogger("nettrim")

EXTRA = "pip install 'nettrim[ray]'"
LOST = "worker_lost"
MAX_RESTARTS = 3  # per share of columns and layer


def import_ray():
    """The ray module, or a usage error (exit 2) that names the extra."""
    try:
        import ray
    except ImportError as e:
        raise BadInput(f"--executor ray needs the Ray package, which is not installed here "
                       f"({EXTRA})", "--executor") from e
    return ray


def _reachable(address: str) -> None:
    """Fail fast (exit 2) on an address nothing listens on; ray.init would retry for minutes."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot reach the Ray cluster at {address} ({e}); start it with "
                       "`ray start --head --port=PORT` or check HOST:PORT", "--address") from e


def connect(address: str | None = None):
    """Join the Ray cluster at ``address`` (HOST:PORT, ray://HOST:PORT or auto); without one,
    the cluster in RAY_ADDRESS if that is set, else a new local Ray instance. Does nothing when
    this process is already connected."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    kwargs = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # a new local instance, even where a cluster was started on this machine (or its
        # stale record in /tmp/ray is left): --address auto joins that one
        address = "local"
        kwargs["include_dashboard"] = False
    elif address is not None:
        _reachable(address)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as e:
        hint = ""
        if address not in (None, "auto") and not os.environ.get("RAY_AUTH_MODE"):
            # Ray enables token authentication for an explicit address only when asked to
            hint = ("; if the cluster uses Ray's token authentication, set RAY_AUTH_MODE=token "
                    "(with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise BadInput(f"cannot connect to the Ray cluster ({e}){hint}",
                       address or "--executor") from e
    return ray


class ColumnActor:
    """One share of a layer's columns, in a Ray worker process (wrapped by ray.remote)."""

    def __init__(self) -> None:
        self.local: LocalEvaluator | None = None

    def load(self, context: ColumnContext, columns: list[int]) -> int:
        # ``context`` is the layer's object, resolved by Ray from the reference (zero-copy)
        self.local = LocalEvaluator(context, columns)
        return len(columns)

    def run(self, calls: list[tuple[dict[int, float], bool]]) -> dict[int, Any]:
        """Evaluate each (requests, polish) in turn; the answer to the last one."""
        out: dict[int, Any] = {}
        for requests, polish in calls:
            out = self.local.evaluate(requests, polish)
        return out

    def unload(self) -> None:
        self.local = None


class RayColumnPool:
    """Column actors (one CPU each) kept between the layers of a run; ``close`` ends them.

    Args:
        ray: the connected ray module.
    """

    def __init__(self, ray) -> None:
        self.ray = ray
        self.actors: list = []
        self.num_gpus = 0.0
        self._cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(ColumnActor)

    def take(self, n: int, num_gpus: float = 0.0) -> list:
        """n actors, made as needed; all are made anew when the GPU share changes."""
        if num_gpus != self.num_gpus:
            self.close()
            self.num_gpus = num_gpus
        while len(self.actors) < n:
            self.actors.append(self._new())
        return self.actors[:n]

    def _new(self):
        return self._cls.options(scheduling_strategy="SPREAD", num_gpus=self.num_gpus).remote()

    def replace(self, old):
        """A new actor in the place of ``old`` (dead, or given up)."""
        actor = self._new()
        self.actors = [actor if a is old else a for a in self.actors]
        return actor

    def forget(self, actor) -> None:
        self.actors = [a for a in self.actors if a is not actor]

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - gone already
                pass
        self.actors = []


def _gpu_share(ray, n: int) -> float:
    """GPUs per actor for OSQP's CUDA algebra: Ray hides the GPUs from an actor that asks for
    none (CUDA_VISIBLE_DEVICES is emptied), so the actors share the cluster's GPUs."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus <= 0:
        raise BadInput("--osqp-algebra cuda with --executor ray: the Ray cluster has no GPU",
                       "--osqp-algebra")
    return min(1.0, gpus / n)


class RayEvaluator:
    """A layer's columns dealt round-robin to the pool's Ray actors, which keep their OSQP
    problems.

    Args:
        pool: the run's column actors.
        context: the layer's context (put in the object store once, without the raw X).
        columns: the layer's live columns.
        workers: the number of actors (None or 0: one per CPU of the cluster); never more
            than the cluster's CPUs or the columns.
    """

    # test hook: called as _hook(evaluator, call_number) once an evaluation is dispatched
    _hook = None

    def __init__(self, pool: RayColumnPool, context: ColumnContext, columns: list[int],
                 workers: int | None = None) -> None:
        ray = self.ray = pool.ray
        self.pool, self.context = pool, context
        cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        n = max(1, min(workers or cpus, cpus, len(columns)))
        self.n_workers = n
        self.shares = [columns[w::n] for w in range(n)]
        self.owner = {m: w for w, share in enumerate(self.shares) for m in share}
        cuda = getattr(context.settings.osqp, "algebra", "builtin") == "cuda"
        num_gpus = _gpu_share(ray, n) if cuda else 0.0
        self.ref = ray.put(context.without_input())  # once per layer; every actor reads it
        self.actors = list(pool.take(n, num_gpus))
        for actor, share in zip(self.actors, self.shares, strict=True):
            actor.load.remote(self.ref, share)
        self.history: list[list[tuple[dict[int, float], bool]]] = [[] for _ in range(n)]
        self.restarts = [0] * n
        self.lost: set[int] = set()
        self.retries = 0
        self.calls = 0

    def evaluate(self, requests: dict[int, float], polish: bool, progress=None,
                 on_result=None) -> dict[int, Any]:
        per: dict[int, dict[int, float]] = {}
        for m, lam in requests.items():
            per.setdefault(self.owner[m], {})[m] = lam
        futures = {}
        for w, req in sorted(per.items()):
            self.history[w].append((req, polish))
            if w not in self.lost:
                futures[self.actors[w].run.remote([(req, polish)])] = w
        self.calls += 1
        if RayEvaluator._hook is not None:
            RayEvaluator._hook(self, self.calls)
        out: dict[int, Any] = {}
        self._collect(futures, out, len(requests), progress, on_result)
        for w, req in sorted(per.items()):
            if w in self.lost:
                for m in sorted(req):
                    out[m] = self.context.unsolved(m, LOST)
                if progress is not None:
                    progress(len(out), len(requests))
        return out

    def _collect(self, futures: dict, out: dict, total: int, progress, on_result) -> None:
        """The actors' answers as they come; a failed call goes to a replacement actor."""
        ray = self.ray
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            for ref in ready:
                w = futures.pop(ref)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as e:
                    again = self._replace(w, e)
                    if again is not None:
                        futures[again] = w
                    continue
                for m in sorted(res):
                    out[m] = res[m]
                    if on_result is not None:
                        on_result(m, res[m])
                if progress is not None:
                    progress(len(out), total)

    def _replace(self, w: int, err: Exception):
        """A new actor for share w that replays the share's evaluations of this layer; the
        reference to its answer for the last one, or None once the share is given up."""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        try:
            self.ray.kill(self.actors[w], no_restart=True)
        except Exception:  # noqa: BLE001 - it is gone already
            pass
        if self.restarts[w] >= MAX_RESTARTS:
            log.warning("ray: giving up on columns %s after %d replacements (%s: %s); they "
                        "keep their original weights", self.shares[w], self.restarts[w],
                        type(err).__name__, first)
            self.lost.add(w)
            self.pool.forget(self.actors[w])
            return None
        self.restarts[w] += 1
        self.retries += len(self.shares[w])
        log.warning("ray: actor for columns %s failed (%s: %s); replacing it and replaying "
                    "its %d evaluation(s)", self.shares[w], type(err).__name__, first,
                    len(self.history[w]))
        actor = self.actors[w] = self.pool.replace(self.actors[w])
        actor.load.remote(self.ref, self.shares[w])
        return actor.run.remote(list(self.history[w]))

    def close(self) -> None:
        for w, actor in enumerate(self.actors):
            if w not in self.lost:
                try:
                    actor.unload.remote()
                except Exception:  # noqa: BLE001 - a dead actor is replaced next layer
                    self.pool.forget(actor)
        self.ref = None  # the driver's reference; the object goes once the actors unload


class RayColumns:
    """The columns on a Ray cluster's actors: joins the cluster (``connect``) and keeps its
    column actors for the next layer until ``close``.

    Args:
        address: the Ray cluster (see ``connect``).
    """

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.pool = RayColumnPool(connect(address))

    @classmethod
    def from_settings(cls, settings) -> RayColumns:
        return cls(settings.address)

    def evaluator(self, context: ColumnContext, columns: list[int],
                  workers: int | None) -> RayEvaluator:
        return RayEvaluator(self.pool, context, columns, workers)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> RayColumns:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
