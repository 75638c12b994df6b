"""What `nettrim prune --method netrim` was asked to do."""

from __future__ import annotations

from dataclasses import dataclass, field

from nettrim_cli.solvers.base import SolverSettings

PARALLEL = "parallel"
CASCADE = "cascade"
UNIFORM = "uniform"
DISCREPANCY = "discrepancy"
ALLOCATIONS = (UNIFORM, DISCREPANCY)


@dataclass
class PruneSettings:
    """What `nettrim prune` was asked to do.

    epsilon: the relative eps_r: eps_l = epsilon * ||Y^(l)||_F per layer in parallel mode,
        eps_1 = epsilon * ||Y^(1)||_F in cascade mode (section 3.1).
    gamma: the inflation rate of eq. 7 (cascade, layers 2..L), >= 1.
    lam: a fixed lambda for eq. 11 instead of an eps (every layer).
    patches: the patch budget of each conv unit (None: ``unitdata.default_patches``).
    seed: seeds the patch sampling (with the unit index).
    allocation: how ``--sparsity`` spreads the pruning over the layers: ``discrepancy``
        (per-layer eps, ``allocation.py``; the default: on issue 16's networks at 90% and 95%,
        docs/high-sparsity-nets.md, the test accuracy after the default fine-tune rose by 0.3
        to 1.9 points on the conv nets on seed 0 and by -0.1 to 0.6 on seed 1, and moved by at
        most 0.3 on the MLPs) or ``uniform`` (one eps for every layer).
    epsilons: per-unit relative eps (the allocation's), replacing ``epsilon`` unit by unit;
        in cascade mode a later unit's eps is the larger of its own and eq. 7's.
    refit: refit every layer's kept weights on their support (nettrim_cli/solvers/sharpen.py);
        on by default in parallel mode (config.py: in cascade mode eq. 7 would give the later
        layers almost no eps): measured, it lowers the discrepancy and raises the test accuracy
        at the same sparsity (docs/sharpen.md) for a few seconds a layer.
    reweight: rounds of reweighted l1 after each layer's solve (0: none; needs an eps).
    """

    mode: str = CASCADE
    epsilon: float | None = 0.05
    gamma: float = 1.1
    lam: float | None = None
    solver: SolverSettings = field(default_factory=SolverSettings)
    patches: int | None = None
    seed: int = 0
    allocation: str = DISCREPANCY
    epsilons: tuple[float, ...] | None = None
    refit: bool = True
    reweight: int = 0
