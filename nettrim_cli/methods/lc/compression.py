"""The C steps of Learning-Compression pruning, in closed form.

Carreira-Perpinan and Idelbayev, "'Learning-Compression' algorithms for neural net pruning"
(CVPR 2018). Given the weights ``v = w - lambda / mu`` after an L step, the C step finds the
compressed copy theta closest to them:

- constraint forms:  min_theta ||v - theta||^2  s.t.  C(theta) <= kappa;
- penalty forms:     min_theta (mu/2) ||v - theta||^2 + alpha C(theta);

with C = ||.||_0 or ||.||_1. Each function below solves one of these exactly on one array of
any shape (a conv kernel as it is) and returns a new array; the input is never modified.
``CStep`` applies one of them per layer or over one joint budget for several layers (LC's
global allocation: concatenate, compress, split).

These are numpy float64 functions, not torch ones: a C step runs once per LC step (not per
mini-batch), so moving the weights to the host costs little beside an epoch of SGD, while
float64 keeps the closed forms exact enough to test against brute force, and the LC state
built from them stays plain arrays that a caller can store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Form(StrEnum):
    """The four compressions of LC pruning (the CLI's ``--form`` values)."""

    L0_CONSTRAINT = "l0-constraint"
    L1_CONSTRAINT = "l1-constraint"
    L0_PENALTY = "l0-penalty"
    L1_PENALTY = "l1-penalty"

    @property
    def is_constraint(self) -> bool:
        return self in (Form.L0_CONSTRAINT, Form.L1_CONSTRAINT)


def _float(v: np.ndarray) -> np.ndarray:
    return np.array(v, dtype=np.float64, copy=True)


def l0_support(v: np.ndarray, kappa: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the ``kappa`` largest |v| (among the ``allowed`` positions if given).

    Exactly ``kappa`` positions are True. Equal magnitudes are broken deterministically: the
    lower flat (C-order) index is kept, as in the one-shot magnitude baseline.
    """
    a = np.abs(np.asarray(v, dtype=np.float64)).ravel()
    if allowed is None:
        candidates = np.arange(a.size)
    else:
        candidates = np.flatnonzero(np.asarray(allowed, dtype=bool).ravel())
    kappa = int(kappa)
    if not 0 <= kappa <= candidates.size:
        raise ValueError(f"kappa {kappa} outside [0, {candidates.size}]")
    order = np.argsort(-a[candidates], kind="stable")  # stable: ties keep index order
    mask = np.zeros(a.size, dtype=bool)
    mask[candidates[order[:kappa]]] = True
    return mask.reshape(np.shape(v))


def l0_constraint(v: np.ndarray, kappa: int) -> np.ndarray:
    """min_theta ||v - theta||^2  s.t.  ||theta||_0 <= kappa.

    Solution: keep the kappa entries of largest magnitude, zero the rest (the error is the sum
    of the dropped v_i^2, smallest when the dropped ones are the smallest). Ties: the lower
    flat index is kept (``l0_support``). At most kappa nonzeros; exactly kappa when v has at
    least kappa nonzeros.
    """
    out = _float(v)
    out[~l0_support(out, min(int(kappa), out.size))] = 0.0
    return out


def l1_constraint(v: np.ndarray, kappa: float) -> np.ndarray:
    """min_theta ||v - theta||^2  s.t.  ||theta||_1 <= kappa: the Euclidean projection onto the
    l1 ball of radius kappa (Duchi, Shalev-Shwartz, Singer, Chandra, ICML 2008, Fig. 1).

    Solution: v itself when ||v||_1 <= kappa; otherwise the soft threshold
    theta_i = sign(v_i) max(|v_i| - tau, 0) with tau > 0 such that ||theta||_1 = kappa. With u
    the magnitudes sorted in decreasing order, rho = max{j : u_j > (sum_{r<=j} u_r - kappa)/j}
    is the size of the support and tau = (sum_{r<=rho} u_r - kappa) / rho.
    """
    kappa = float(kappa)
    if kappa < 0:
        raise ValueError(f"kappa must be >= 0, got {kappa}")
    out = _float(v)
    a = np.abs(out)
    if a.sum() <= kappa:
        return out
    if kappa == 0.0:
        return np.zeros_like(out)
    u = np.sort(a.ravel())[::-1]
    cumulative = np.cumsum(u)
    j = np.arange(1, u.size + 1)
    rho = int(np.flatnonzero(u * j > cumulative - kappa)[-1]) + 1
    tau = (cumulative[rho - 1] - kappa) / rho
    # One Newton step on f(tau) = sum max(u - tau, 0) - kappa, exact while the support stays
    # the same: it removes the rounding of the cumulative sum, so ||theta||_1 = kappa to a few
    # ulps instead of drifting with the length of v.
    support = a > tau
    tau += (float(np.sum(a[support] - tau)) - kappa) / int(support.sum())
    return np.sign(out) * np.maximum(a - tau, 0.0)


def l0_penalty(v: np.ndarray, alpha: float, mu: float) -> np.ndarray:
    """min_theta (mu/2) ||v - theta||^2 + alpha ||theta||_0.

    Solution: separable; theta_i = v_i costs alpha, theta_i = 0 costs (mu/2) v_i^2, so keep v_i
    iff |v_i| > sqrt(2 alpha / mu) (hard threshold). At equality both are optimal; zero is kept
    (the sparser one). mu = 0 gives theta = 0 for any alpha > 0.
    """
    alpha, mu = _check_penalty(alpha, mu)
    out = _float(v)
    if mu == 0.0:
        return out if alpha == 0.0 else np.zeros_like(out)
    out[np.abs(out) <= np.sqrt(2.0 * alpha / mu)] = 0.0
    return out


def l1_penalty(v: np.ndarray, alpha: float, mu: float) -> np.ndarray:
    """min_theta (mu/2) ||v - theta||^2 + alpha ||theta||_1.

    Solution: separable soft threshold, theta_i = sign(v_i) max(|v_i| - alpha / mu, 0) (zero is
    optimal iff |mu v_i| <= alpha, the subgradient condition). mu = 0 gives theta = 0 for any
    alpha > 0.
    """
    alpha, mu = _check_penalty(alpha, mu)
    out = _float(v)
    if mu == 0.0:
        return out if alpha == 0.0 else np.zeros_like(out)
    return np.sign(out) * np.maximum(np.abs(out) - alpha / mu, 0.0)


def _check_penalty(alpha: float, mu: float) -> tuple[float, float]:
    alpha, mu = float(alpha), float(mu)
    if alpha < 0 or mu < 0:
        raise ValueError(f"alpha and mu must be >= 0, got alpha={alpha}, mu={mu}")
    return alpha, mu


def _solve(form: Form, v: np.ndarray, value: float, mu: float) -> np.ndarray:
    if form is Form.L0_CONSTRAINT:
        if value != int(value):
            raise ValueError(f"the l0 constraint needs a whole kappa, got {value}")
        return l0_constraint(v, int(value))
    if form is Form.L1_CONSTRAINT:
        return l1_constraint(v, value)
    if form is Form.L0_PENALTY:
        return l0_penalty(v, value, mu)
    return l1_penalty(v, value, mu)


@dataclass(frozen=True)
class CStep:
    """One C step over several layers.

    ``value`` is kappa for the constraint forms and alpha for the penalty forms. A single
    number is one joint budget over all layers: the layers are flattened and concatenated in
    their order, compressed as one vector, and split back (LC's global allocation; for the
    penalty forms, which are separable, this equals the same alpha per layer). A sequence is
    one value per layer, each layer compressed on its own.
    """

    form: Form
    value: float | tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "form", Form(self.form))
        if not np.isscalar(self.value):
            object.__setattr__(self, "value", tuple(float(x) for x in self.value))

    @property
    def joint(self) -> bool:
        return not isinstance(self.value, tuple)

    def __call__(self, layers: Sequence[np.ndarray], mu: float) -> list[np.ndarray]:
        """theta per layer: the solution of ``form`` for ``layers`` at penalty parameter mu."""
        if self.joint:
            flat = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in layers])
            theta = _solve(self.form, flat, float(self.value), mu)
            ends = np.cumsum([np.size(x) for x in layers])[:-1]
            return [t.reshape(np.shape(x)) for t, x in zip(np.split(theta, ends), layers,
                                                           strict=True)]
        if len(self.value) != len(layers):
            raise ValueError(f"{len(self.value)} values for {len(layers)} layers")
        return [_solve(self.form, x, v, mu) for x, v in zip(layers, self.value, strict=True)]

    def record(self) -> dict[str, object]:
        """The settings as plain data (for a report or a resume check)."""
        value = self.value if self.joint else list(self.value)
        return {"form": str(self.form), "value": value, "joint": self.joint}
