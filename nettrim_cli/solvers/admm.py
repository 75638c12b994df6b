"""Whole-layer ADMM for the constrained Net-Trim program (4) (parallel) and (6) (cascade).

The column QPs of eq. 14 (``osqp.py`` + ``search.py``) reach program (4) only through a search
over the regularisation lambda. This solver attacks (4)/(6) directly, all columns at once:

    min_W  sum_{j weight} |W_mj|   s.t.  Z = X_a W^T,  Z in C,

    C = { Z : ||Z_Omega - Y_Omega||_F <= eps,  Z_Omega^c <= V_Omega^c }       (relu, eq. 3)
    C = { Z : ||Z - Y||_F <= eps }                                             (none)

(Omega: the entries with Y > 0; one scalar eps for the layer; the bias column is free.) With a
fixed lambda instead of eps the indicator of the ball becomes lambda ||Z_Omega - Y_Omega||^2,
i.e. eq. 11 for every column at once.

ADMM in graph form. The columns of X_a are equilibrated (A = X_a E, unit-norm columns) and the
data scaled by one scalar s (unit rms of Y on Omega); the variable is x = E^{-1} W^T / s and
z = A x (= Z / s). Each iteration

    x_half = soft-threshold(x - u_x, e / (rho r))  (the l1 term; bias untouched)
    z_half = Pi_C(z - u_z)                         (ball on the active part, clamp on the rest)
    (x, z) = projection onto {z = A x} of the over-relaxed half step plus the duals
             (weighted by r on x: A^T A + r I is factorised once per layer, by Cholesky,
             and its inverse applied as one matmul for all columns)
    u     += (over-relaxed half step) - (x, z)

rho is adapted by residual balancing. In graph form it only rescales the thresholds and the
scaled duals, so the factorisation (which depends on the block weight r only) is kept. ADMM
stops on primal and dual residuals plus a support that has stopped changing.

The polish: with ADMM's support S (signs s) and the set T of inactive entries it holds at the
bound, the KKT system of (4) restricted to (S, T) reads, for every column,

    [X_{Om,S}^T X_{Om,S}  X_{T,S}^T] [u  ]   [X_{Om,S}^T y_Om - t s]
    [X_{T,S}              0        ] [nu'] = [v_T                   ],   t = 1 / (2 lambda),

which is linear in t: u(t) = u_a + t u_b, and the layer's squared misfit is a quadratic in t,
so the t with misfit eps follows in closed form (one t -- one multiplier -- for the layer, as
the KKT conditions of (4) require). Sign flips, violated bounds, negative multipliers and
off-support subgradients above one update (S, T) and the solve repeats (an active-set method
warm started by ADMM). When the KKT conditions of (4) hold (multipliers of degenerate bound
sets checked by a small LP) the columns are ``solved``; otherwise the best feasible candidate
(polished or ADMM's own, pulled onto the constraint) is kept as ``solved_inaccurate``, and as a
last resort the layer is mixed with the original weights until the constraint holds.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from nettrim_cli.program import NONE, LayerProgram
from nettrim_cli.solvers.base import (
    Capabilities,
    LayerSolution,
    Progress,
    SolverSettings,
    no_progress,
)
from nettrim_cli.solvers.osqp import settle_dead_columns

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - optional
    threadpool_limits = None


def _blas_threads(n: int | None):
    """Limit numpy/scipy BLAS threads (the polish solves many small dense systems, where
    threads only add overhead and, on a busy machine, contention)."""
    if n is None or threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n)


SOLVED = "solved"
INACCURATE = "solved_inaccurate"
MIXED = "mixed_with_original"
NOT_REACHED = "epsilon_not_reached"
DEAD = "dead_neuron"


@dataclass
class ADMMSettings:
    """Settings of the whole-layer ADMM.

    rho: initial penalty (None: ||l1 weights|| / ||warm start||, in scaled units).
    ratio: weight r of the weight block against the sample block; the factorised matrix is
        A^T A + r I with A the equilibrated X_a. Fixed during a run. A smaller r than 1 lets
        the sample block (the constraint) drive the iterates: with configs/fast.toml on the
        NN2-10K layers of ``make bench``, r = 0.3 stopped after 630 iterations (300 -> 300)
        and 605 (784 -> 300) where r = 1 needed 1060 on the first and r = 0.03 760 and 830
        (the ratio table in benchmarks/results.md).
    alpha: over-relaxation in (0, 2).
    eps_abs, eps_rel: stopping tolerances on the primal and dual residuals (scaled units).
    stable_checks, support_tol: ADMM also waits until the support has settled for this many
        checks: at most ``support_tol`` of the weights (0 on a small layer) changing between
        two checks (float32 iterates flicker on coordinates at the threshold).
    adaptive_rho: rebalance rho every ``adapt_every`` iterations when the normalised residuals
        are more than ``adapt_tol`` apart.
    polish: solve the KKT system of (4) on ADMM's support and bound set (active-set rounds).
    polish_blas_threads: BLAS threads during the polish (None: leave as is).
    retry: when the polish cannot certify the answer, resume ADMM once (in float64) with
        tolerances divided by ``retry_factor`` and polish again.
    """

    rho: float | None = None
    ratio: float = 0.3
    alpha: float = 1.6
    max_iter: int = 10000
    eps_abs: float = 1e-8
    eps_rel: float = 1e-7
    stable_checks: int = 10
    support_tol: float = 1e-4
    check_every: int = 5
    adaptive_rho: bool = True
    adapt_every: int = 25
    adapt_tol: float = 5.0
    polish: bool = True
    polish_rounds: int = 50
    # the polish stops starting new rounds after max(polish_min_seconds, polish_time_factor
    # * ADMM's seconds): on large layers a round costs seconds and may never certify
    polish_time_factor: float = 1.0
    polish_min_seconds: float = 5.0
    polish_blas_threads: int | None = 1
    retry: bool = True
    retry_factor: float = 100.0


@dataclass
class ADMMSolution(LayerSolution):
    """LayerSolution of the ADMM solver; ``summary()`` names it ``admm``."""

    admm_converged: bool = False
    polish_converged: bool = False

    def summary(self) -> dict:
        return {**self.common_summary("admm"), "polish_rounds": self.passes,
                "admm_converged": self.admm_converged,
                "polish_converged": self.polish_converged, "history": self.history}


# ----------------------------------------------------------------------------------------------
# ADMM


class _ADMM:
    """Graph-form ADMM for the live columns of a layer; ``run`` can be called again to resume."""

    def __init__(self, Xa: np.ndarray, Y: np.ndarray, V: np.ndarray, act: np.ndarray,
                 W0T: np.ndarray, l1mask: np.ndarray, eps: float | None, lam: float | None,
                 opts: ADMMSettings, device: str, dtype: str) -> None:
        self.opts = opts
        self.dev = torch.device(device)
        self.dt = getattr(torch, dtype)
        L = Y.shape[1]
        cn = np.linalg.norm(Xa, axis=0)
        cn[cn == 0] = 1.0
        self.e = 1.0 / cn
        n_act = int(act.sum())
        s = float(np.linalg.norm(Y[act]) / np.sqrt(n_act)) if n_act else 0.0
        if not np.isfinite(s) or s <= 0:
            top = float(np.max(np.abs(Y))) if Y.size else 0.0
            s = top if top > 0 else 1.0
        self.s = s
        self.A = self._t(Xa * self.e[None, :])
        self.Y, self.V = self._t(Y / s), self._t(V / s)
        self.act = torch.as_tensor(act, device=self.dev)
        self.actf = self.act.to(self.dt)
        self.Vm = torch.where(self.act, torch.inf, self.V)
        self.wl1 = self._t((l1mask * self.e)[:, None])  # |W_jm| = s e_j |x_jm|
        self.radius = None if eps is None else eps / s
        self.lam = None if lam is None else lam * s  # eq. 11 divided by s, in scaled units
        self.r = float(opts.ratio)
        self.Kinv = self._factor()
        self.factorizations = 1
        self.x = self._t(W0T / (self.e[:, None] * s))
        self.z = self.A @ self.x
        self.ux = torch.zeros_like(self.x)
        self.uz = torch.zeros_like(self.z)
        self.xh = self.x
        self.c = self.z.clone()
        wnorm = float(torch.linalg.norm(self.wl1)) * np.sqrt(L)
        xnorm = float(torch.linalg.norm(self.x))
        if opts.rho:
            self.rho = float(opts.rho)
        else:
            self.rho = wnorm / xnorm if xnorm > 0 and wnorm > 0 else 1.0
        self.iterations = 0
        self.rho_updates = 0
        self.trace: list[dict] = []
        self.seconds = 0.0
        self.n_dim = float(np.sqrt(self.r * self.x.numel() + self.z.numel()))

    def _factor(self) -> torch.Tensor:
        """(A^T A + r I)^{-1}: one Cholesky per layer, in float64 whatever the iteration dtype
        (cond <= 1 + ||A||^2 / r after the equilibration; a small r makes it large), its
        inverse then turning every x-update into one matmul."""
        A64 = self.A.to(torch.float64)
        K = A64.T @ A64
        K.diagonal().add_(self.r)
        return torch.cholesky_inverse(torch.linalg.cholesky(K)).to(self.dt)

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=self.dt, device=self.dev)

    def _prox_f(self, c: torch.Tensor, rho: float, out: torch.Tensor,
                diff: torch.Tensor) -> torch.Tensor:
        """Pi_C(c) (or the prox of the lambda misfit) into ``out``: min(c, V) on the inactive
        entries, c - k (c - Y) on the active ones, k from the ball (or from lambda and rho).
        ``diff`` is scratch space of c's shape."""
        torch.sub(c, self.Y, out=diff).mul_(self.actf)
        torch.minimum(c, self.Vm, out=out)  # Vm = +inf on the active entries
        if self.radius is not None:
            nrm = float(torch.linalg.vector_norm(diff))
            k = 0.0 if nrm <= self.radius else 1.0 - self.radius / nrm
        else:
            k = 2.0 * self.lam / (rho + 2.0 * self.lam)
        if k:
            out.sub_(diff, alpha=k)
        return out

    def run(self, max_iter: int, eps_abs: float, eps_rel: float,
            progress: Progress = no_progress) -> bool:
        """Up to ``max_iter`` more iterations; True when the stopping rule was met.

        The sample-space arrays (P x L, the bulk of the memory traffic) live in preallocated
        buffers that are swapped rather than reallocated, and the over-relaxed step and the
        dual update share one buffer (t = z_r + u_z, then u_z = t - z)."""
        t0 = time.perf_counter()
        o = self.opts
        # tolerances a float32 (or lower) run can reach; the polish works in float64 anyway
        fin = torch.finfo(self.dt).eps
        eps_abs, eps_rel = max(eps_abs, 10.0 * fin), max(eps_rel, 100.0 * fin)
        A, r, alpha = self.A, self.r, float(o.alpha)
        x, z, ux, uz = self.x, self.z, self.ux, self.uz
        rho = self.rho
        xh, c = self.xh, self.c
        zh, diff = torch.empty_like(z), torch.empty_like(z)
        t, zn = torch.empty_like(z), torch.empty_like(z)
        stable = 0
        prev_supp = None
        converged = False
        rp = rd = ep = ed = float("nan")
        k = 0
        for k in range(1, int(max_iter) + 1):
            cx = x - ux
            xh = torch.sign(cx) * torch.clamp(cx.abs() - self.wl1 / (rho * r), min=0.0)
            torch.sub(z, uz, out=c)
            self._prox_f(c, rho, zh, diff)
            xr = torch.add(x, xh - x, alpha=alpha) if alpha != 1.0 else xh
            # t = z_r + u_z with z_r = alpha zh + (1 - alpha) z
            torch.add(uz, z, alpha=1.0 - alpha, out=t).add_(zh, alpha=alpha)
            xn = self.Kinv @ torch.addmm(xr + ux, A.T, t, beta=r)
            torch.matmul(A, xn, out=zn)
            ux = ux + xr - xn
            t.sub_(zn)  # the new u_z
            check = k % o.check_every == 0 or k == max_iter
            if check:
                rp = float(torch.sqrt(r * torch.sum((xh - xn) ** 2)
                                      + torch.sum(torch.sub(zh, zn, out=diff) ** 2)))
                rd = rho * float(torch.sqrt(r * torch.sum((xn - x) ** 2)
                                            + torch.sum(torch.sub(zn, z, out=diff) ** 2)))
                big = max(float(torch.sqrt(r * torch.sum(xh ** 2) + torch.sum(zh ** 2))),
                          float(torch.sqrt(r * torch.sum(xn ** 2) + torch.sum(zn ** 2))))
                dual = rho * float(torch.sqrt(r * torch.sum(ux ** 2) + torch.sum(t ** 2)))
                ep = eps_abs * self.n_dim + eps_rel * big
                ed = eps_abs * self.n_dim + eps_rel * dual
                supp = xh != 0
                flips = (int(torch.count_nonzero(supp ^ prev_supp)) if prev_supp is not None
                         else supp.numel())
                stable = stable + 1 if flips <= o.support_tol * supp.numel() else 0
                prev_supp = supp
            x = xn
            z, zn = zn, z
            uz, t = t, uz
            if not check:
                continue
            it = self.iterations + k
            # converged: small residuals and a settled support (or much smaller residuals, for
            # a support that flickers on a degenerate coordinate)
            if rp <= ep and rd <= ed and (stable >= o.stable_checks
                                          or (rp <= 1e-2 * ep and rd <= 1e-2 * ed)):
                converged = True
                break
            if o.adaptive_rho and it % o.adapt_every == 0 and rd > 0 and rp > 0:
                ratio = (rp / ep) / (rd / ed)
                if ratio > o.adapt_tol or ratio < 1.0 / o.adapt_tol:
                    new = rho * float(np.clip(np.sqrt(ratio), 0.05, 20.0))
                    ux = ux * (rho / new)
                    uz.mul_(rho / new)
                    rho = new
                    self.rho_updates += 1
            if it % (o.check_every * 100) == 0:
                self.trace.append({"iter": it, "r_prim": rp, "r_dual": rd, "rho": rho})
                progress("admm", k, int(max_iter))
        self.iterations += k
        self.trace.append({"iter": self.iterations, "r_prim": rp, "r_dual": rd, "eps_prim": ep,
                           "eps_dual": ed, "rho": rho})
        self.x, self.z, self.ux, self.uz, self.rho = x, z, ux, uz, rho
        self.xh, self.c = xh, c
        self.seconds += time.perf_counter() - t0
        return converged

    def promote(self) -> bool:
        """Continue in float64 (a float32 run stalls at its rounding floor); False if already."""
        if self.dt == torch.float64:
            return False
        self.dt = torch.float64
        for name in ("A", "Y", "V", "actf", "Vm", "wl1", "x", "z", "ux", "uz", "xh", "c"):
            setattr(self, name, getattr(self, name).to(torch.float64))
        self.Kinv = self._factor()
        self.factorizations += 1
        return True

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(W^T of the live columns from the soft-threshold step -- exactly sparse --, the
        inactive entries clamped at their bound in the last iteration)."""
        WT = (self.xh * self._t(self.e[:, None] * self.s)).cpu().numpy().astype(np.float64)
        clamp = (~self.act) & (self.c > self.V)  # the prox's input above the bound
        return WT, clamp.cpu().numpy()


# ----------------------------------------------------------------------------------------------
# polish: the KKT system of (4) / eq. 11 on a fixed support and bound set


def _try_solve(Kmat: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    """Solve the symmetric KKT system, or None when it is singular or badly conditioned."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            sol = scipy.linalg.solve(Kmat, rhs, assume_a="sym")
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgWarning, ValueError):
            return None
    if not np.all(np.isfinite(sol)):
        return None
    if np.linalg.norm(Kmat @ sol - rhs) > 1e-9 * (np.linalg.norm(rhs) + 1e-300):
        return None
    return sol


