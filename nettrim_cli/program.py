"""The layer program of Net-Trim as plain data (paper eqs. 3-7 and 11-14).

Orientation: the paper writes the layer input as X in R^{N x P} (one column per sample).
PyTorch keeps samples as rows, so here ``X`` is (P, N), ``Y`` and ``V`` are (P, M) and the
weights are (M, N) like ``nn.Linear.weight``: row m of the weights is the paper's u_m.

The bias is handled by appending a column of ones to X (the paper's row of ones); the bias
coordinate is *not* penalised by the l1 term (it is a single free variable in the QP), so a
bias is never pruned, and sparsity counts weights only.

The design (the inputs the weights multiply) reaches a solver through a ``Design`` object:
products with it and row subsets, plus an explicit ``dense()`` for solvers that materialise it.
A layer kind (``nettrim_cli.layers``) builds the design from its layer input (a Linear layer's
input as it is; a conv layer's unfolded patches), so a solver never knows the layer type.

The active set Omega (eq. 3: where the original output is positive) and the bound V are stored
once here: a residual block's active set comes from its output after the skip is added, so it is
given by the graph, never recomputed as ``Y > 0`` by a solver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Activation(StrEnum):
    """The activation after a prunable unit, as far as the layer program is concerned."""

    RELU = "relu"  # constraint set C_eps of eq. 3
    NONE = "none"  # least squares over every sample (supplement section 2)


RELU = Activation.RELU
NONE = Activation.NONE

# What each activation's program is, in words (the report's ``program``)
PROGRAMS = {
    RELU: "eq. 3 (ReLU: misfit on the active set, inequalities on the inactive set)",
    NONE: "least squares over all samples (no activation)",
}


class DenseDesign:
    """A design held as a dense (P, N) array: a Linear layer's input as it is."""

    def __init__(self, X: np.ndarray) -> None:
        self.X = X

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.X.shape)

    def dense(self) -> np.ndarray:
        """The (P, N) matrix itself."""
        return self.X

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        """The rows (samples) ``idx`` as a dense (k, N) array."""
        return self.X[idx]

    def matmul(self, W: np.ndarray) -> np.ndarray:
        """X W^T for weights W (M, N): the layer's pre-activation without bias, (P, M)."""
        return self.X @ W.T


