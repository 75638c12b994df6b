"""What every solver takes and gives back: settings in, weights plus a status record out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from nettrim_cli.program import LayerProgram

import numpy as np

# progress(stage, done, total): stage is a short text such as "lambda pass 2"
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:  # noqa: ARG001
    return None


@dataclass
class OSQPSettings:
    """OSQP settings used for every column (config section ``[osqp]``)."""

    eps_abs: float = 1e-5
    eps_rel: float = 1e-5
    max_iter: int = 20000
    polish: bool = True
    # Retry of a column that ends inaccurate or at max_iter: max_iter is multiplied by this and
    # the tolerances divided by it, polishing on.
    retry_factor: float = 10.0
    verbose: bool = False
    # Constraint screening (issue: speed): start from this many inactive-sample inequalities
    # and add violated ones until none is; the answer is that of the full program.
    screening: bool = True
    screen_init: int = 64
    # "split": eq. 14 as the paper writes it (u = u+ - u-, u+/- >= 0); "epigraph": the same
    # program (11) with |u_i| <= t_i, whose Hessian block is a quarter of the size -- faster
    # factorisations and iterations, the same minimiser.
    formulation: str = "epigraph"
    # OSQP's linear-algebra backend: "builtin" (CPU, QDLDL; the reference) or "cuda" (needs
    # the osqp CUDA build, `pip install 'osqp[cu12]'`, and an NVIDIA GPU). Passed to
    # osqp.OSQP(algebra=...), not to setup().
    algebra: str = "builtin"

    def as_osqp(self) -> dict:
        return {
            "eps_abs": self.eps_abs,
            "eps_rel": self.eps_rel,
            "max_iter": int(self.max_iter),
            "polishing": bool(self.polish),
            "verbose": bool(self.verbose),
            "warm_starting": True,
        }


@dataclass
class SearchSettings:
    """How lambda is chosen from epsilon (config section ``[search]``).

    scope: ``layer`` -- one lambda for the whole layer, which is the exact solution of
    program (4) (its KKT conditions have one multiplier for the single quadratic constraint);
    ``column`` -- each column gets the share eps_m = eps ||y_m,Omega|| / ||Y_Omega||_F of the
    layer's budget and its own lambda.
    rtol: stop once the constraint value is within [ (1 - rtol) eps, eps ].
    """

    scope: str = "layer"
    rtol: float = 0.02
    max_evals: int = 30  # lambda evaluations per search before giving up


@dataclass
class SolverSettings:
    osqp: OSQPSettings = field(default_factory=OSQPSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    # A weight counts as zero when |w| <= zero_threshold * max|W_l| (the layer's largest
    # original weight magnitude). The written weights hold exact zeros there.
    zero_threshold: float = 1e-6
    # Worker processes for the columns; 0 means all cores. Results do not depend on it.
    workers: int = 0
    # Keep every column's OSQP problem between lambda evaluations if they fit in this much
    # memory; otherwise rebuild each from its last solution and working set.
    memory_budget_mb: float = 2048.0
    # Where the columns are solved: "local" (this machine's processes) or "ray" (actors on a
    # Ray cluster, see nettrim_cli/execution/); address: the Ray cluster to join
    # (HOST:PORT or "auto"; None: RAY_ADDRESS if set, else a new local Ray instance).
    executor: str = "local"
    address: str | None = None
    # BLAS / torch threads of a whole-layer solver's arithmetic (ADMM), the same wherever a
    # layer is solved (see nettrim_cli/execution/threads.py); 0: the CPUs of the machine where
    # the run starts. OSQP uses one thread for all its arithmetic whatever this says.
    threads: int = 0
    # --solver admm: an ADMMSettings (nettrim_cli.solvers.admm) from the [admm] section of a
    # preset, None for its defaults
    admm: Any = None


@dataclass
class LayerSolution:
    """The solver's answer for one layer.

    Wa: (M, N + bias) pruned weights with the bias as last column.
    lam: the lambda used (a float for layer scope, one per column for column scope).
    constraint: the constraint value sqrt(sum of column errors) reached, to compare with eps.
    status: final OSQP status of every column (the solution that was written).
    failed: columns kept at their original weights because no solve succeeded, with status.
    """

    Wa: np.ndarray
    lam: float | list[float] | None
    constraint: float
    status: list[str]
    failed: list[dict] = field(default_factory=list)
    solves: int = 0
    retries: int = 0
    iterations: int = 0
    seconds: float = 0.0
    passes: int = 0
    dead_columns: int = 0
    eps_reached: bool = True
    history: list[dict] = field(default_factory=list)
    workers: int = 1
    # what the support refit and the reweighted l1 did (nettrim_cli/solvers/sharpen.py)
    sharpen: dict | None = None

    def common_summary(self, name: str) -> dict:
        """The report fields every solver shares."""
        return {
            "name": name,
            "status_counts": dict(sorted(Counter(self.status).items())),
            "failed_columns": self.failed,
            "solves": self.solves,
            "retries": self.retries,
            "iterations": self.iterations,
            "seconds": round(self.seconds, 4),
            "dead_columns": self.dead_columns,
            "epsilon_reached": self.eps_reached,
            **({"sharpen": self.sharpen} if self.sharpen else {}),
        }

    def summary(self) -> dict:
        return {**self.common_summary("osqp"), "lambda_evaluations": self.passes,
                "workers": self.workers, "lambda_search": self.history}


@dataclass(frozen=True)
class Capabilities:
    """What a solver declares about itself; callers read this instead of guessing.

    journal: records every column evaluation in a work-folder journal and answers the ones
        it already holds (``--resume`` mid-layer); without it only whole layers resume.
    devices: the devices it can run on ("cpu", "cuda").
    granularity: "column" (one QP per output neuron, eq. 14) or "layer" (all columns at once).
    """

    journal: bool
    devices: tuple[str, ...]
    granularity: str


class LayerSolver(Protocol):
    """A layer solver: takes a layer program, returns weights plus a status record. It knows
    nothing of files or layer types. Instances are picklable (Ray ships them to workers)."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def solve(self, program: LayerProgram, settings: SolverSettings,
              progress: Progress = no_progress, journal: Any = None) -> LayerSolution:
        """Solve ``program``; ``journal`` (a ``ColumnJournal``) only when
        ``capabilities.journal``."""
        ...
