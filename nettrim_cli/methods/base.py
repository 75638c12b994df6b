"""What every pruning method takes and gives back: one interface, one result type.

A method is configured from the prune options it declares (``options``), then ``run`` on a
loaded checkpoint and its activation dump; it returns a ``MethodResult``: per pruned unit its
weights, mask and the method's own record, plus network-level figures. One report builder
(``nettrim_cli.report.build_report``) turns any method's result into the report.

The lifecycle follows one-shot and training-based methods alike: ``__init__`` (validate the
options, read the files they name), ``run`` (prune), ``check`` (refuse a result that must not be
written), ``finished`` / ``abandoned`` (the outputs are in place / the run stopped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from nettrim_cli.checkpoint import Checkpoint
    from nettrim_cli.dump import DumpReader
    from nettrim_cli.graph import LayerInfo
    from nettrim_cli.solvers.base import LayerSolution, Progress


@dataclass
class LayerResult:
    """One pruned unit.

    W, b: pruned weights (out, in) and bias; W0: the original weights.
    program: what the unit solved, in words (the report's ``program``).
    epsilon: the layer's eps (Net-Trim) or None; solution: a solver's record (Net-Trim) or None.
    discrepancy, y_norm: ||Yhat - Y||_F and ||Y||_F on the layer's input.
    record: the method's own per-layer fields for the report (e.g. ``kept_target``,
        ``lambda``, ``constraint``, ``solver``).
    """

    info: LayerInfo
    W: np.ndarray
    b: np.ndarray | None
    W0: np.ndarray
    discrepancy: float
    y_norm: float
    seconds: float = 0.0
    program: str = ""
    epsilon: float | None = None
    solution: LayerSolution | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """Kept weights: True where W is nonzero."""
        return self.W != 0


@dataclass
class MethodResult:
    """A method's answer: pruned units in forward order, settings and network figures."""

    method: str
    mode: str
    settings: dict[str, Any]
    layers: list[LayerResult]
    network: dict[str, Any]
    # a training-based method's trained network: the checkpoint is written from it (its
    # layers' weights replaced by ``layers``) instead of from the original model
    model: Any = None

    @property
    def weights(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        return {o.info.name: (o.W, o.b) for o in self.layers}

    @property
    def failed(self) -> list[tuple[str, dict]]:
        """(layer name, record) of every column a solver could not settle."""
        return [(o.info.name, f) for o in self.layers if o.solution for f in o.solution.failed]


@dataclass
class RunHooks:
    """How a method reports progress: on_layer(index, count, name) before each unit (a
    training-based method: before each step, "LC step k/K" / "round t/n"), on_columns(stage,
    done, total) within one (a training-based method: samples of the current epoch, the stage
    naming step, epoch and running loss), on_step(line) after a stage of a run of many (a trial
    of the sparsity search, an LC step or round with its figures); silenced with the progress
    (-q). One-line messages the user must see go through ``Method.note``."""

    on_layer: Callable[[int, int, str], None] | None = None
    on_columns: Progress | None = None
    on_step: Callable[[str], None] | None = None


class Method:
    """The interface of a pruning method (see the module docstring).

    Class attributes: ``name`` (``--method NAME``); ``options``: the prune options it takes,
    by flag (``--epsilon``, ...), each given to ``__init__`` under its parameter name;
    ``hint``: one line added when an option it does not take is given; ``needs_acts``: False
    for a method that trains on labelled data (``--acts`` is then optional: its inputs are
    only the calibration set of the report's figures, and ``run`` gets None without it).
    """

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    hint: ClassVar[str] = ""
    needs_acts: ClassVar[bool] = True

    @staticmethod
    def note(text: str) -> None:
        """One line to the user (the CLI replaces this; the core never prints)."""

    def input_files(self) -> dict[str, str]:
        """Files the options name besides the model and the dump ({role: path}): recorded
        in the report and protected from being overwritten by an output."""
        return {}

    def load(self) -> None:  # noqa: B027
        """Read the files the options name and build the settings (after the outputs are
        checked, so that a bad output path is reported first)."""

    def start(self, ckpt: Checkpoint, acts_sha: str | None, output: str) -> None:  # noqa: B027
        """Called once the inputs are loaded and checked, before ``run``."""

    def sample(self, ckpt: Checkpoint, model_path: str) -> np.ndarray:
        """A few inputs to trace the network with when no activation dump is given (only
        asked of a method whose ``needs_acts`` is False)."""
        raise NotImplementedError

    def run(self, ckpt: Checkpoint, dump: DumpReader | None, hooks: RunHooks) -> MethodResult:
        raise NotImplementedError

    def check(self, result: MethodResult) -> None:  # noqa: B027
        """Raise to refuse writing ``result`` (e.g. ``--strict`` with failed columns)."""

    def finished(self) -> None:  # noqa: B027
        """The outputs are in place."""

    def abandoned(self, error: BaseException) -> None:  # noqa: B027
        """The run stopped with ``error`` before the outputs were written."""

    def warnings(self, result: MethodResult) -> list[str]:
        """Lines the user should read about the written result."""
        return []


def original_weights(ckpt: Checkpoint, info: LayerInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """The unit's weights as an (out, in) float64 matrix and its bias (the layer kind's view),
    with its BatchNorm folded in when it has one."""
    from nettrim_cli.layers.fold import unit_matrix

    return unit_matrix(ckpt.model, info.name, info.bn)


class ResumableMethod(Method):
    """A method whose progress is recorded in a work folder (``self.work``, opened by its
    ``start``): removed once the outputs are in place or when the inputs are bad, kept (and
    the user told how to continue) when the run is interrupted. ``kept`` says in words what
    the folder holds."""

    work = None
    kept: ClassVar[str] = "finished steps"

    def finished(self) -> None:
        if self.work is not None:
            # removed only once the outputs are in place: a kill in between loses nothing
            self.work.remove()

    def abandoned(self, error: BaseException) -> None:
        from nettrim_cli.errors import BadInput

        if self.work is None:
            return
        if isinstance(error, BadInput):
            self.work.remove()  # the inputs are bad: nothing worth resuming
        elif isinstance(error, KeyboardInterrupt):
            self.note(f"{self.kept} are kept in {self.work.path}; run the same command with "
                      "--resume to continue")
