"""Algorithms 1 (parallel) and 2 (cascade) of the paper: walk the units, build each unit's
program, call a solver, collect what happened. No files, no printing: progress goes out
through callbacks.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch

from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.dump import DumpReader
from nettrim_cli.errors import BadInput
from nettrim_cli.graph import LayerInfo
from nettrim_cli.layers import kind_of
from nettrim_cli.methods.base import LayerResult, original_weights
from nettrim_cli.methods.netrim.settings import CASCADE, PARALLEL, PruneSettings
from nettrim_cli.program import PROGRAMS, RELU, LayerProgram
from nettrim_cli.solvers.base import LayerSolution, LayerSolver, Progress, no_progress
from nettrim_cli.workdir import WorkDir, solution_from_meta, solution_meta


def _target(preact: np.ndarray, activation: str) -> np.ndarray:
    return np.maximum(preact, 0.0) if activation == RELU else preact


def _active_set(Y: np.ndarray, activation: str) -> np.ndarray:
    """Omega of eq. 3 from the layer's target: the one place it is computed from outputs."""
    return Y > 0 if activation == RELU else np.ones_like(Y, dtype=bool)


class _Captured(Exception):
    """Stops a forward pass once the wanted layer's input is recorded."""


class PrunedPrefix:
    """Algorithm 2's view of the network: one working copy of the model whose units are
    replaced by their pruned weights as they are solved, so that a unit's input is collected
    by one forward pass over the pruned prefix only (the pass stops at the unit)."""

    def __init__(self, ckpt: Checkpoint, inputs: np.ndarray, batch_size: int = 1024) -> None:
        self.model = copy.deepcopy(ckpt.model).eval()
        self.inputs, self.batch_size = inputs, batch_size

    def set(self, name: str, W: np.ndarray, b: np.ndarray | None) -> None:
        mod = self.model.get_submodule(name)
        kind_of(mod).write(mod, W, b)

    def layer_input(self, name: str) -> np.ndarray:
        """The input of unit ``name`` when the pruned prefix runs on the calibration inputs."""
        mod = self.model.get_submodule(name)
        parts: list[np.ndarray] = []

        def capture(m, args):
            parts.append(args[0].detach().cpu().numpy().astype(np.float64))
            raise _Captured

        handle = mod.register_forward_pre_hook(capture)
        try:
            with torch.no_grad():
                for start in range(0, self.inputs.shape[0], self.batch_size):
                    xb = torch.as_tensor(np.asarray(self.inputs[start:start + self.batch_size],
                                                    dtype=np.float32))
                    try:
                        self.model(xb)
                    except _Captured:
                        pass
        finally:
            handle.remove()
        return np.concatenate(parts, axis=0)


def layer_program(dump: DumpReader, prefix: PrunedPrefix | None, settings: PruneSettings,
                  i: int, info: LayerInfo, W0: np.ndarray, b0: np.ndarray | None
                  ) -> tuple[LayerProgram, float | None, float]:
    """Unit i's program (Algorithm 1 or 2), its eps and ||Y||_F."""
    Y = _target(dump.layer_preact(i), info.activation)
    if settings.mode == PARALLEL or i == 0:
        X = dump.layer_input(i)
        V = None
    else:
        # Algorithm 2: the pruned network's own input to this unit, and V = W^T Yhat
        X = prefix.layer_input(info.name)
        V = X @ W0.T + (b0 if b0 is not None else 0.0)
    y_norm = float(np.linalg.norm(Y))
    active = _active_set(Y, info.activation)
    eps = None
    if settings.lam is None:
        if settings.mode == PARALLEL or i == 0:
            eps = settings.epsilon * y_norm
        else:
            # eq. 7: eps_l^2 = gamma * sum over the active set of (w^T yhat - y)^2
            eps = float(np.sqrt(settings.gamma * np.sum(np.where(active, V - Y, 0.0) ** 2)))
    program = LayerProgram(X=X, Y=Y, W0=W0, b0=b0, activation=info.activation,
                           V=V if info.activation == RELU else None, epsilon=eps,
                           lam=settings.lam, name=info.name, active_set=active)
    return program, eps, y_norm