@dataclass
class _Sets:
    S: list[np.ndarray]  # support (coordinates of Wa, bias included when present)
    sgn: list[np.ndarray]  # signs on the support (0 for the bias)
    T: list[np.ndarray]  # inactive samples held at the bound

    def key(self) -> int:
        return hash(tuple(a.tobytes() for m in range(len(self.S))
                          for a in (self.S[m], self.sgn[m], self.T[m])))


@dataclass
class _Candidate:
    U: np.ndarray  # (Na, L) = Wa^T of the live columns
    t: float
    sets: _Sets
    cols: list
    certified: bool


@dataclass
class _PolishResult:
    best: _Candidate | None  # the certified candidate, else the feasible one with least l1
    first: _Candidate | None  # round 1 (ADMM's sets), for the least-squares repair
    log: list[dict] = field(default_factory=list)


class _Polish:
    """Active-set refinement of ADMM's answer for the live columns of a layer."""

    def __init__(self, Xa, Y, V, act, bias: bool, n_in: int, eps: float | None,
                 lam: float | None, wscale: float = 1.0) -> None:
        self.Xa, self.Y, self.V, self.act = Xa, Y, V, act
        self.P, self.Na = Xa.shape
        self.L = Y.shape[1]
        self.bias = bias
        self.n_in = n_in
        self.eps, self.lam = eps, lam
        self.exact = lam is None and eps == 0.0
        top = float(np.max(np.abs(Y))) if Y.size else 0.0
        self.yscale = top if top > 0 else 1.0
        self.cache: dict[int, tuple] = {}
        self.lp_cache: dict[int, tuple] = {}
        self.lp_calls = 0
        self.zero_tol = 1e-12 * wscale
        self.max_moves = 3

    def column(self, m: int, S: np.ndarray, sgn: np.ndarray, T: np.ndarray) -> tuple:
        """(u_a, u_b, nu_a, nu_b, c, b, a, degenerate): u(t) = u_a + t u_b on S, the active
        misfit of column m is c + 2 b t + a t^2."""
        key = (S.tobytes(), sgn.tobytes(), T.tobytes())
        hit = self.cache.get(m)
        if hit is not None and hit[0] == key:
            return hit[1]
        a = np.flatnonzero(self.act[:, m])
        Aa = self.Xa[np.ix_(a, S)]
        y = self.Y[a, m]
        k, q = len(S), len(T)
        G = Aa.T @ Aa
        h = Aa.T @ y
        B = self.Xa[np.ix_(T, S)] if q else np.zeros((0, k))
        vT = self.V[T, m]

        def system(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            qk = len(rows)
            Km = np.zeros((k + qk, k + qk))
            Km[:k, :k] = G
            Km[:k, k:] = B[rows].T
            Km[k:, :k] = B[rows]
            rhs = np.zeros((k + qk, 2))
            rhs[:k, 0] = h
            rhs[:k, 1] = -sgn
            rhs[k:, 0] = vT[rows]
            return Km, rhs

        keep = np.arange(q)
        degenerate = False
        sol = _try_solve(*system(keep)) if k + q else np.zeros((0, 2))
        if sol is None:
            degenerate = True
            if q:
                # bound rows that are combinations of others (e.g. samples equal on S) make
                # the system singular: keep an independent subset; their multipliers are then
                # not unique, which the LP certificate accounts for
                Rq, piv = scipy.linalg.qr(B.T, mode="r", pivoting=True)
                d = np.abs(np.diag(Rq))
                rank = int((d > 1e-10 * d[0]).sum()) if d.size and d[0] > 0 else 0
                keep = np.sort(piv[:rank])
            Km, rhs = system(keep)
            sol = _try_solve(Km, rhs)
            if sol is None:
                sol = np.linalg.lstsq(Km, rhs, rcond=None)[0]
        ua, ub = sol[:k, 0], sol[:k, 1]
        na, nb = np.zeros(q), np.zeros(q)
        na[keep], nb[keep] = sol[k:, 0], sol[k:, 1]
        ra = Aa @ ua - y
        rb = Aa @ ub
        out = (ua, ub, na, nb, float(ra @ ra), float(ra @ rb), float(rb @ rb), degenerate)
        self.cache[m] = (key, out)
        return out

    def _t_for(self, cols: list, target: float | None) -> float | None:
        if self.lam is not None:
            return 1.0 / (2.0 * self.lam)
        if self.exact:
            return 0.0
        c = sum(cc[4] for cc in cols)
        b = sum(cc[5] for cc in cols)
        a = sum(cc[6] for cc in cols)
        goal = target * target
        if c > goal:
            return None  # eps cannot be met on this support
        if a <= 0:
            return 0.0
        return float((-b + np.sqrt(max(b * b - a * (c - goal), 0.0))) / a)

    @staticmethod
    def at(cand: _Candidate, t: float) -> np.ndarray:
        """The candidate's support and bound set at another t."""
        U = np.zeros_like(cand.U)
        for m, S in enumerate(cand.sets.S):
            ua, ub = cand.cols[m][:2]
            U[S, m] = ua + t * ub
        return U

    def _lp_certify(self, m: int, S: np.ndarray, sgn: np.ndarray, T: np.ndarray,
                    gr: np.ndarray, t: float) -> bool:
        """Is there nu >= 0 on T with X_T^T nu + gr = -t s on S and |.| <= t off S?"""
        key = (S.tobytes(), sgn.tobytes(), T.tobytes(), float(t))
        hit = self.lp_cache.get(m)
        if hit is not None and hit[0] == key:
            return hit[1]
        self.lp_calls += 1
        B = self.Xa[T]  # (q, Na)
        on = np.zeros(self.Na, dtype=bool)
        on[S] = True
        if self.bias:
            on[self.Na - 1] = True
        full_s = np.zeros(self.Na)
        full_s[S] = sgn
        tol = 1e-7 * t + 1e-12 * self.yscale
        A_eq = B[:, on].T
        b_eq = -t * full_s[on] - gr[on]
        Boff = B[:, ~on].T
        A_ub = np.vstack([Boff, -Boff])
        b_ub = np.concatenate([t - gr[~on], t + gr[~on]]) + tol
        # equalities as two-sided inequalities with the same small slack
        A_ub = np.vstack([A_ub, A_eq, -A_eq])
        b_ub = np.concatenate([b_ub, b_eq + tol, -b_eq + tol])
        res = scipy.optimize.linprog(np.zeros(len(T)), A_ub=A_ub, b_ub=b_ub,
                                     bounds=(0, None), method="highs-ipm")
        self.lp_cache[m] = (key, res.status == 0)
        return res.status == 0

    def _dual_moves(self, m, Se, se, Tm, neg, grow, g, nu, t, ch, worst, moved) -> tuple:
        """A few dual moves for column m, the worst first, releasing bounds before growing the
        support (wholesale moves can cycle). Returns the column's next (S, signs, T)."""
        if grow.any():
            worst["grad_viol"] = max(worst["grad_viol"],
                                     float(np.abs(g[grow]).max()) / max(t, 1e-300) - 1)
        if neg.any():
            drop = np.flatnonzero(neg)
            drop = drop[np.argsort(nu[drop])[: self.max_moves]]
            neg = np.zeros_like(neg)
            neg[drop] = True
            grow = np.zeros_like(grow)
        add = np.flatnonzero(grow)
        if len(add) > self.max_moves:
            add = add[np.argsort(-np.abs(g[add]))[: self.max_moves]]
        add = np.sort(add)
        ch["bound_out"] += int(neg.sum())
        ch["support_in"] += len(add)
        if len(add) or neg.any():
            moved.append(m)
        newS = np.concatenate([Se, add])
        order = np.argsort(newS)
        return newS[order], np.concatenate([se, -np.sign(g[add])])[order], Tm[~neg]

    def run(self, WT: np.ndarray, tight: np.ndarray, rounds: int,
            target: float | None, deadline: float = math.inf) -> _PolishResult:
        Xa, act, Na, L = self.Xa, self.act, self.Na, self.L
        bidx = Na - 1 if self.bias else None
        S, sgn, T = [], [], []
        for m in range(L):
            nz = np.flatnonzero(WT[:, m] != 0)
            if bidx is not None:
                nz = np.union1d(nz, [bidx])
            sv = np.sign(WT[nz, m])
            if bidx is not None:
                sv[nz == bidx] = 0.0
            S.append(nz.astype(np.int64))
            sgn.append(sv)
            T.append(np.flatnonzero(tight[:, m] & ~act[:, m]).astype(np.int64))
        sets = _Sets(S, sgn, T)
        out = _PolishResult(best=None, first=None)
        best_l1 = np.inf
        seen: set[int] = set()
        tol_z = 1e-10 * self.yscale
        for rnd in range(rounds):
            if rnd and time.perf_counter() > deadline:
                out.log.append({"round": rnd + 1, "stopped": "time budget"})
                break
            key = sets.key()
            if key in seen:
                out.log.append({"round": rnd + 1, "cycle": True})
                break
            seen.add(key)
            cols = [self.column(m, sets.S[m], sets.sgn[m], sets.T[m]) for m in range(L)]
            t = self._t_for(cols, target)
            if t is None:
                out.log.append({"round": rnd + 1, "infeasible_on_support": True})
                break
            U = np.zeros((Na, L))
            Nu = np.zeros((self.P, L))
            for m in range(L):
                ua, ub, na, nb = cols[m][:4]
                U[sets.S[m], m] = ua + t * ub
                if len(sets.T[m]):
                    Nu[sets.T[m], m] = na + t * nb
            cand = _Candidate(U=U, t=t, sets=sets, cols=cols, certified=False)
            if rnd == 0:
                out.first = cand
            Z = Xa @ U
            R = np.where(act, Z - self.Y, 0.0)
            if not self.exact:
                Gr = Xa.T @ R
                G = Gr + Xa.T @ Nu  # (Na, L): X_Om^T r + X_T^T nu'
            ch = {"sign": 0, "bound_in": 0, "bound_out": 0, "support_in": 0, "deferred": 0,
                  "lp_ok": 0}
            worst = {"sign_mag": 0.0, "grad_viol": 0.0}
            primal_ok = True
            moved: list[int] = []
            pending: list[tuple] = []
            nS, nsg, nT = [], [], []

            for m in range(L):
                Sm, sm, Tm = sets.S[m], sets.sgn[m], sets.T[m]
                u = U[Sm, m]
                # values pinned at zero by the bound set come out as rounding noise
                near0 = (sm != 0) & (np.abs(u) <= self.zero_tol)
                wrong = (sm != 0) & (u * sm < 0) & ~near0
                viol = ~act[:, m] & (Z[:, m] > self.V[:, m] + tol_z)
                viol[Tm] = False
                if wrong.any() or viol.any():
                    primal_ok = False
                    moved.append(m)
                    ch["sign"] += int(wrong.sum())
                    ch["bound_in"] += int(viol.sum())
                    if wrong.any():
                        worst["sign_mag"] = max(worst["sign_mag"], float(np.abs(u[wrong]).max()))
                    keep = ~wrong & ~near0
                    nS.append(Sm[keep])
                    nsg.append(sm[keep])
                    nT.append(np.union1d(Tm, np.flatnonzero(viol)).astype(np.int64))
                    continue
                if self.exact:
                    nS.append(Sm)
                    nsg.append(sm)
                    nT.append(Tm)
                    continue
                # dual feasibility: multipliers >= 0, subgradients within [-1, 1] off S
                Se, se = Sm[~near0], sm[~near0]
                nu = Nu[Tm, m]
                tol_nu = 1e-9 * (float(np.max(np.abs(nu))) if len(nu) else 0.0) + 1e-14
                neg = nu < -tol_nu
                g = G[:, m]
                off = np.ones(Na, dtype=bool)
                off[Se] = False
                if bidx is not None:
                    off[bidx] = False
                grow = off & (np.abs(g) > t * (1.0 + 1e-7) + 1e-12 * self.yscale)
                if (neg.any() or grow.any()) and len(Tm) and cols[m][7]:
                    # degenerate bound set: the multipliers are not unique, an LP decides;
                    # deferred until the other columns (and so t) have settled
                    pending.append((m, len(nS), Se, se, Tm, neg, grow, g, nu))
                    nS.append(Sm)
                    nsg.append(sm)
                    nT.append(Tm)
                    continue
                sets_m = self._dual_moves(m, Se, se, Tm, neg, grow, g, nu, t, ch, worst, moved)
                nS.append(sets_m[0])
                nsg.append(sets_m[1])
                nT.append(sets_m[2])
            settled = primal_ok and not moved
            for m, pos, Se, se, Tm, neg, grow, g, nu in pending:
                if not settled:
                    ch["deferred"] += 1
                    continue
                if self._lp_certify(m, Se, se, Tm, Gr[:, m], t):
                    ch["lp_ok"] += 1
                    nS[pos], nsg[pos], nT[pos] = Se, se, Tm
                    continue
                nS[pos], nsg[pos], nT[pos] = self._dual_moves(m, Se, se, Tm, neg, grow, g, nu,
                                                              t, ch, worst, moved)
            if primal_ok:
                l1 = float(np.abs(U[: self.n_in]).sum())
                if l1 < best_l1:
                    best_l1, out.best = l1, cand
            ch_total = sum(v for kk, v in ch.items() if kk != "lp_ok")
            out.log.append({"round": rnd + 1, "t": t, **ch, **worst, "columns": moved[:8]})
            if primal_ok and ch_total == 0:
                # eps = 0 (program 8): primal checks only, no optimality certificate
                cand.certified = not self.exact
                out.best = cand
                break
            sets = _Sets(nS, nsg, nT)
        return out


# ----------------------------------------------------------------------------------------------


def _gram_form(Xa: np.ndarray, Y: np.ndarray, eps: float | None):
    """The misfit of a layer without activation through X^T X: with X^T X = R^T R (R of
    rank k, from the eigendecomposition) and B = R^{+T} X^T Y,

        ||X U - Y||_F^2 = ||R U - B||_F^2 + (||Y||_F^2 - ||B||_F^2)

    for every U, so program (4) (or eq. 11) on (R, B, eps_g) with
    eps_g^2 = eps^2 - (||Y||^2 - ||B||^2) is the same program with k <= N + 1 rows instead of
    P samples. Returns (R, B, eps_g) (eps_g None with a fixed lambda), or None when it does not
    pay (P <= k) or eps is below the least-squares misfit (then the sample form reports it)."""
    P, Na = Xa.shape
    if P <= Na:
        return None
    G = Xa.T @ Xa
    s, Q = np.linalg.eigh(G)
    keep = s > max(float(s.max()), 0.0) * Na * np.finfo(np.float64).eps
    if not keep.any():
        return None
    root = np.sqrt(s[keep])
    R = root[:, None] * Q[:, keep].T
    # an input that is zero on every sample has a zero column in X, so in R too; the
    # eigenvectors carry rounding there, which the column equilibration would blow up
    R[:, ~np.any(Xa != 0, axis=0)] = 0.0
    B = (Q[:, keep].T @ (Xa.T @ Y)) / root[:, None]
    if eps is None:
        return R, B, None
    rest = float(np.sum(Y * Y)) - float(np.sum(B * B))
    if eps * eps <= max(rest, 0.0):
        return None
    return R, B, float(np.sqrt(eps * eps - max(rest, 0.0)))


def _refit_mix(Xa: np.ndarray, Y: np.ndarray, V: np.ndarray, act: np.ndarray, WT: np.ndarray,
               bias: bool, target: float, rest2: float, tight: np.ndarray | None = None,
               cg_iters: int = 10, rounds: int = 8):
    """Repair ADMM's answer (the live columns' W^T, exactly sparse) onto the constraint
    without changing its support.

    Every column is refitted on its own support (bias included) by least squares over its
    active samples (towards Y) and the inactive samples held at their bound (``tight``,
    ADMM's clamped set, plus any a fit pushes over the bound, in up to ``rounds`` rounds;
    towards V). The refit is conjugate gradients on the normal equations, all columns at
    once (two products with X per step), started from ADMM's answer and stopped after
    ``cg_iters`` steps: it only has to lower the misfit, not reach the least-squares point.
    The answer is then W(s) = s W_admm + (1 - s) W_refit with the largest s in [0, 1] whose
    constraint value (active misfit plus inactive violations, plus ``rest2`` from the other
    columns) is at most ``target``. Z(s) = X W(s)^T is affine in s, so every trial s costs a
    few vector operations. Returns (W(s)^T, s, W_refit^T), or None when the refit itself
    misses the target (the support cannot meet eps)."""
    Na, L = WT.shape
    X = torch.as_tensor(Xa, dtype=torch.float64)
    on = torch.as_tensor(WT != 0)
    if bias:
        on[Na - 1] = True
    onf = on.to(torch.float64)
    actt = torch.as_tensor(act)
    Yt = torch.as_tensor(Y, dtype=torch.float64)
    Vt = torch.as_tensor(V, dtype=torch.float64)
    held = torch.zeros_like(actt) if tight is None else torch.as_tensor(tight) & ~actt
    tgt = torch.where(actt, Yt, Vt)
    Wf = torch.as_tensor(WT, dtype=torch.float64).clone()
    tiny = torch.finfo(torch.float64).tiny
    for _ in range(rounds):
        rows = (actt | held).to(torch.float64)
        r = onf * (X.T @ (rows * (tgt - X @ Wf)))
        p = r.clone()
        rs = (r * r).sum(0)
        rs0 = rs.clone()
        for _ in range(cg_iters):
            Ap = onf * (X.T @ (rows * (X @ p)))
            pAp = (p * Ap).sum(0)
            alpha = torch.where(pAp > tiny, rs / pAp.clamp_min(tiny), torch.zeros_like(rs))
            Wf += alpha * p
            r -= alpha * Ap
            rs_new = (r * r).sum(0)
            if float(rs_new.max()) <= 1e-24 * max(float(rs0.max()), tiny):
                break
            p = r + torch.where(rs > tiny, rs_new / rs.clamp_min(tiny),
                                torch.zeros_like(rs)) * p
            rs = rs_new
        over = ~actt & ~held & (X @ Wf > Vt)
        if not bool(over.any()):
            break
        held |= over
    Wf = Wf.numpy()
    Za = Xa @ WT
    Zf = Xa @ Wf
    D = Za - Zf
    R0 = np.where(act, Zf - Y, 0.0)
    Da = np.where(act, D, 0.0)
    c0, c1, c2 = float(np.sum(R0 * R0)), 2.0 * float(np.sum(R0 * Da)), float(np.sum(Da * Da))
    p = np.where(act, -np.inf, Zf - V)
    q = np.where(act, 0.0, D)
    near = (p > 0) | (p + q > 0)
    p, q = p[near], q[near]
    goal = target * target - rest2

    def f(s: float) -> float:
        v = np.maximum(p + s * q, 0.0)
        return c0 + s * (c1 + s * c2) + float(v @ v)

    if f(0.0) > goal:
        return None
    lo, hi = 0.0, 1.0
    if f(1.0) <= goal:
        lo = 1.0
    else:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if f(mid) <= goal:
                lo = mid
            else:
                hi = mid
    return lo * WT + (1.0 - lo) * Wf, lo, Wf


def _l1(Wa: np.ndarray, n_in: int) -> float:
    return float(np.abs(Wa[:, :n_in]).sum())


def _threshold(Wa: np.ndarray, n_in: int, thr: float) -> np.ndarray:
    out = Wa.copy()
    w = out[:, :n_in]
    w[np.abs(w) <= thr] = 0.0
    return out


def _inactive_violation(program: LayerProgram, Wa: np.ndarray) -> float:
    if program.activation == NONE:
        return 0.0
    Z = program.Xa @ Wa.T
    Y = np.asarray(program.Y, dtype=np.float64)
    V = np.zeros_like(Y) if program.V is None else np.asarray(program.V, dtype=np.float64)
    return float(np.linalg.norm(np.where(Y > 0, 0.0, np.maximum(Z - V, 0.0))))


def _bisect(make, ok, lo: float, hi: float, steps: int = 60):
    """Largest s in [lo, hi] (to 2^-steps) with ok(make(s)), assuming ok(make(lo));
    returns (s, make(s)) or (None, None) when even lo fails."""
    best = make(lo)
    if not ok(best):
        return None, None
    top = make(hi)
    if ok(top):
        return hi, top
    a, b = lo, hi
    for _ in range(steps):
        mid = 0.5 * (a + b)
        trial = make(mid)
        if ok(trial):
            a, best = mid, trial
        else:
            b = mid
        if b - a <= 1e-12 * max(abs(hi), 1e-300):
            break
    return a, best


def solve_layer(program: LayerProgram, settings: SolverSettings,
                progress: Progress = no_progress, device: str = "cpu", dtype: str = "float64",
                admm_settings: ADMMSettings | None = None) -> ADMMSolution:
    """Solve program (4)/(6) -- or eq. 11 for every column at a fixed ``program.lam`` -- for the
    whole layer with ADMM and an active-set polish. ``admm_settings`` (or ``settings.admm``
    when the settings carry one) tunes ADMM; ``device``/``dtype`` are torch's for ADMM (the
    polish runs in float64 numpy)."""
    t0 = time.perf_counter()
    opts = admm_settings or getattr(settings, "admm", None) or ADMMSettings()
    N = program.n_in
    Xa = program.Xa
    Wa0 = program.Wa0
    Y = np.asarray(program.Y, dtype=np.float64)
    V = np.zeros_like(Y) if program.V is None else np.asarray(program.V, dtype=np.float64)
    act = np.ones_like(Y, dtype=bool) if program.activation == NONE else Y > 0
    thr = settings.zero_threshold * float(np.max(np.abs(program.W0))) if program.W0.size else 0.0
    eps = None if program.epsilon is None else float(program.epsilon)
    lam = None if program.lam is None else float(program.lam)
    ytop = max(1.0, float(np.abs(Y).max())) if Y.size else 1.0

    # eps = 0 (program 8) is met to rounding only
    eps_ok = None if eps is None else (eps if eps > 0 else 1e-10 * float(np.linalg.norm(Y)))

    def ok(W: np.ndarray) -> bool:
        if eps_ok is None:
            return _inactive_violation(program, W) <= 1e-8 * ytop
        return program.constraint_value(W) <= eps_ok

    Wa, status, live, dead = settle_dead_columns(program)
    failed: list[dict] = []

    history: list[dict] = []
    lam_out: float | None = lam
    solver = None
    rounds = retries = 0
    admm_conv = pol_conv = True
    if live:
        idx = np.asarray(live)
        l1mask = np.ones(Xa.shape[1])
        if program.bias:
            l1mask[-1] = 0.0
        Yl, Vl, actl = Y[:, idx], V[:, idx], act[:, idx]
        gram = _gram_form(Xa, Yl, eps) if program.activation == NONE else None
        if gram is not None:
            # no activation: the misfit lives in the span of X, so ADMM runs on an
            # (rank x L) sample block instead of (P x L), exactly the same program
            Rg, Bg, eps_g = gram
            solver = _ADMM(Rg, Bg, np.zeros_like(Bg), np.ones_like(Bg, dtype=bool), Wa0[idx].T,
                           l1mask, eps_g, lam, opts, device, dtype)
            history.append({"stage": "gram_form", "rows": int(Rg.shape[0]),
                            "samples": int(Xa.shape[0])})
        else:
            solver = _ADMM(Xa, Yl, Vl, actl, Wa0[idx].T, l1mask, eps, lam, opts, device, dtype)

        def assemble(WT: np.ndarray) -> np.ndarray:
            out = Wa.copy()
            out[idx] = WT.T
            return _threshold(out, N, thr)

        target = None if eps is None else eps * (1.0 - 1e-9)
        wscale = float(np.abs(Wa0).max()) if Wa0.size else 1.0
        pol = _Polish(Xa, Yl, Vl, actl, program.bias, N, eps, lam, wscale=wscale or 1.0)
        tol_abs, tol_rel = opts.eps_abs, opts.eps_rel
        attempts = 1 + int(opts.retry and opts.polish)
        best: tuple | None = None  # (W, certified, l1, source)
        for attempt in range(attempts):
            if attempt:
                retries += 1
                # a low-precision run continues in float64 at the same tolerances; a float64
                # run continues with tighter ones
                if not solver.promote():
                    tol_abs, tol_rel = tol_abs / opts.retry_factor, tol_rel / opts.retry_factor
            admm_conv = solver.run(opts.max_iter, tol_abs, tol_rel, progress)
            WT, tight = solver.result()
            if gram is not None:
                tight = np.zeros_like(actl)  # every entry is active: no bounds to hold
            history.append({"stage": "admm", "attempt": attempt + 1,
                            "iterations": solver.iterations, "converged": admm_conv,
                            "rho": solver.rho, "rho_updates": solver.rho_updates,
                            "factorizations": solver.factorizations,
                            "seconds": round(solver.seconds, 4), "trace": solver.trace[-5:]})
            found: list[tuple] = []
            first = None
            if opts.polish:
                tp = time.perf_counter()
                # an ADMM answer that the polish cannot settle quickly goes on (in float64,
                # or with tighter tolerances) rather than being pushed through many rounds
                last = attempt + 1 == attempts
                n_rounds = opts.polish_rounds if last else min(opts.polish_rounds, 10)
                with _blas_threads(opts.polish_blas_threads):
                    res = pol.run(WT, tight, n_rounds, target, deadline=tp + max(
                        opts.polish_min_seconds, opts.polish_time_factor * solver.seconds))
                rounds += len(res.log)
                first = res.first
                progress("polish", len(res.log), opts.polish_rounds)
                cand = res.best
                if cand is not None:
                    Wc = assemble(cand.U)
                    if not ok(Wc) and eps is not None and eps > 0 and cand.t > 0:
                        # thresholding or rounding pushed it over: the misfit grows with t
                        _, Wc = _bisect(lambda s, c=cand: assemble(_Polish.at(c, s)), ok,
                                        0.0, cand.t)
                    if Wc is not None and ok(Wc):
                        found.append((Wc, cand.certified, _l1(Wc, N), "polish"))
                        if lam is None and cand.t > 0:
                            lam_out = 1.0 / (2.0 * cand.t)
                history.append({"stage": "polish", "attempt": attempt + 1,
                                "rounds": len(res.log),
                                "certified": bool(cand is not None and cand.certified),
                                "lambda": lam_out, "lp_calls": pol.lp_calls,
                                "seconds": round(time.perf_counter() - tp, 4),
                                "log": res.log[-6:]})
            # ADMM's own answer, pulled onto the constraint when it is marginally outside
            # (towards the least-squares fit on its support and bound set)
            Wadmm = assemble(WT)
            feasible = ok(Wadmm)  # each check is a product with X: kept, not recomputed
            if not feasible and eps is not None and eps > 0:
                # the cheap repair first: refit every column on its own support, then move
                # from ADMM's answer towards the refit just far enough to meet eps
                tr = time.perf_counter()
                rest = np.setdiff1d(np.arange(len(Wa)), idx)
                rest2 = program.constraint_value(Wa[rest], columns=rest) ** 2
                with _blas_threads(None):
                    rep = _refit_mix(Xa, Yl, Vl, actl, WT, program.bias, target, rest2, tight)
                entry = {"stage": "repair", "method": "support refit",
                         "mix": None if rep is None else rep[1]}
                if rep is not None:
                    Wr = assemble(rep[0])
                    if not ok(Wr):  # thresholding moved it: step back with exact checks
                        # (_bisect returns a feasible point or None)
                        _, Wr = _bisect(lambda s, a=rep[0], b=rep[2]: assemble(
                            s * a + (1 - s) * b), ok, 0.0, rep[1])
                    if Wr is not None:
                        Wadmm, feasible = Wr, True
                entry.update(ok=feasible, seconds=round(time.perf_counter() - tr, 4))
                history.append(entry)
            if not feasible and first is None:
                with _blas_threads(opts.polish_blas_threads):
                    first = pol.run(WT, tight, 1, target).first
            if not feasible and first is not None:
                tfit = 0.0 if lam is None else first.t
                Wfit = assemble(_Polish.at(first, tfit))
                _, Wadmm = _bisect(lambda s, a=Wadmm, b=Wfit: _threshold(s * a + (1 - s) * b,
                                                                         N, thr), ok, 0.0, 1.0)
                feasible = Wadmm is not None
            if feasible:
                found.append((Wadmm, False, _l1(Wadmm, N), "admm"))
            for f in found:
                if best is None or (f[1], -f[2]) > (best[1], -best[2]):
                    best = f
            if best is not None and best[1]:
                break
        pol_conv = bool(best is not None and best[1])
        if best is not None:
            Wa = best[0]
            st = SOLVED if best[1] else INACCURATE
            history.append({"stage": "chosen", "source": best[3], "certified": best[1]})
        elif ok(Wa0):
            # last resort: pull ADMM's answer towards the (feasible) original weights
            Wadmm = assemble(solver.result()[0])
            s, Wa = _bisect(lambda s: _threshold(s * Wadmm + (1 - s) * Wa0, N, thr), ok,
                            0.0, 1.0)
            if Wa is None:  # thresholding the original weights already breaks eps
                s, Wa = 0.0, Wa0.copy()
            st = MIXED
            history.append({"stage": "chosen", "source": MIXED,
                            "admm_weight": s})
            for m in live:
                failed.append({"column": m, "status": MIXED,
                               "action": f"mixed with the original weights ({s:.3g} ADMM)"})
        else:
            Wa = assemble(solver.result()[0])
            st = NOT_REACHED
            for m in live:
                failed.append({"column": m, "status": NOT_REACHED,
                               "action": "kept ADMM's answer; the original weights are "
                                         "infeasible too"})
        for m in live:
            status[m] = st
    constraint = program.constraint_value(Wa)
    reached = ok(Wa)
    iterations = solver.iterations if solver is not None else 0
    return ADMMSolution(
        Wa=Wa, lam=lam_out, constraint=constraint, status=status, failed=failed,
        solves=1 if live else 0, retries=retries, iterations=iterations,
        seconds=time.perf_counter() - t0, passes=rounds, dead_columns=dead,
        eps_reached=bool(reached), history=history, admm_converged=admm_conv,
        polish_converged=pol_conv,
    )


class ADMMSolver:
    """The whole-layer ADMM solver (``--solver admm``) behind the solver protocol."""

    name = "admm"
    capabilities = Capabilities(journal=False, devices=("cpu", "cuda"), granularity="layer")

    def __init__(self, device: str = "cpu", dtype: str = "float64") -> None:
        self.device, self.dtype = device, dtype

    def solve(self, program: LayerProgram, settings: SolverSettings,
              progress: Progress = no_progress, journal=None) -> ADMMSolution:  # noqa: ARG002
        return solve_layer(program, settings, progress, device=self.device, dtype=self.dtype)
