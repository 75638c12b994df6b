"""The Learning-Compression loop, apart from its L and C steps.

Carreira-Perpinan and Idelbayev, "'Learning-Compression' algorithms for neural net pruning"
(CVPR 2018). Pruning is the constrained problem

    min_{w, theta}  L(w)  s.t.  w = theta,  theta compressed (``CStep``),

solved by the augmented Lagrangian (or, with the multipliers held at zero, the quadratic
penalty) method, alternating for a rising mu_k = mu_0 a^k, k = 0 .. K-1:

- L step (the caller's training): w = argmin_w L(w) + (mu/2) ||w - theta - lambda/mu||^2;
- C step (closed form):            theta = C(w - lambda/mu) at mu;
- multipliers:                     lambda <- lambda - mu (w - theta)   (augmented Lagrangian).

It starts from the direct compression theta = C(w), lambda = 0, and ends with theta, which is
exactly sparse; the caller then sets w = theta (and may fine-tune with theta's mask fixed).
The loop knows nothing about data, models or the training loop: the weights are a list of
arrays (numpy, or torch tensors that the L step trains in place), and the L step is a callable
``l_step(mu, targets)`` that trains them towards ``targets = theta + lambda/mu``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from nettrim_cli.methods.lc.compression import CStep

Weights = Sequence[np.ndarray] | Sequence[torch.Tensor]
# trains the weights in place towards the targets at penalty parameter mu; may return figures
# (loss, accuracy, ...) to keep in the step's record
LStep = Callable[[float, list[np.ndarray]], Mapping[str, Any] | None]


class Variant(StrEnum):
    AUGMENTED_LAGRANGIAN = "augmented-lagrangian"
    QUADRATIC_PENALTY = "quadratic-penalty"


@dataclass(frozen=True)
class MuSchedule:
    """mu_k = mu0 * a^k for the LC steps k = 0 .. steps-1.

    The class defaults are the LC toolkit's LeNet300 example on MNIST (mu0 = 9e-5, a = 1.1,
    40 steps), for a mean cross-entropy loss per mini-batch. `nettrim prune --method lc` has
    its own defaults (``lc_method.LC.DEFAULTS``), chosen by measurement on Fashion-MNIST with a
    20-epoch budget (docs/results.md): over 20 steps the toolkit's schedule ends at
    mu ~ 5.5e-4, too small to bring w onto theta there (||w - theta|| grew from 23 to 38).
    A loss on another scale (a sum over the batch, a regression loss) needs mu0 scaled with
    it. Too fast a growth (large a) freezes w onto an early theta: each mu gets one L and one
    C step, and once mu dwarfs the loss's curvature the multipliers stop moving.
    """

    mu0: float = 9e-5
    a: float = 1.1
    steps: int = 40

    def __post_init__(self) -> None:
        if not (self.mu0 > 0 and self.a >= 1 and self.steps >= 0):
            raise ValueError(f"need mu0 > 0, a >= 1, steps >= 0; got {self}")

    def mu(self, k: int) -> float:
        return self.mu0 * self.a ** k


@dataclass
class LCState:
    """Where the loop stands after ``step`` LC steps (0: after the direct compression).

    Plain arrays (``arrays()``) plus a small JSON-able dict (``record()``), so that a caller
    can store it beside its model checkpoint and resume with ``LearningCompression.run``.
    """

    step: int
    theta: list[np.ndarray]
    multipliers: list[np.ndarray]  # lambda, one per layer (zeros for the quadratic penalty)
    settings: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        named = {f"theta_{i}": t for i, t in enumerate(self.theta)}
        named.update({f"multipliers_{i}": m for i, m in enumerate(self.multipliers)})
        return named

    def record(self) -> dict[str, Any]:
        return {"step": self.step, "settings": self.settings, "history": self.history}

    @classmethod
    def from_parts(cls, arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> LCState:
        n = sum(1 for name in arrays if name.startswith("theta_"))
        return cls(step=int(record["step"]),
                   theta=[np.array(arrays[f"theta_{i}"], dtype=np.float64) for i in range(n)],
                   multipliers=[np.array(arrays[f"multipliers_{i}"], dtype=np.float64)
                                for i in range(n)],
                   settings=dict(record["settings"]),
                   history=[dict(h) for h in record["history"]])


def read_weights(weights: Weights) -> list[np.ndarray]:
    """float64 copies of the current weights (numpy arrays or torch tensors, any device)."""
    return [w.detach().cpu().to(torch.float64).numpy().copy() if torch.is_tensor(w)
            else np.array(w, dtype=np.float64, copy=True) for w in weights]


def _distance(w: list[np.ndarray], theta: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(w, theta, strict=True))))


@dataclass(frozen=True)
class LearningCompression:
    """The LC loop for one C step, one mu schedule and one variant."""

    c_step: CStep
    schedule: MuSchedule = MuSchedule()
    variant: Variant = Variant.AUGMENTED_LAGRANGIAN

    def settings(self) -> dict[str, Any]:
        return {"c_step": self.c_step.record(), "mu0": self.schedule.mu0,
                "a": self.schedule.a, "steps": self.schedule.steps,
                "variant": str(Variant(self.variant))}

    def start(self, weights: Weights) -> LCState:
        """Direct compression: theta = C(w), lambda = 0. The C step is taken at mu0 (the
        constraint forms do not depend on mu; the penalty forms would give theta = 0 at 0)."""
        w = read_weights(weights)
        mu = self.schedule.mu0
        theta = self.c_step(w, mu)
        state = LCState(step=0, theta=theta, multipliers=[np.zeros_like(x) for x in w],
                        settings=self.settings())
        state.history.append(self._figures(0, mu, w, theta))
        return state

    def step(self, state: LCState, weights: Weights, l_step: LStep) -> LCState:
        """LC step k = state.step: L step at mu_k, C step, multiplier update."""
        k = state.step
        mu = self.schedule.mu(k)
        targets = [t + m / mu for t, m in zip(state.theta, state.multipliers, strict=True)]
        figures = l_step(mu, targets) or {}
        w = read_weights(weights)
        shifted = [x - m / mu for x, m in zip(w, state.multipliers, strict=True)]
        theta = self.c_step(shifted, mu)
        if self.variant == Variant.AUGMENTED_LAGRANGIAN:
            multipliers = [m - mu * (x - t)
                           for m, x, t in zip(state.multipliers, w, theta, strict=True)]
        else:
            multipliers = state.multipliers
        history = [*state.history, {**figures, **self._figures(k + 1, mu, w, theta)}]
        return LCState(step=k + 1, theta=theta, multipliers=multipliers,
                       settings=state.settings, history=history)

    def run(self, weights: Weights, l_step: LStep, resume: LCState | None = None,
            on_step: Callable[[LCState], None] | None = None) -> LCState:
        """Run (or resume) the loop to the last step; returns the final state, whose theta is
        the pruned weights. ``on_step`` sees the state after the direct compression and after
        each LC step (to store it). To resume, pass a stored state and the weights as they
        were when it was stored; the result is then the same as an uninterrupted run's
        provided the L step is deterministic given (mu, targets, the step's weights)."""
        if resume is None:
            state = self.start(weights)
            if on_step is not None:
                on_step(state)
        else:
            self._check_resumable(resume, weights)
            state = resume
        while state.step < self.schedule.steps:
            state = self.step(state, weights, l_step)
            if on_step is not None:
                on_step(state)
        return state

    def _check_resumable(self, state: LCState, weights: Weights) -> None:
        if state.settings != self.settings():
            raise ValueError(f"cannot resume: the stored LC settings {state.settings} differ "
                             f"from these {self.settings()}")
        shapes = [tuple(w.shape) for w in weights]
        if [t.shape for t in state.theta] != shapes:
            raise ValueError("cannot resume: the stored theta does not fit the weights' shapes")
        if not 0 <= state.step <= self.schedule.steps:
            raise ValueError(f"cannot resume at step {state.step} of {self.schedule.steps}")

    @staticmethod
    def _figures(step: int, mu: float, w: list[np.ndarray],
                 theta: list[np.ndarray]) -> dict[str, Any]:
        return {"step": step, "mu": mu, "distance": _distance(w, theta),
                "nonzeros": int(sum(np.count_nonzero(t) for t in theta)),
                "nonzeros_per_layer": [int(np.count_nonzero(t)) for t in theta]}
