"""The columns of a layer solved by Ray actors on a Ray cluster (``--executor ray``).

``RayEvaluator`` has the interface of ``search.ProcessEvaluator`` (``evaluate`` / ``close`` /
``retries``), so the lambda search in ``search.solve_layer`` does not change:

- the layer's data -- the stripped program (Y, V, W0, b0; not the raw X, only its shape) and
  the ``ScaledLayer`` (Xs, its Gram matrix, the scales), with the solver settings -- is put in
  the object store ONCE per layer (``ray.put``); every actor is handed the same reference and
  reads the arrays zero-copy from its node's shared memory;
- a few actors (one CPU each) each own a fixed round-robin share of the columns, exactly as
  the worker processes do, and keep their columns' OSQP problems between lambda evaluations
  (warm starts); BLAS is limited to one thread inside their solves (``LocalEvaluator``), so
  the pruned weights are bit-identical to a local run;
- the actors are kept for the next layer (a small pool per Ray session): a new layer is a
  ``load`` of its object reference, not a new process.

Failures: an actor that dies (``RayActorError``, a crashed worker, a lost node) or whose call
raises is replaced by a new actor that loads the same object reference and replays every
evaluation its columns have had in this layer, in order, then the one in progress. OSQP is
deterministic, so the replayed problems reach the same state and the answer stays
bit-identical (it costs the replayed solves). After ``MAX_RESTARTS`` replacements of one share
in one layer, its columns are reported with the status ``worker_lost``: they keep (and are
measured with) their original weights and appear in the report's ``failed_columns``, like any
column the solver could not settle -- never dropped.

Ray is an optional extra (``pip install 'nettrim[ray]'``); this module imports it only when
an evaluator is made.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
from dataclasses import fields

from nettrim_cli.errors import BadInput
from nettrim_cli.solvers import search
from nettrim_cli.solvers.search import ColumnOutcome, LocalEvaluator

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

    def load(self, shared: dict, columns: list[int]) -> int:
        # ``shared`` is the layer's object, resolved by Ray from the reference (zero-copy)
        search._SHARED.clear()
        search._SHARED.update(shared)
        self.local = LocalEvaluator(columns)
        return len(columns)

    def run(self, calls: list[tuple[dict[int, float], bool]]) -> dict[int, ColumnOutcome]:
        """Evaluate each (requests, polish) in turn; the answer to the last one."""
        out: dict[int, ColumnOutcome] = {}
        for requests, polish in calls:
            out = self.local.evaluate(requests, polish)
        return out

    def unload(self) -> None:
        self.local = None
        search._SHARED.clear()


# actors kept between layers: {"key": the Ray session they belong to, "actors": [...]}
_POOL: dict = {"key": None, "actors": []}


def _session_key(ray) -> tuple:
    ctx = ray.get_runtime_context()
    return ctx.get_job_id(), ctx.get_node_id()


def _new_actor(ray, num_gpus: float = 0.0):
    cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(ColumnActor)
    return cls.options(scheduling_strategy="SPREAD", num_gpus=num_gpus).remote()


def _actors(ray, n: int, num_gpus: float = 0.0) -> list:
    key = (*_session_key(ray), num_gpus)
    if _POOL["key"] != key:
        if _POOL["key"] is not None and _POOL["key"][:2] == key[:2]:
            shutdown_pool()  # this session's actors, made with another GPU share
        _POOL.update(key=key, actors=[])
    pool = _POOL["actors"]
    while len(pool) < n:
        pool.append(_new_actor(ray, num_gpus))
    return pool[:n]


def _gpu_share(ray, n: int) -> float:
    """GPUs per actor for OSQP's CUDA algebra: Ray hides the GPUs from an actor that asks for
    none (CUDA_VISIBLE_DEVICES is emptied), so the actors share the cluster's GPUs."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus <= 0:
        raise BadInput("--osqp-algebra cuda with --executor ray: the Ray cluster has no GPU",
                       "--osqp-algebra")
    return min(1.0, gpus / n)


def _payload() -> dict:
    """What the actors need of the layer (search._SHARED), without the raw X: ColumnQP and
    the column errors use the scaled copy in ``layer``; X is replaced by its shape."""
    shared = dict(search._SHARED)
    program = copy.copy(shared["program"])
    program.X = _Shape(program.X.shape)
    program._Xa = None
    shared["program"] = program
    return shared


