"""Where a layer's columns are solved: executors, chosen by name from a table (``EXECUTORS``).

An executor is an object that a run creates and closes (``make_executor``); for every layer
the lambda search (``nettrim_cli/solvers/search.py``) asks it for an evaluator of the layer's
live columns and hands it the layer's context, the object that says how a column is solved.
An executor keeps only what outlives a layer (Ray's column actors); nothing here is a module
global changed at run time, and the executors know nothing of the solver beyond that context.

Adding an executor: a module with a class that follows ``ColumnExecutor`` and one entry here.
Parallel mode's layers as Ray tasks are ``ray_layers.RayLayers`` (not an executor of columns).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from nettrim_cli.registry import lookup

# name -> "module:class"; imported only when chosen (Ray is an optional extra)
EXECUTORS: dict[str, str] = {
    "local": "nettrim_cli.execution.local:LocalColumns",
    "ray": "nettrim_cli.execution.ray_columns:RayColumns",
}


class ColumnContext(Protocol):
    """What an executor needs of a layer (``search.LayerContext``)."""

    threads: int  # BLAS / torch threads of every column solve, wherever it runs
    settings: Any

    def work(self, m: int) -> Any:
        """Column m's problem, kept across evaluations: ``.solve(lam, polish)`` -> outcome."""
        ...

    def unsolved(self, m: int, status: str) -> Any:
        """The outcome of a column given up with ``status``: its original weights."""
        ...

    def without_input(self) -> ColumnContext:
        """The context without the layer's raw input (what a remote worker is sent)."""
        ...


class Evaluator(Protocol):
    """A layer's live columns, solved at the lambdas asked for."""

    n_workers: int  # the workers the layer's report names
    retries: int  # column solves repeated after a lost worker

    def evaluate(self, requests: dict[int, float], polish: bool,
                 progress: Callable[[int, int], None] | None = None,
                 on_result: Callable[[int, Any], None] | None = None) -> dict[int, Any]:
        """{column: outcome} for {column: lambda}; ``on_result`` as each column finishes."""
        ...

    def close(self) -> None: ...


class ColumnExecutor(Protocol):
    name: ClassVar[str]

    def evaluator(self, context: ColumnContext, columns: list[int],
                  workers: int | None) -> Evaluator:
        """An evaluator of ``columns`` for one layer; ``workers`` as asked (None or 0: all)."""
        ...

    def close(self) -> None:
        """End what outlives a layer (worker actors)."""
        ...


def make_executor(settings) -> ColumnExecutor:
    """The executor named by ``settings.executor`` (BadInput, exit 2, for an unknown name)."""
    return lookup(EXECUTORS, settings.executor, "executor").from_settings(settings)
