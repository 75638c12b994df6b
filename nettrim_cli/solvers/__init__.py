"""Layer solvers, chosen by name from a table (``SOLVERS``), each declaring its capabilities.

Adding a solver: a module with a class that follows ``base.LayerSolver`` (``name``,
``capabilities``, ``solve``) and one entry here.
"""

from __future__ import annotations

from nettrim_cli.registry import lookup
from nettrim_cli.solvers.base import LayerSolver

# name -> "module:class"; imported only when chosen (the ADMM solver pulls in torch)
SOLVERS: dict[str, str] = {
    "auto": "nettrim_cli.solvers.auto:AutoSolver",
    "osqp": "nettrim_cli.solvers.osqp_solver:OSQPSolver",
    "admm": "nettrim_cli.solvers.admm:ADMMSolver",
}


def solver_class(name: str) -> type[LayerSolver]:
    """The solver class registered as ``name`` (BadInput, exit 2, for an unknown name)."""
    return lookup(SOLVERS, name, "solver")


def make_solver(name: str, **options) -> LayerSolver:
    """An instance of the solver ``name`` with its options (e.g. ``device``, ``dtype``)."""
    return solver_class(name)(**options)