class _Shape:
    """Stands in for the program's X in the actors: only ``.shape`` is read there."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)


def _outcome_kwargs() -> set[str]:
    return {f.name for f in fields(ColumnOutcome)}


class RayEvaluator:
    """Columns dealt round-robin to Ray actors that keep their OSQP problems.

    Args:
        columns: the layer's live columns.
        workers: the number of actors (None or 0: one per CPU of the cluster); never more
            than the cluster's CPUs or the columns.
        address: the Ray cluster (see ``connect``).
    """

    # test hook: called as _hook(evaluator, call_number) once an evaluation is dispatched
    _hook = None

    def __init__(self, columns: list[int], workers: int | None = None,
                 address: str | None = None) -> None:
        ray = self.ray = connect(address)
        cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        n = max(1, min(workers or cpus, cpus, len(columns)))
        self.n_workers = n
        self.shares = [columns[w::n] for w in range(n)]
        self.owner = {m: w for w, share in enumerate(self.shares) for m in share}
        settings = search._SHARED["settings"]
        cuda = getattr(settings.osqp, "algebra", "builtin") == "cuda"
        self.num_gpus = _gpu_share(ray, n) if cuda else 0.0
        self.ref = ray.put(_payload())  # once per layer; every actor reads this object
        self.actors = list(_actors(ray, n, self.num_gpus))
        for actor, share in zip(self.actors, self.shares, strict=True):
            actor.load.remote(self.ref, share)
        self.history: list[list[tuple[dict[int, float], bool]]] = [[] for _ in range(n)]
        self.restarts = [0] * n
        self.lost: set[int] = set()
        self.retries = 0
        self.calls = 0

    def evaluate(self, requests: dict[int, float], polish: bool, progress=None,
                 on_result=None) -> dict[int, ColumnOutcome]:
        ray = self.ray
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
        out: dict[int, ColumnOutcome] = {}
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
                    progress(len(out), len(requests))
        for w, req in sorted(per.items()):
            if w in self.lost:
                for m in sorted(req):
                    out[m] = self._lost(m)
                if progress is not None:
                    progress(len(out), len(requests))
        return out

    def _replace(self, w: int, err: Exception):
        """A new actor for share w that replays the share's evaluations of this layer; the
        reference to its answer for the last one, or None once the share is given up."""
        ray = self.ray
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        try:
            ray.kill(self.actors[w], no_restart=True)
        except Exception:  # noqa: BLE001 - it is gone already
            pass
        if self.restarts[w] >= MAX_RESTARTS:
            log.warning("ray: giving up on columns %s after %d replacements (%s: %s); they "
                        "keep their original weights", self.shares[w], self.restarts[w],
                        type(err).__name__, first)
            self.lost.add(w)
            self._forget(self.actors[w])
            return None
        self.restarts[w] += 1
        self.retries += len(self.shares[w])
        log.warning("ray: actor for columns %s failed (%s: %s); replacing it and replaying "
                    "its %d evaluation(s)", self.shares[w], type(err).__name__, first,
                    len(self.history[w]))
        old = self.actors[w]
        actor = _new_actor(ray, self.num_gpus)
        pool = _POOL["actors"]
        for i, a in enumerate(pool):
            if a is old:
                pool[i] = actor
        self.actors[w] = actor
        actor.load.remote(self.ref, self.shares[w])
        return actor.run.remote(list(self.history[w]))

    @staticmethod
    def _forget(actor) -> None:
        pool = _POOL["actors"]
        pool[:] = [a for a in pool if a is not actor]

    def _lost(self, m: int) -> ColumnOutcome:
        """An unsolved column keeps, and is measured with, its original weights (as in
        search.ColumnWork)."""
        program = search._SHARED["program"]
        wa = program.Wa0[m].copy()
        err = search._SHARED["layer"].column_error(program, m, wa)
        extra = {"zero": not wa[: program.n_in].any()} if "zero" in _outcome_kwargs() else {}
        return ColumnOutcome(wa=wa, err=err, status=LOST, iterations=0, seconds=0.0,
                             retried=True, **extra)

    def close(self) -> None:
        for w, actor in enumerate(self.actors):
            if w not in self.lost:
                try:
                    actor.unload.remote()
                except Exception:  # noqa: BLE001 - a dead actor is replaced next layer
                    self._forget(actor)
        self.ref = None  # the driver's reference; the object goes once the actors unload


def shutdown_pool() -> None:
    """End the pooled actors (they also end with the Ray session)."""
    ray = import_ray()
    for actor in _POOL["actors"]:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - gone already, or a past session's
            pass
    _POOL.update(key=None, actors=[])
