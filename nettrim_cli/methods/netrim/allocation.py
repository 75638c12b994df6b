"""Per-layer eps for a target sparsity (``nettrim prune --sparsity S --allocation discrepancy``).

The problem: choose eps_l for every pruned unit so that together the units lose a fraction S
of their weights and the network's output discrepancy ||f_hat(X) - f(X)||_F on the calibration
inputs is as small as possible. One eps for every layer (``--allocation uniform``, target.py)
gives every layer the same relative misfit eps * ||Y_l||_F, whatever its weights cost and
however much its error moves the output: on the LeNet300 of docs/high-sparsity.md at 95% it
leaves the 10 x 100 output layer 32 weights and the 100 x 300 layer 930.

The curves. In parallel mode (Algorithm 1) a unit's program depends on its own eps only, so
each trial of a uniform search gives, for every unit l, a point (eps, k_l, d_l): the weights it
keeps and the network's output discrepancy with that unit alone pruned (one forward pass).

The allocation. With the units' output errors taken as uncorrelated (Theorem 1 bounds the
output discrepancy by a sum over layers; squares add when the errors are uncorrelated), the
problem becomes: minimise sum_l d_l(eps_l)^2 subject to sum_l k_l(eps_l) = K. Its Lagrangian
separates: for a multiplier mu every unit takes the eps minimising d_l^2 + mu k_l on a grid
(the curves interpolated linearly in log eps), and mu is set by bisection so that the total
kept is K (``allocate``).

The prune. The allocation fixes the ratios eps_l / max eps; target.py's search finds their
common scale whose prune lands within the tolerance of S, its first trial at the allocation
itself. In cascade mode (Algorithm 2) a later unit's eps is the larger of its allocated one and
eq. 7's (the original weights stay feasible on the pruned input). The measured output
discrepancy is reported next to the uniform search's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from nettrim_cli.checkpoint import Checkpoint, pruned_copy
from nettrim_cli.methods.base import MethodResult
from nettrim_cli.methods.network import outputs

GRID = 400  # eps values per curve the allocation chooses among


@dataclass
class Point:
    """One unit pruned at one eps: the weights it keeps and the network's output discrepancy
    with that unit alone pruned."""

    epsilon: float
    kept: int
    gap: float


class OutputGap:
    """The network's output discrepancy ||f_hat(X) - f(X)||_F on the calibration inputs when
    some units take pruned weights (the report's ``network.discrepancy``)."""

    def __init__(self, ckpt: Checkpoint, inputs: np.ndarray) -> None:
        self.ckpt, self.inputs = ckpt, inputs
        self.dense = outputs(ckpt.model, inputs)

    def __call__(self, weights: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> float:
        pruned = outputs(pruned_copy(self.ckpt, weights), self.inputs)
        return float(np.linalg.norm(pruned - self.dense))

    def points(self, result: MethodResult, epsilon: float) -> list[Point]:
        """Every unit of a parallel prune at ``epsilon``, each pruned alone."""
        return [Point(epsilon=epsilon, kept=int(np.count_nonzero(o.W)),
                      gap=self({o.info.name: (o.W, o.b)})) for o in result.layers]


def _curve(points: list[Point], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """kept and gap^2 of one unit on the eps grid: linear in log eps between the measured
    points, constant beyond them, made monotone (kept falls and gap grows with eps)."""
    pts = sorted(points, key=lambda p: p.epsilon)
    x = np.log([p.epsilon for p in pts])
    kept = np.minimum.accumulate(np.log1p([p.kept for p in pts]))
    gap = np.maximum.accumulate(np.array([p.gap for p in pts]) ** 2)
    g = np.log(grid)
    return np.expm1(np.interp(g, x, kept)), np.interp(g, x, gap)


def allocate(curves: list[list[Point]], budget: int) -> list[float]:
    """Per-unit eps minimising sum_l gap_l^2 with sum_l kept_l = ``budget`` (see the module
    docstring): the Lagrangian's minimiser per unit, the multiplier by bisection in log mu.

    Args:
        curves: per unit, the points measured (at least one each).
        budget: the weights all units keep together.
    Returns:
        each unit's eps, within the range of the eps measured.
    """
    lo = min(p.epsilon for c in curves for p in c)
    hi = max(p.epsilon for c in curves for p in c)
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), GRID)) if hi > lo else np.array([lo])
    tables = [_curve(c, grid) for c in curves]

    def choice(log_mu: float) -> tuple[list[int], float]:
        picks = [int(np.argmin(gap + math.exp(log_mu) * kept)) for kept, gap in tables]
        return picks, float(sum(t[0][j] for t, j in zip(tables, picks, strict=True)))

    scale = max(float(t[1].max()) for t in tables) / max(budget, 1)
    a, b = math.log(scale) - 40.0, math.log(scale) + 40.0  # total(a) >= budget >= total(b)
    best = None
    for _ in range(100):
        mid = 0.5 * (a + b)
        picks, total = choice(mid)
        if best is None or abs(total - budget) < abs(best[1] - budget):
            best = (picks, total)
        if total > budget:
            a = mid
        else:
            b = mid
    assert best is not None
    return [float(grid[j]) for j in best[0]]


def points_record(curves: list[list[Point]], names: list[str]) -> dict[str, list[dict]]:
    """The measured curves, per unit name, for the report."""
    return {n: [asdict(p) for p in sorted(c, key=lambda p: p.epsilon)]
            for n, c in zip(names, curves, strict=True)}
