"""The OSQP column solver (``--solver osqp``, the reference) behind the solver protocol: one
QP per output neuron (eq. 14), lambda searched to meet eps (``search.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import (
    Capabilities,
    LayerSolution,
    Progress,
    SolverSettings,
    no_progress,
)

if TYPE_CHECKING:
    from nettrim_cli.execution import ColumnExecutor


class OSQPSolver:
    """Args:
        executor: where the columns are solved, made and closed by the run that owns it
            (``nettrim_cli.execution.make_executor``; Ray's column actors then serve every
            layer); None: an executor made from ``settings.executor`` for each layer.
    """

    name = "osqp"
    capabilities = Capabilities(journal=True, devices=("cpu", "cuda"), granularity="column")

    def __init__(self, executor: ColumnExecutor | None = None) -> None:
        self.executor = executor

    def solve(self, program: LayerProgram, settings: SolverSettings,
              progress: Progress = no_progress, journal=None) -> LayerSolution:
        from nettrim_cli.solvers.search import solve_layer

        return solve_layer(program, settings, progress, journal=journal, executor=self.executor)

    def __getstate__(self) -> dict:
        # shipped to a Ray task (parallel mode) without the run's executor: it stays with
        # the process that made it
        return {"executor": None}
