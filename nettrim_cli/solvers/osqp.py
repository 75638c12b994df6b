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
# OSQP 1.x status codes (SolverStatus) and the names recorded in the report
STATUS_NAMES = {1: "solved", 2: "solved_inaccurate", 3: "primal_infeasible",
                4: "primal_infeasible_inaccurate", 5: "dual_infeasible",
                6: "dual_infeasible_inaccurate", 7: "maximum_iterations_reached",
                8: "run_time_limit_reached", 9: "problem_non_convex", 10: "interrupted",
                11: "unsolved"}
INTERRUPTED = "interrupted"
# P is PSD by construction, so "non convex" is rounding in the factorisation; a retry with
# the same matrix fails the same way. Every other unsolved status is retried once with more
# iterations and tighter tolerances (infeasibility tolerances included: the column's original
# weights are feasible, so an infeasibility certificate is numerical trouble).
NO_RETRY = frozenset({"problem_non_convex"})
OSQP_INF_TOL = 1e-4  # OSQP's default eps_prim_inf / eps_dual_inf


@dataclass
class ColumnResult:
    wa: np.ndarray  # (N + bias,) the column's weights, bias last
    status: str
    iterations: int
    seconds: float
    retried: bool


def _status_name(info) -> str:
    """The status as a report name: from status_val when it is a known code, else from the
    status text ("solved inaccurate" -> "solved_inaccurate")."""
    try:
        code = int(getattr(info, "status_val", 0))
    except (TypeError, ValueError):
        code = 0
    if code in STATUS_NAMES:
        return STATUS_NAMES[code]
    name = str(getattr(info, "status", "") or "").strip().lower().replace(" ", "_")
    return name or f"unknown_status_{code}"


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
        X = program.X
        N = program.n_in
        self.N = N
        self.bias = program.bias
        # built in one preallocated array: the layer's data is held twice at most (X and Xs)
        Xs = np.empty((X.shape[0], N + int(self.bias)))
        W = Xs[:, :N]
        W[...] = X
        self.mu = W.mean(axis=0) if self.bias else np.zeros(N)
        if self.bias:
            W -= self.mu
            Xs[:, N] = 1.0
        d = np.sqrt(np.einsum("ij,ij->j", W, W) / max(W.shape[0], 1))
        d[~(d > 0)] = 1.0
        self.d = d
        W /= d
        self.Xs = Xs
        self.gram = Xs.T @ Xs

    def column_error(self, program: LayerProgram, m: int, wa: np.ndarray) -> float:
        """program.column_error(m, wa) computed on the scaled data (no copy of X_a needed)."""
        z = self.Xs @ self.to_scaled(wa)
        act = program.active(m)
        r = z[act] - program.Y[act, m]
        viol = np.maximum(z[~act] - program.bound(m)[~act], 0.0)
        return float(r @ r + viol @ viol)

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


def _epigraph_hessian(H: np.ndarray, N: int) -> sp.csc_matrix:
    """Upper triangle of the Hessian for z = [s; t; bias]: H on (s, bias), nothing on t."""
    nf = H.shape[0] - N
    n = 2 * N + nf
    full = np.zeros((n, n))
    full[:N, :N] = H[:N, :N]
    if nf:
        full[:N, 2 * N:] = H[:N, N:]
        full[2 * N:, 2 * N:] = H[N:, N:]
    return sp.csc_matrix(np.triu(full))


def _split_hessian(H: np.ndarray, N: int) -> sp.csc_matrix:
    """Upper triangle of D^T H D for z = [s+; s-; bias]: [[H, -H, h], [-H, H, -h], [., ., c]]
    (the Kronecker form [[1, -1], [-1, 1]] (x) Q of eq. 14, plus the free bias)."""
    Hw = H[:N, :N]
    n = 2 * N + (H.shape[0] - N)
    full = np.empty((n, n))
    full[:N, :N] = Hw
    full[:N, N:2 * N] = -Hw
    full[N:2 * N, :N] = -Hw
    full[N:2 * N, N:2 * N] = Hw
    if n > 2 * N:
        hb = H[:N, N:]
        full[:N, 2 * N:] = hb
        full[N:2 * N, 2 * N:] = -hb
        full[2 * N:, :N] = hb.T
        full[2 * N:, N:2 * N] = -hb.T
        full[2 * N:, 2 * N:] = H[N:, N:]
    return sp.csc_matrix(np.triu(full))


