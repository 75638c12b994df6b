"""The OSQP column solver (``--solver osqp``, the reference) behind the solver protocol: one
QP per output neuron (eq. 14), lambda searched to meet eps (``search.py``)."""

from __future__ import annotations

from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import (
    Capabilities,
    LayerSolution,
    Progress,
    SolverSettings,
    no_progress,
)


class OSQPSolver:
    name = "osqp"
    capabilities = Capabilities(journal=True, devices=("cpu", "cuda"), granularity="column")

    def solve(self, program: LayerProgram, settings: SolverSettings,
              progress: Progress = no_progress, journal=None) -> LayerSolution:
        from nettrim_cli.solvers.search import solve_layer

        return solve_layer(program, settings, progress, journal=journal)
