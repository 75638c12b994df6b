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
from nettrim_cli.layers.fold import write_unit
from nettrim_cli.methods.base import LayerResult, original_weights
from nettrim_cli.methods.netrim.settings import CASCADE, PARALLEL, PruneSettings
from nettrim_cli.methods.netrim.unit import (
    UnitPrograms,
    build,
    combine,
    sampled_discrepancy,
    unit_rows,
)
from nettrim_cli.program import PROGRAMS
from nettrim_cli.solvers.base import LayerSolution, LayerSolver, Progress, no_progress
from nettrim_cli.unitdata import folded_preact, full_discrepancy, unit_view
from nettrim_cli.workdir import WorkDir, solution_from_meta, solution_meta


class _Captured(Exception):
    """Stops a forward pass once the wanted layer's input is recorded."""


class PrunedPrefix:
    """Algorithm 2's view of the network: one working copy of the model whose units are
    replaced by their pruned weights as they are solved, so that a unit's input is collected
    by one forward pass over the pruned prefix only (the pass stops at the unit)."""

    def __init__(self, ckpt: Checkpoint, inputs: np.ndarray, batch_size: int = 1024) -> None:
        self.model = copy.deepcopy(ckpt.model).eval()
        self.inputs, self.batch_size = inputs, batch_size

    def set(self, info: LayerInfo, W: np.ndarray, b: np.ndarray | None) -> None:
        """Unit ``info`` takes its pruned (folded) weights."""
        write_unit(self.model, info.name, W, b, info.bn)

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


def unit_programs(ckpt: Checkpoint, dump: DumpReader, prefix: PrunedPrefix | None,
                  settings: PruneSettings, i: int, info: LayerInfo, W0: np.ndarray,
                  b0: np.ndarray | None) -> UnitPrograms:
    """Unit i's program(s) (Algorithm 1, or 2 with ``prefix``) on its sampled rows."""
    cascade = settings.mode == CASCADE and i > 0
    x = prefix.layer_input(info.name) if cascade else dump.layer_input(i)
    module = ckpt.module(info.name)
    bn = ckpt.module(info.bn) if info.bn else None
    preact, shortcut = dump.layer_preact(i), dump.layer_shortcut(i)
    rows = unit_rows(info, dump.n_samples, settings.patches, settings.seed, i)
    view = unit_view(module, bn, x, preact, shortcut, rows)
    eps = settings.epsilon if settings.epsilons is None else settings.epsilons[i]
    unit = build(info, module, view, W0, b0, cascade, eps, settings.gamma, settings.lam,
                 relative=cascade and settings.epsilons is not None)
    if info.kind == "conv":
        unit.full = (module, x, folded_preact(preact, bn), shortcut)
    return unit


def solve_unit(solver: LayerSolver, unit: UnitPrograms, settings: PruneSettings,
               progress: Progress, journal) -> LayerSolution:
    """Each part (a grouped conv's groups) solved in turn; one solution for the unit."""
    sols = [solver.solve(program, settings.solver, progress,
                         journal=journal if len(unit.parts) == 1 else None)
            for _, program in unit.parts]
    return combine(unit, sols)


def solved(i: int, info: LayerInfo, unit: UnitPrograms, sol: LayerSolution, W0, b0,
           seconds: float, workdir: WorkDir | None) -> LayerResult:
    """A solved unit's result, recorded in the work folder."""
    n_in = W0.shape[1]
    W = sol.Wa[:, :n_in].copy()
    b = sol.Wa[:, n_in].copy() if b0 is not None else None
    figures = {"rows": unit.view.used, "rows_total": unit.view.total}
    if unit.full is not None:
        module, x, Z_all, S_all = unit.full
        disc, norm = full_discrepancy(module, x, W, b, Z_all, S_all, info.activation)
        figures.update(discrepancy_all=disc, output_norm_all=norm)
    result = LayerResult(info=info, W=W, b=b, W0=W0, epsilon=unit.epsilon, solution=sol,
                         discrepancy=sampled_discrepancy(unit, info.activation, W, b),
                         y_norm=unit.y_norm, seconds=seconds,
                         program=program_text(info), record=figures)
    if workdir is not None:
        workdir.save_layer(i, {"W": W, "b": b, "Wa": sol.Wa}, {
            "name": info.name, "epsilon": unit.epsilon, "discrepancy": result.discrepancy,
            "y_norm": unit.y_norm, "seconds": result.seconds, "figures": figures,
            "solution": solution_meta(sol)})
    return result


def program_text(info: LayerInfo) -> str:
    """The report's ``program``: eq. 3 or least squares, with what was folded or added."""
    text = PROGRAMS[info.activation]
    extra = [f"{info.bn} folded"] if info.bn else []
    if info.shortcut:
        extra.append(f"residual {info.shortcut}: target y - s, V = -s")
    return f"{text}; {', '.join(extra)}" if extra else text


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
                       seconds=meta["seconds"], program=program_text(info),
                       record=dict(meta.get("figures") or {}))


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
            unit = unit_programs(ckpt, dump, prefix, settings, i, info, W0, b0)
            journal = (workdir.journal(i) if workdir is not None
                       and solver.capabilities.journal else None)
            sol = solve_unit(solver, unit, settings, progress, journal)
            result = solved(i, info, unit, sol, W0, b0, time.perf_counter() - t0, workdir)
            del unit
        if prefix is not None:
            prefix.set(info, result.W, result.b)
        out.append(result)
    return out