def solved(i: int, info: LayerInfo, program: LayerProgram, sol: LayerSolution, W0, b0,
           eps: float | None, y_norm: float, seconds: float,
           workdir: WorkDir | None) -> LayerResult:
    """A solved unit's result, recorded in the work folder."""
    n_in = program.n_in
    W = sol.Wa[:, :n_in].copy()
    b = sol.Wa[:, n_in].copy() if b0 is not None else None
    result = LayerResult(info=info, W=W, b=b, W0=W0, epsilon=eps, solution=sol,
                         discrepancy=program.discrepancy(sol.Wa), y_norm=y_norm,
                         seconds=seconds, program=PROGRAMS[info.activation])
    if workdir is not None:
        workdir.save_layer(i, {"W": W, "b": b, "Wa": sol.Wa}, {
            "name": info.name, "epsilon": eps, "discrepancy": result.discrepancy,
            "y_norm": y_norm, "seconds": result.seconds, "solution": solution_meta(sol)})
    return result


def recorded(info: LayerInfo, record, W0, b0) -> LayerResult:
    """A unit finished by an earlier, interrupted run, as recorded in the work folder."""
    arrays, meta = record
    W, Wa = arrays.get("W"), arrays.get("Wa")
    b = arrays.get("b")
    if (meta.get("name") != info.name or W is None or Wa is None or W.shape != W0.shape
            or (b is None) != (b0 is None)):
        raise BadInput(f"the work folder's record of layer {info.name} does not fit the model; "
                       "remove the folder to start over")
    return LayerResult(info=info, W=W, b=b, W0=W0, epsilon=meta["epsilon"],
                       solution=solution_from_meta(meta["solution"], Wa),
                       discrepancy=meta["discrepancy"], y_norm=meta["y_norm"],
                       seconds=meta["seconds"], program=PROGRAMS[info.activation])


def check_settings(settings: PruneSettings) -> None:
    if settings.mode not in (PARALLEL, CASCADE):
        raise BadInput(f"unknown mode {settings.mode!r}; use parallel or cascade")
    if settings.mode == CASCADE and settings.gamma < 1.0:
        raise BadInput(f"gamma must be >= 1 (eq. 7), got {settings.gamma}")
    if (settings.epsilon is None) == (settings.lam is None):
        raise BadInput("give exactly one of --epsilon and --lambda")


def run_in_order(ckpt: Checkpoint, dump: DumpReader, settings: PruneSettings,
                 solver: LayerSolver, on_layer: Callable[[int, int, str], None] | None = None,
                 progress: Progress = no_progress, workdir: WorkDir | None = None
                 ) -> list[LayerResult]:
    """Algorithm 1 or 2 with the units solved one after the other, in forward order; cascade
    mode feeds each solved unit's weights into the pruned prefix before the next unit."""
    prunable = ckpt.prunable
    prefix = PrunedPrefix(ckpt, dump.inputs()) if settings.mode == CASCADE else None
    out: list[LayerResult] = []
    for i, info in enumerate(prunable):
        if on_layer is not None:
            on_layer(i, len(prunable), info.name)
        t0 = time.perf_counter()
        W0, b0 = original_weights(ckpt, info)
        record = workdir.load_layer(i) if workdir is not None else None
        if record is not None:
            result = recorded(info, record, W0, b0)
        else:
            program, eps, y_norm = layer_program(dump, prefix, settings, i, info, W0, b0)
            journal = (workdir.journal(i) if workdir is not None
                       and solver.capabilities.journal else None)
            sol = solver.solve(program, settings.solver, progress, journal=journal)
            result = solved(i, info, program, sol, W0, b0, eps, y_norm,
                            time.perf_counter() - t0, workdir)
        if prefix is not None:
            prefix.set(info.name, result.W, result.b)
        out.append(result)
    return out
