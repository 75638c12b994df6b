"""The layer program of Net-Trim as plain data (paper eqs. 3-7 and 11-14).

Orientation: the paper writes the layer input as X in R^{N x P} (one column per sample).
PyTorch keeps samples as rows, so here ``X`` is (P, N), ``Y`` and ``V`` are (P, M) and the
weights are (M, N) like ``nn.Linear.weight``: row m of the weights is the paper's u_m.

The bias is handled by appending a column of ones to X (the paper's row of ones); the bias
coordinate is *not* penalised by the l1 term (it is a single free variable in the QP), so a
bias is never pruned, and sparsity counts weights only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RELU = "relu"
NONE = "none"


@dataclass
class LayerProgram:
    """TRIM(X, Y, V, eps) of Algorithms 1 and 2 for one layer.

    Attributes:
        X: (P, N) layer input (original input in parallel mode, the pruned network's in cascade).
        Y: (P, M) target: the original layer's post-ReLU output (``relu``) or its
            pre-activation (``none``, a last layer without activation).
        V: (P, M) upper bounds on the inactive set (eq. 3), or None for V = 0.
        activation: ``relu`` (constraint set C_eps of eq. 3) or ``none`` (least squares over
            every sample, supplement section 2).
        bias: whether the weights carry a bias (X gets a column of ones).
        epsilon: the layer's eps (constraint ||Yhat - Y||_F <= eps), or None with ``lam``.
        lam: a fixed lambda for eq. 11/14, or None to choose it from ``epsilon``.
        W0: (M, N) original weights and b0 (M,) original bias: the feasible reference point,
            the warm start, and the fallback for a column the solver cannot settle.
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
    _Xa: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.activation not in (RELU, NONE):
            raise ValueError(f"unknown activation {self.activation!r}")
        P, N = self.X.shape
        if self.Y.shape[0] != P:
            raise ValueError("X and Y must have the same number of samples")
        if self.W0.shape != (self.Y.shape[1], N):
            raise ValueError(f"W0 has shape {self.W0.shape}, expected {(self.Y.shape[1], N)}")
        if self.V is not None and self.V.shape != self.Y.shape:
            raise ValueError("V must have the shape of Y")
        if (self.epsilon is None) == (self.lam is None):
            raise ValueError("give exactly one of epsilon and lam")

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
        """X with the column of ones appended when the layer has a bias: (P, N + bias)."""
        if self._Xa is None:
            X = np.ascontiguousarray(self.X, dtype=np.float64)
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

    def active(self, m: int) -> np.ndarray:
        """Omega_m: samples where the original output of neuron m is positive (all for none)."""
        if self.activation == NONE:
            return np.ones(self.n_samples, dtype=bool)
        return self.Y[:, m] > 0

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
        if columns is not None:
            Y = Y[:, columns]
        if self.activation == NONE:
            return float(np.linalg.norm(Z - Y))
        act = Y > 0
        V = np.zeros_like(Y) if self.V is None else self.V
        if columns is not None and self.V is not None:
            V = V[:, columns]
        r = np.where(act, Z - Y, np.maximum(Z - V, 0.0))
        return float(np.linalg.norm(r))

    def output(self, Wa: np.ndarray) -> np.ndarray:
        """The layer's response on X: max(U^T X, 0) or U^T X, (P, M)."""
        Z = self.Xa @ Wa.T
        return np.maximum(Z, 0.0) if self.activation == RELU else Z

    def discrepancy(self, Wa: np.ndarray) -> float:
        """||Yhat - Y||_F for the layer on its input X (Proposition 1's left-hand side)."""
        return float(np.linalg.norm(self.output(Wa) - self.Y))
