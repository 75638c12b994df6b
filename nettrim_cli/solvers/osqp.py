"""One column of the regularised Net-Trim program handed to OSQP (paper eqs. 11-14).

For column m, with Omega the active samples and Omega^c the inactive ones,

    min_u ||u||_1 + lambda ||X_Omega^T u - y_Omega||^2   s.t.  X_Omega^c^T u <= v_Omega^c  (11)

is cast as the QP (14) in u~ = [u+; -u-] >= 0:

    Q~ = [[1, -1], [-1, 1]] (x) Q_m,  Q_m = lambda X_Omega X_Omega^T,  q_m = -lambda X_Omega y,
    P~ = [P_m, -P_m],  P_m = X_Omega^c^T,  c_m = v_Omega^c.

Three deliberate, minimiser-preserving changes: the whole objective is divided by lambda (and
by a fixed scale), so that lambda only enters OSQP's linear term q and a lambda search is
``update(q=...)`` with a warm start and no refactorisation; the features are centred and scaled
once per layer (see ScaledLayer), an exact change of variables; and the bias coordinate, when
the layer has one, is a single free variable outside the l1 term.

With epsilon = 0 the program is (8): equality on Omega, the same inequalities, objective
||u||_1 -- a linear program that OSQP solves with P = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import osqp
import scipy.sparse as sp

from nettrim_cli.program import NONE, LayerProgram

SOLVED = "solved"


@dataclass
class ColumnResult:
    wa: np.ndarray  # (N + bias,) the column's weights, bias last
    status: str
    iterations: int
    seconds: float
    retried: bool


def _status_name(info) -> str:
    name = str(info.status).strip().lower()
    return name.replace(" ", "_")


def is_solved(status: str) -> bool:
    return status == SOLVED


class ScaledLayer:
    """The layer's X_a centred (when it has a bias) and scaled, once per layer.

    With a free bias, x^T u + b = (x - mu)^T u + (b + mu^T u): centring the features is an exact
    change of variables that removes the near-collinearity between a column of ones and
    features with a positive mean (post-ReLU activations). Each centred feature is then divided
    by its RMS d_i (s_i = d_i u_i), so that OSQP's absolute tolerances mean the same for every
    feature. The l1 term is sum |s_i| / d_i: the minimiser is unchanged.
    """

    def __init__(self, program: LayerProgram) -> None:
        Xa = program.Xa
        N = program.n_in
        self.N = N
        self.bias = program.bias
        X = Xa[:, :N]
        self.mu = X.mean(axis=0) if self.bias else np.zeros(N)
        Xc = X - self.mu if self.bias else X
        d = np.sqrt(np.mean(Xc * Xc, axis=0))
        d[~(d > 0)] = 1.0
        self.d = d
        Xs = Xc / d
        self.Xs = np.hstack([Xs, np.ones((Xs.shape[0], 1))]) if self.bias else Xs
        self.gram = self.Xs.T @ self.Xs

    def to_scaled(self, wa: np.ndarray) -> np.ndarray:
        sa = np.array(wa, dtype=np.float64)
        sa[: self.N] = wa[: self.N] * self.d
        if self.bias:
            sa[self.N] = wa[self.N] + self.mu @ wa[: self.N]
        return sa

    def from_scaled(self, sa: np.ndarray) -> np.ndarray:
        wa = np.array(sa, dtype=np.float64)
        wa[: self.N] = sa[: self.N] / self.d
        if self.bias:
            wa[self.N] = sa[self.N] - self.mu @ wa[: self.N]
        return wa


class ColumnQP:
    """Eq. 14 for one column, set up once; ``solve(lam)`` changes only q.

    Args:
        program: the layer program.
        m: the column (output neuron) index.
        settings: OSQP settings.
        layer: the layer's ScaledLayer, shared across its columns (built here if None); its
            Gram matrix lets X_Omega X_Omega^T come from the smaller of Omega and Omega^c.
        exact: solve program (8) (epsilon = 0) instead of eq. 11.
    """

    def __init__(self, program: LayerProgram, m: int, settings,
                 layer: ScaledLayer | None = None, exact: bool = False) -> None:
        self.settings = settings
        self.layer = layer = layer if layer is not None else ScaledLayer(program)
        Xs = layer.Xs
        N = program.n_in
        nf = Xs.shape[1] - N  # 1 with a bias, else 0
        self.N, self.nf = N, nf
        act = program.active(m)
        inact = ~act
        y = np.asarray(program.Y[act, m], dtype=np.float64)
        # D maps z = [s+ (N), s- (N), bias (nf)] to s = [s+ - s-; bias]
        D = sp.hstack([
            sp.vstack([sp.eye(N), sp.csc_matrix((nf, N))]),
            sp.vstack([-sp.eye(N), sp.csc_matrix((nf, N))]),
            sp.vstack([sp.csc_matrix((N, nf)), sp.eye(nf)]),
        ]).tocsc()
        self.D = D
        inv_d = 1.0 / layer.d
        l1 = np.concatenate([inv_d, inv_d, np.zeros(nf)])
        Xin = Xs[inact]
        rows = [sp.csc_matrix(Xin) @ D, sp.hstack([sp.eye(2 * N), sp.csc_matrix((2 * N, nf))])]
        lo = [np.full(Xin.shape[0], -np.inf), np.zeros(2 * N)]
        hi = [program.bound(m)[inact], np.full(2 * N, np.inf)]
        if exact:
            # program (8): X_Omega^T u = y_Omega as an equality constraint, objective ||u||_1
            rows.insert(0, sp.csc_matrix(Xs[act]) @ D)
            lo.insert(0, y)
            hi.insert(0, y)
            Pz = sp.csc_matrix((2 * N + nf, 2 * N + nf))
            self.scale = 1.0
            self.q_l1 = l1
            self.q_fit = np.zeros(2 * N + nf)
        else:
            if Xin.shape[0] < act.sum():
                G = layer.gram - Xin.T @ Xin
            else:
                G = Xs[act].T @ Xs[act]
            b = Xs[act].T @ y
            # a fixed positive scale of the objective keeps OSQP's dual residual in sensible
            # units; it does not move the minimiser
            self.scale = max(float(np.mean(np.diag(G))), 1e-12)
            Pz = (D.T @ sp.csc_matrix(2.0 * G / self.scale) @ D).tocsc()
            self.q_l1 = l1 / self.scale
            self.q_fit = -2.0 * (D.T @ b) / self.scale
        A = sp.vstack(rows).tocsc()
        self.exact = exact
        self.n_inactive = int(inact.sum())
        self.solver = osqp.OSQP()
        self.solver.setup(sp.triu(Pz, format="csc"), self.q(1.0), A, np.concatenate(lo),
                          np.concatenate(hi), **settings.as_osqp())

    def q(self, lam: float) -> np.ndarray:
        """OSQP's linear term for lambda: (1/lambda) 1 (the l1 part) + 2 q~ (eq. 14) / s."""
        if self.exact:
            return self.q_l1
        return self.q_l1 / lam + self.q_fit

    def z_from_u(self, wa: np.ndarray) -> np.ndarray:
        sa = self.layer.to_scaled(wa)
        u = sa[: self.N]
        return np.concatenate([np.maximum(u, 0), np.maximum(-u, 0), sa[self.N:]])

    def warm(self, wa: np.ndarray) -> None:
        """Warm start the next solve from a column of weights (bias last)."""
        self.solver.warm_start(x=self.z_from_u(wa))

    def solve(self, lam: float) -> ColumnResult:
        """Solve at lambda; an inaccurate or max-iteration result is retried once with
        tighter settings (more iterations, smaller tolerances, polishing on)."""
        self.solver.update(q=self.q(lam))
        res = self.solver.solve(raise_error=False)
        status = _status_name(res.info)
        iters, secs, retried = int(res.info.iter), float(res.info.run_time), False
        if not is_solved(status) and status not in ("primal_infeasible", "dual_infeasible"):
            s = self.settings
            self.solver.update_settings(max_iter=int(s.max_iter * s.retry_factor),
                                        eps_abs=s.eps_abs / s.retry_factor,
                                        eps_rel=s.eps_rel / s.retry_factor, polishing=True)
            res = self.solver.solve(raise_error=False)
            status = _status_name(res.info)
            iters += int(res.info.iter)
            secs += float(res.info.run_time)
            retried = True
            self.solver.update_settings(max_iter=int(s.max_iter), eps_abs=s.eps_abs,
                                        eps_rel=s.eps_rel, polishing=bool(s.polish))
        x = res.x if res.x is not None else np.full(self.D.shape[1], np.nan)
        wa = self.layer.from_scaled(self.D @ x)
        return ColumnResult(wa=np.asarray(wa, dtype=np.float64), status=status,
                            iterations=iters, seconds=secs, retried=retried)


def dead_column(program: LayerProgram, m: int) -> np.ndarray | None:
    """A neuron whose original output is zero on every calibration sample: zero weights and a
    bias no larger than any bound solve eq. 11 exactly (the l1 term is zero, the fit term is
    empty), so no QP is needed. Returns None when that shortcut does not apply."""
    if program.activation == NONE or program.active(m).any():
        return None
    v = program.bound(m)
    if program.bias:
        wa = np.zeros(program.n_in + 1)
        wa[-1] = min(float(program.b0[m]), float(v.min()))
        return wa
    if (v >= 0).all():
        return np.zeros(program.n_in)
    return None