@dataclass
class LayerProgram:
    """TRIM(X, Y, V, eps) of Algorithms 1 and 2 for one layer.

    Attributes:
        X: (P, N) layer input (original input in parallel mode, the pruned network's in
            cascade), an array or a ``Design``; ``design`` holds it as a ``Design``.
        Y: (P, M) target: the original layer's post-ReLU output (``relu``) or its
            pre-activation (``none``, a last layer without activation).
        V: (P, M) upper bounds on the inactive set (eq. 3), or None for V = 0.
        activation: ``relu`` (constraint set C_eps of eq. 3) or ``none`` (least squares over
            every sample, supplement section 2).
        epsilon: the layer's eps (constraint ||Yhat - Y||_F <= eps), or None with ``lam``.
        lam: a fixed lambda for eq. 11/14, or None to choose it from ``epsilon``.
        W0: (M, N) original weights and b0 (M,) original bias: the feasible reference point,
            the warm start, and the fallback for a column the solver cannot settle.
        active_set: (P, M) bool, Omega of eq. 3; None: computed once from Y (Y > 0 for
            ``relu``, every entry for ``none``). A residual unit passes its own.
    """

    X: np.ndarray
    Y: np.ndarray
    W0: np.ndarray
    b0: np.ndarray | None
    activation: str = RELU
    V: np.ndarray | None = None
    epsilon: float | None = None
    lam: float | None = None
    name: str = "layer"
    active_set: np.ndarray | None = None
    _Xa: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.activation not in (RELU, NONE):
            raise ValueError(f"unknown activation {self.activation!r}")
        self.activation = Activation(self.activation)
        P, N = self.X.shape
        if self.Y.shape[0] != P:
            raise ValueError("X and Y must have the same number of samples")
        if self.W0.shape != (self.Y.shape[1], N):
            raise ValueError(f"W0 has shape {self.W0.shape}, expected {(self.Y.shape[1], N)}")
        if self.V is not None and self.V.shape != self.Y.shape:
            raise ValueError("V must have the shape of Y")
        if (self.epsilon is None) == (self.lam is None):
            raise ValueError("give exactly one of epsilon and lam")
        if self.active_set is None:
            self.active_set = (np.ones(self.Y.shape, dtype=bool) if self.activation == NONE
                               else np.asarray(self.Y) > 0)
        elif self.active_set.shape != self.Y.shape:
            raise ValueError("active_set must have the shape of Y")

    @property
    def design(self) -> DenseDesign:
        X = self.X
        return X if hasattr(X, "dense") else DenseDesign(X)

    @property
    def bias(self) -> bool:
        return self.b0 is not None

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def n_in(self) -> int:
        return self.X.shape[1]

    @property
    def n_out(self) -> int:
        return self.Y.shape[1]

    @property
    def Xa(self) -> np.ndarray:
        """The design with the column of ones appended when the layer has a bias:
        (P, N + bias), float64, materialised once."""
        if self._Xa is None:
            X = np.ascontiguousarray(self.design.dense(), dtype=np.float64)
            if self.bias:
                X = np.hstack([X, np.ones((X.shape[0], 1))])
            self._Xa = X
        return self._Xa

    @property
    def Wa0(self) -> np.ndarray:
        """Original weights with the bias as last column: (M, N + bias)."""
        if self.bias:
            return np.hstack([self.W0, self.b0[:, None]]).astype(np.float64)
        return self.W0.astype(np.float64)

    @property
    def bounds(self) -> np.ndarray:
        """V as a (P, M) float64 array (zeros when V = 0)."""
        if self.V is None:
            return np.zeros(self.Y.shape)
        return np.asarray(self.V, dtype=np.float64)

    def active(self, m: int) -> np.ndarray:
        """Omega_m: samples where the original output of neuron m is positive (all for none)."""
        return self.active_set[:, m]

    def bound(self, m: int) -> np.ndarray:
        """v_m: the upper bound on u_m^T x_p for every sample (only the inactive ones matter)."""
        if self.V is None:
            return np.zeros(self.n_samples)
        return np.asarray(self.V[:, m], dtype=np.float64)

    def column_error(self, m: int, wa: np.ndarray) -> float:
        """Squared constraint value of column m (eq. 3): active-set misfit plus any violation
        of the inactive-set inequalities (zero when they hold)."""
        z = self.Xa @ wa
        act = self.active(m)
        r = z[act] - self.Y[act, m]
        viol = np.maximum(z[~act] - self.bound(m)[~act], 0.0)
        return float(r @ r + viol @ viol)

    def constraint_value(self, Wa: np.ndarray, columns: np.ndarray | None = None) -> float:
        """sqrt of the sum of column_error over all columns: <= eps means U in C_eps. With
        ``columns``, ``Wa`` holds the weights of those columns only, and only they count."""
        Z = self.Xa @ Wa.T
        Y = np.asarray(self.Y, dtype=np.float64)
        act = self.active_set
        if columns is not None:
            Y, act = Y[:, columns], act[:, columns]
        if self.activation == NONE:
            return float(np.linalg.norm(Z - Y))
        V = np.zeros_like(Y) if self.V is None else self.V
        if columns is not None and self.V is not None:
            V = V[:, columns]
        r = np.where(act, Z - Y, np.maximum(Z - V, 0.0))
        return float(np.linalg.norm(r))

    def inactive_violation(self, Wa: np.ndarray) -> float:
        """||max(Z - V, 0)|| over the inactive entries: how far the eq. 3 inequalities fail."""
        Z = self.Xa @ Wa.T
        return float(np.linalg.norm(np.where(self.active_set, 0.0,
                                             np.maximum(Z - self.bounds, 0.0))))

    def output(self, Wa: np.ndarray) -> np.ndarray:
        """The layer's response on X: max(U^T X, 0) or U^T X, (P, M)."""
        Z = self.Xa @ Wa.T
        return np.maximum(Z, 0.0) if self.activation == RELU else Z

    def discrepancy(self, Wa: np.ndarray) -> float:
        """||Yhat - Y||_F for the layer on its input X (Proposition 1's left-hand side)."""
        return float(np.linalg.norm(self.output(Wa) - self.Y))