class ColumnQP:
    """Eq. 14 for one column, set up once; ``solve(lam)`` changes only q.

    Constraint screening (``settings.screening``): OSQP sees only a working set of the inactive
    samples' inequalities, at first the ``screen_init`` whose original pre-activation is
    closest to its bound (those most likely to bind). After each solve every inactive sample
    is checked; violated ones join the working set and the problem is solved again, warm
    started, until none is violated. The answer is then optimal for the full program: it is
    the optimum of a relaxation and feasible for the original. Without screening every
    inactive sample is a constraint row, exactly as the paper writes (14).

    Args:
        program: the layer program.
        m: the column (output neuron) index.
        settings: OSQP settings.
        layer: the layer's ScaledLayer, shared across its columns (built here if None); its
            Gram matrix lets X_Omega X_Omega^T come from the smaller of Omega and Omega^c.
        exact: solve program (8) (epsilon = 0) instead of eq. 11.
    """

    def __init__(self, program: LayerProgram, m: int, settings,
                 layer: ScaledLayer | None = None, exact: bool = False,
                 working: np.ndarray | None = None) -> None:
        self.settings = settings
        self.layer = layer = layer if layer is not None else ScaledLayer(program)
        Xs = layer.Xs
        N = program.n_in
        nf = Xs.shape[1] - N  # 1 with a bias, else 0
        self.N, self.nf = N, nf
        act = program.active(m)
        self.inactive = np.flatnonzero(~act)
        self.v = program.bound(m)[self.inactive]
        y = np.asarray(program.Y[act, m], dtype=np.float64)
        # D maps z = [s+ (N), s- (N), bias (nf)] to s = [s+ - s-; bias]
        self.epigraph = settings.formulation == "epigraph"
        if self.epigraph:
            # z = [s (N), t (N), bias]: |s_i| <= t_i, the l1 term is sum t_i / d_i
            D = sp.hstack([sp.vstack([sp.eye(N), sp.csc_matrix((nf, N))]),
                           sp.csc_matrix((N + nf, N)),
                           sp.vstack([sp.csc_matrix((N, nf)), sp.eye(nf)])]).tocsc()
            inv_d = 1.0 / layer.d
            l1 = np.concatenate([np.zeros(N), inv_d, np.zeros(nf)])
            self.bounds_rows = sp.vstack([
                sp.hstack([sp.eye(N), -sp.eye(N), sp.csc_matrix((N, nf))]),
                sp.hstack([-sp.eye(N), -sp.eye(N), sp.csc_matrix((N, nf))])]).tocsc()
            self.bounds_lo = np.full(2 * N, -np.inf)
            self.bounds_hi = np.zeros(2 * N)
        else:
            # eq. 14: z = [s+ (N), s- (N), bias] >= 0 (bias free), s = s+ - s-
            D = sp.hstack([sp.vstack([sp.eye(N), sp.csc_matrix((nf, N))]),
                           sp.vstack([-sp.eye(N), sp.csc_matrix((nf, N))]),
                           sp.vstack([sp.csc_matrix((N, nf)), sp.eye(nf)])]).tocsc()
            inv_d = 1.0 / layer.d
            l1 = np.concatenate([inv_d, inv_d, np.zeros(nf)])
            self.bounds_rows = sp.hstack([sp.eye(2 * N), sp.csc_matrix((2 * N, nf))]).tocsc()
            self.bounds_lo = np.zeros(2 * N)
            self.bounds_hi = np.full(2 * N, np.inf)
        self.D = D
        self.exact = exact
        if exact:
            # program (8): X_Omega^T u = y_Omega as an equality constraint, objective ||u||_1
            self.eq_rows = sp.csc_matrix(Xs[act]) @ D
            self.y = y
            self.P = sp.csc_matrix((2 * N + nf, 2 * N + nf))
            self.scale = 1.0
            self.q_l1 = l1
            self.q_fit = np.zeros(2 * N + nf)
        else:
            self.eq_rows = None
            self._fit_objective(act, y, l1)
        self.n_inactive = int(self.inactive.size)
        if working is not None:
            self.working = np.asarray(working, dtype=np.int64)
        elif settings.screening and self.n_inactive > settings.screen_init:
            # most likely to bind: the smallest margin v - x^T w0 under the original weights
            margin = self.v - (Xs @ layer.to_scaled(program.Wa0[m]))[self.inactive]
            self.working = np.sort(np.argsort(margin, kind="stable")[: settings.screen_init])
        else:
            self.working = np.arange(self.n_inactive)
        self.rounds = 0
        self._lam = 1.0
        self._setup(None, None)

    def _fit_objective(self, act: np.ndarray, y: np.ndarray, l1: np.ndarray) -> None:
        """Eq. 11's objective divided by lambda and a fixed scale: P from X_Omega X_Omega^T,
        q = l1 / lambda + q_fit (see ``q``)."""
        layer, Xs, N, D = self.layer, self.layer.Xs, self.N, self.D
        n_in = self.inactive.size
        # X_Omega X_Omega^T from the smaller of the two sample sets, in row blocks so that
        # no copy of the layer's data is made
        rows = self.inactive if n_in < act.sum() else np.flatnonzero(act)
        G = np.zeros_like(layer.gram)
        for i in range(0, rows.size, 4096):
            blk = Xs[rows[i:i + 4096]]
            G += blk.T @ blk
        if rows is self.inactive:
            G = layer.gram - G
        yfull = np.zeros(Xs.shape[0])
        yfull[act] = y
        b = Xs.T @ yfull
        # a fixed positive scale of the objective keeps OSQP's dual residual in sensible
        # units; it does not move the minimiser
        self.scale = max(float(np.mean(np.diag(G))), 1e-12)
        H = 2.0 * G / self.scale
        self.P = _epigraph_hessian(H, N) if self.epigraph else _split_hessian(H, N)
        self.q_l1 = l1 / self.scale
        self.q_fit = -2.0 * (D.T @ b) / self.scale

    def _setup(self, x: np.ndarray | None, y: np.ndarray | None) -> None:
        Xw = self.layer.Xs[self.inactive[self.working]]
        rows = [sp.csc_matrix(Xw) @ self.D, self.bounds_rows]
        lo = [np.full(self.working.size, -np.inf), self.bounds_lo]
        hi = [self.v[self.working], self.bounds_hi]
        if self.eq_rows is not None:
            rows.insert(0, self.eq_rows)
            lo.insert(0, self.y)
            hi.insert(0, self.y)
        self.solver = osqp.OSQP(algebra=self.settings.algebra)
        self.solver.setup(self.P, self.q(self._lam), sp.vstack(rows).tocsc(),
                          np.concatenate(lo), np.concatenate(hi), **self.settings.as_osqp())
        if x is not None:
            self.solver.warm_start(x=x, y=y)

    def q(self, lam: float) -> np.ndarray:
        """OSQP's linear term for lambda: (1/lambda) 1 (the l1 part) + 2 q~ (eq. 14) / s."""
        if self.exact:
            return self.q_l1
        return self.q_l1 / lam + self.q_fit

    def z_from_u(self, wa: np.ndarray) -> np.ndarray:
        sa = self.layer.to_scaled(wa)
        u = sa[: self.N]
        if self.epigraph:
            return np.concatenate([u, np.abs(u), sa[self.N:]])
        return np.concatenate([np.maximum(u, 0), np.maximum(-u, 0), sa[self.N:]])

    def warm(self, wa: np.ndarray) -> None:
        """Warm start the next solve from a column of weights (bias last)."""
        self.solver.warm_start(x=self.z_from_u(wa))

    def _solve_once(self, polish: bool):
        """One OSQP solve; an inaccurate or max-iteration result is retried once with tighter
        settings (more iterations, smaller tolerances, polishing on)."""
        self.solver.update_settings(polishing=polish)
        res = self.solver.solve(raise_error=False)
        status = _status_name(res.info)
        if status == INTERRUPTED:  # OSQP caught Ctrl-C: stop, as the user asked
            raise KeyboardInterrupt
        iters, secs, retried = int(res.info.iter), float(res.info.run_time), False
        if not is_solved(status) and status not in NO_RETRY:
            s = self.settings
            f = s.retry_factor
            self.solver.update_settings(max_iter=int(s.max_iter * f), eps_abs=s.eps_abs / f,
                                        eps_rel=s.eps_rel / f, eps_prim_inf=OSQP_INF_TOL / f,
                                        eps_dual_inf=OSQP_INF_TOL / f, polishing=True)
            res = self.solver.solve(raise_error=False)
            status = _status_name(res.info)
            if status == INTERRUPTED:
                raise KeyboardInterrupt
            iters += int(res.info.iter)
            secs += float(res.info.run_time)
            retried = True
            self.solver.update_settings(max_iter=int(s.max_iter), eps_abs=s.eps_abs,
                                        eps_rel=s.eps_rel, eps_prim_inf=OSQP_INF_TOL,
                                        eps_dual_inf=OSQP_INF_TOL)
        return res, status, iters, secs, retried

    def _violated(self, z: np.ndarray) -> np.ndarray:
        """Indices (into the inactive set) outside the working set whose inequality fails by
        more than OSQP's own primal tolerance, plus as many of the nearest-to-failing ones
        (they tend to be violated next)."""
        sa = self.D @ z
        gap = (self.layer.Xs @ sa)[self.inactive] - self.v
        tol = 10 * (self.settings.eps_abs + self.settings.eps_rel * np.abs(self.v)) + 1e-12
        gap[self.working] = -np.inf
        bad = np.flatnonzero(gap > tol)
        if bad.size == 0:
            return bad
        k = min(bad.size + min(bad.size, 16), int(np.isfinite(gap).sum()))
        near = np.argpartition(-gap, k - 1)[:k] if k < gap.size else np.arange(gap.size)
        near = near[np.isfinite(gap[near])]
        return np.union1d(bad, near)

    def solve(self, lam: float, polish: bool | None = None) -> ColumnResult:
        """Solve at lambda (warm started from the last solve); with screening, grow the
        working set until no inactive inequality is violated. ``polish`` (default: the
        settings') polishes once at the end, which gives exact zeros and active
        inequalities."""
        self._lam = lam
        self.solver.update(q=self.q(lam))
        iters = 0
        secs = 0.0
        retried = False
        polish = self.settings.polish if polish is None else polish
        polish = False if polish else None
        tightened = False
        self.polished = False
        while True:
            res, status, it, sec, rt = self._solve_once(bool(polish))
            iters += it
            secs += sec
            retried |= rt
            if res.x is None or not is_solved(status):
                break
            new = self._violated(res.x) if self.working.size < self.n_inactive else []
            if len(new) == 0:
                if polish is False:
                    polish = True  # polish once, at the end, then check again
                    continue
                if polish and res.info.status_polish != 1 and not tightened:
                    # polishing failed: tighten the tolerances 100x and polish again, so
                    # that near-zero weights are settled by the active set, not by noise
                    tightened = True
                    s = self.settings
                    self.solver.update_settings(eps_abs=s.eps_abs / 100, eps_rel=s.eps_rel / 100)
                    res2, status2, it, sec, rt = self._solve_once(True)
                    self.solver.update_settings(eps_abs=s.eps_abs, eps_rel=s.eps_rel)
                    iters += it
                    secs += sec
                    if res2.x is not None and is_solved(status2):
                        res, status = res2, status2
                        continue
                self.polished = bool(polish) and res.info.status_polish == 1
                break
            self.rounds += 1
            n_old = self.working.size
            merged = np.union1d(self.working, new)
            # duals: keep those of the rows already there, zero for the new rows
            y_old = res.y
            pos = np.searchsorted(merged, self.working)
            n_eq = 0 if self.eq_rows is None else self.eq_rows.shape[0]
            y_new = np.zeros(n_eq + merged.size + 2 * self.N)
            y_new[:n_eq] = y_old[:n_eq]
            y_new[n_eq + pos] = y_old[n_eq:n_eq + n_old]
            y_new[n_eq + merged.size:] = y_old[n_eq + n_old:]
            self.working = merged
            self._setup(res.x, y_new)
        x = res.x if res.x is not None else np.full(self.D.shape[1], np.nan)
        self.last_x = x
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


def settle_dead_columns(program: LayerProgram) -> tuple[np.ndarray, list[str], list[int], int]:
    """Start a layer's answer: the original weights, with every dead neuron (see
    dead_column) settled. Returns (Wa, status per column, live columns, dead count)."""
    Wa = program.Wa0.copy()
    status = ["unsolved"] * program.n_out
    live: list[int] = []
    for m in range(program.n_out):
        wa = dead_column(program, m)
        if wa is None:
            live.append(m)
        else:
            Wa[m] = wa
            status[m] = "dead_neuron"
    return Wa, status, live, program.n_out - len(live)
