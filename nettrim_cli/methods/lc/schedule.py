"""Iterative magnitude pruning: the rising sparsity schedule and the mask step.

Han, Pool, Tran, Dally, "Learning both weights and connections for efficient neural networks"
(NIPS 2015) reach their best results (HPTD) by pruning in rounds, retraining with the mask
fixed between rounds. Here the per-round sparsity rises on the cubic schedule of Zhu and
Gupta, "To prune, or not to prune" (2017, eq. 1),

    s_t = s_f + (s_i - s_f) (1 - t/n)^3,   t = 1 .. n,

which prunes most while the network is still redundant and little near the end, or in n
equal steps. It is applied to kept counts rather than to sparsities, so that the last round
lands exactly on the final per-layer counts (from ``--sparsity`` or matched to Net-Trim's).
Each round's mask step keeps the largest surviving magnitudes; a pruned weight never returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from nettrim_cli.methods.lc.compression import l0_support


class Ramp(StrEnum):
    CUBIC = "cubic"  # Zhu & Gupta 2017
    LINEAR = "linear"  # n equal rounds


def progress(t: int, rounds: int, ramp: Ramp = Ramp.CUBIC) -> float:
    """The fraction of the pruning done after round t of ``rounds`` (0 at t = 0, 1 at t = n):
    (s_t - s_i) / (s_f - s_i) = 1 - (1 - t/n)^3 for the cubic ramp, t/n for the linear one."""
    if not 0 <= t <= rounds:
        raise ValueError(f"round {t} outside [0, {rounds}]")
    x = t / rounds
    return 1.0 - (1.0 - x) ** 3 if Ramp(ramp) is Ramp.CUBIC else x


def final_counts(sizes: Sequence[int], sparsity: float | None = None,
                 counts: Sequence[int] | None = None) -> list[int]:
    """Weights each layer keeps at the end: a uniform ``sparsity`` (round((1 - s) size),
    halves up, as the one-shot baselines) or given ``counts`` (Net-Trim's, from --match)."""
    if (sparsity is None) == (counts is None):
        raise ValueError("give exactly one of sparsity and counts")
    if counts is None:
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity {sparsity} outside [0, 1]")
        return [int(np.floor((1.0 - sparsity) * int(n) + 0.5)) for n in sizes]
    if len(counts) != len(sizes):
        raise ValueError(f"{len(counts)} counts for {len(sizes)} layers")
    for n, c in zip(sizes, counts, strict=True):
        if not 0 <= c <= n:
            raise ValueError(f"count {c} outside [0, {n}]")
    return [int(c) for c in counts]


@dataclass(frozen=True)
class MagnitudeSchedule:
    """``rounds`` prune-and-retrain rounds on a ``ramp``.

    Ten rounds by default: Han et al. prune over several prune/retrain iterations, and ten
    lets the cubic ramp take steps of at most ~27% of the pruning (the first), 1/1000 at the
    last, while the total retraining stays comparable with LC's few epochs per LC step.
    """

    rounds: int = 10
    ramp: Ramp = Ramp.CUBIC

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"need at least one round, got {self.rounds}")
        object.__setattr__(self, "ramp", Ramp(self.ramp))

    def counts(self, start: Sequence[int], final: Sequence[int]) -> list[list[int]]:
        """Kept weights per round (rows t = 1 .. rounds) and layer (columns): from ``start``
        (the weights alive before round 1) down to ``final``, never rising, last row = final.
        Round t keeps start - round(progress_t * (start - final)), halves up."""
        if len(start) != len(final):
            raise ValueError(f"{len(start)} start counts for {len(final)} final counts")
        if any(f > s for s, f in zip(start, final, strict=True)):
            raise ValueError(f"a final count exceeds the weights alive: {final} > {start}")
        table = []
        for t in range(1, self.rounds + 1):
            p = progress(t, self.rounds, self.ramp)
            table.append([s - int(np.floor(p * (s - f) + 0.5))
                          for s, f in zip(start, final, strict=True)])
        return table

    def record(self) -> dict[str, object]:
        return {"rounds": self.rounds, "ramp": str(self.ramp)}


def prune_step(weights: np.ndarray, mask: np.ndarray, keep: int) -> np.ndarray:
    """The mask step of one round: the ``keep`` largest |w| among the positions ``mask``
    still keeps; positions already pruned stay pruned whatever their weight has become.

    Returns a new boolean mask of the weights' shape with exactly ``keep`` True; equal
    magnitudes keep the lower flat index.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.shape(weights):
        raise ValueError(f"mask shape {mask.shape} differs from weights {np.shape(weights)}")
    return l0_support(weights, keep, allowed=mask)
