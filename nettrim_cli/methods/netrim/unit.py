"""A unit's layer program(s): Linear or conv, BN folded, residual term, patch budget.

For unit l with folded pre-activation z' (``nettrim_cli.layers.fold``) and residual term s
(zero without one) the network computes relu(z' + s). Eq. 3 for the pruned weights U then
reads: U^T x = y - s = z' on the active set Omega = {z' + s > 0}, and U^T x <= -s on the
inactive set, i.e. the target is z' on Omega and V = -s. Without a residual this is the
paper's program (Y = relu(z'), V = 0). In cascade mode (Algorithm 2) the input is the pruned
network's and V = W^T x_hat + b (the original weights stay feasible); with a residual V is
max(-s, W^T x_hat + b), s taken from the original network.

A conv unit with ``groups = g`` is g independent programs (one per group of output
channels, each on its own input channels' patches), each with eps_j = eps * ||Y_j|| / ||Y||,
so that the unit's constraint sqrt(sum_j c_j^2) stays within eps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from torch import nn

from nettrim_cli.graph import LayerInfo
from nettrim_cli.layers.conv import group_columns, group_rows, positions
from nettrim_cli.program import RELU, LayerProgram
from nettrim_cli.solvers.base import LayerSolution
from nettrim_cli.unitdata import UnitView, default_patches, sample_rows, unit_output


@dataclass
class UnitPrograms:
    """The programs of one unit: ``parts`` as (weight rows, program), the data they came from,
    the unit's eps and ||Y||_F on those rows."""

    parts: list[tuple[slice, LayerProgram]]
    view: UnitView
    epsilon: float | None
    y_norm: float
    full: tuple | None = None  # conv: (module, input, z' and s on every patch)


def patch_budget(info: LayerInfo, patches: int | None) -> int | None:
    """The unit's patch budget: ``patches`` (--patches / the preset), else the default that
    fits memory; None for a Linear unit (every sample)."""
    if info.kind != "conv":
        return None
    return patches if patches is not None else default_patches(info.in_features)


def unit_rows(info: LayerInfo, n_samples: int, patches: int | None, seed: int, index: int
              ) -> np.ndarray | None:
    """The sampled rows of unit ``index`` (seeded by the preset's seed and the unit index)."""
    return sample_rows(n_samples, info.out_shape, patch_budget(info, patches), (seed, index))


def rows_used(info: LayerInfo, n_samples: int, patches: int | None) -> int:
    total = n_samples * (positions(info.out_shape) if info.kind == "conv" else 1)
    budget = patch_budget(info, patches)
    return total if budget is None else min(total, budget)


def build(info: LayerInfo, module: nn.Module, view: UnitView, W0: np.ndarray,
          b0: np.ndarray | None, cascade: bool, epsilon: float | None, gamma: float,
          lam: float | None, relative: bool = False) -> UnitPrograms:
    """The unit's program(s) from its data (eq. 3 with the residual term, or least squares).

    ``epsilon``: the relative eps (eps = epsilon * ||Y||_F) unless ``cascade``, where eq. 7
    gives eps from ``gamma`` (with ``relative``, the larger of the two: the original weights
    stay feasible); with ``lam`` no eps at all."""
    relu = info.activation == RELU
    Z, S, X = view.Z, view.S, view.X
    active = (Z + (S if S is not None else 0.0) > 0) if relu else np.ones(Z.shape, bool)
    Y = np.where(active, Z, 0.0) if relu else Z
    y_norm = float(np.linalg.norm(Y))
    groups = info.groups if info.kind == "conv" else 1
    parts, eps2 = [], 0.0
    for g in range(groups):
        rows = group_rows(module, g) if groups > 1 else slice(None)
        cols = group_columns(module, g) if groups > 1 else slice(None)
        Xg = np.ascontiguousarray(X[:, cols])
        Yg, act, Sg = Y[:, rows], active[:, rows], None if S is None else S[:, rows]
        bg = None if b0 is None else b0[rows]
        # Algorithm 2: the original weights on the pruned network's input (also eq. 7's eps)
        Vc = Xg @ W0[rows].T + (bg if bg is not None else 0.0) if cascade else None
        Vg = None
        if relu and cascade:
            Vg = Vc if Sg is None else np.maximum(Vc, -Sg)
        elif relu and Sg is not None:
            Vg = -Sg
        eps = None
        if lam is None:
            if cascade:  # eq. 7: eps^2 = gamma * sum over the active set of (w^T yhat - y)^2
                eps = float(np.sqrt(gamma * np.sum(np.where(act, Vc - Yg, 0.0) ** 2)))
                if relative:
                    eps = max(eps, epsilon * float(np.linalg.norm(Yg)))
            else:
                eps = epsilon * float(np.linalg.norm(Yg))
            eps2 += eps ** 2
        name = info.name if groups == 1 else f"{info.name}[group {g}]"
        parts.append((rows, LayerProgram(
            X=Xg, Y=Yg, W0=W0[rows], b0=bg, activation=info.activation, V=Vg,
            epsilon=eps, lam=lam, name=name, active_set=act)))
    return UnitPrograms(parts=parts, view=view, y_norm=y_norm,
                        epsilon=None if lam is not None else float(np.sqrt(eps2)))


def combine(unit: UnitPrograms, solutions: list[LayerSolution]) -> LayerSolution:
    """One solution for the unit from its parts' (groups stacked in channel order)."""
    if len(solutions) == 1:
        return solutions[0]
    first = solutions[0]
    failed, offset = [], 0
    for (_, program), sol in zip(unit.parts, solutions, strict=True):
        failed += [{**f, "column": f["column"] + offset} for f in sol.failed]
        offset += program.n_out
    lams = [s.lam for s in solutions]
    per_col = [lam for (_, p), lam in zip(unit.parts, lams, strict=True)
               for lam in (lam if isinstance(lam, list) else [lam] * p.n_out)]
    return dataclasses.replace(
        first, Wa=np.vstack([s.Wa for s in solutions]),
        lam=lams[0] if all(v == lams[0] for v in lams) else per_col,
        constraint=float(np.sqrt(sum(s.constraint ** 2 for s in solutions))),
        status=[st for s in solutions for st in s.status], failed=failed,
        solves=sum(s.solves for s in solutions), retries=sum(s.retries for s in solutions),
        iterations=sum(s.iterations for s in solutions),
        seconds=sum(s.seconds for s in solutions),
        dead_columns=sum(s.dead_columns for s in solutions),
        eps_reached=all(s.eps_reached for s in solutions))


def sampled_discrepancy(unit: UnitPrograms, activation: str, W: np.ndarray,
                        b: np.ndarray | None) -> float:
    """||Yhat - Y||_F on the program's rows, Y = act(z' + s) (Proposition 1's left side)."""
    v = unit.view
    Zhat = v.X @ W.T + (b if b is not None else 0.0) if v.X.shape[1] == W.shape[1] else None
    if Zhat is None:  # grouped conv: each group on its own columns
        Zhat = np.zeros_like(v.Z)
        for rows, p in unit.parts:
            Zhat[:, rows] = p.design.dense() @ W[rows].T + (b[rows] if b is not None else 0.0)
    return float(np.linalg.norm(unit_output(Zhat, v.S, activation)
                                - unit_output(v.Z, v.S, activation)))
