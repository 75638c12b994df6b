"""The active-set polish: the KKT system of (4) / eq. 11 on a fixed support and bound set.

With ADMM's support S (signs s) and the set T of inactive entries it holds at the
bound, the KKT system of (4) restricted to (S, T) reads, for every column,

    [X_{Om,S}^T X_{Om,S}  X_{T,S}^T] [u  ]   [X_{Om,S}^T y_Om - t s]
    [X_{T,S}              0        ] [nu'] = [v_T                   ],   t = 1 / (2 lambda),

which is linear in t: u(t) = u_a + t u_b, and the layer's squared misfit is a quadratic in t,
so the t with misfit eps follows in closed form (one t -- one multiplier -- for the layer, as
the KKT conditions of (4) require). Sign flips, violated bounds, negative multipliers and
off-support subgradients above one update (S, T) and the solve repeats (an active-set method
warm started by ADMM). When the KKT conditions of (4) hold (multipliers of degenerate bound
sets checked by a small LP) the columns are ``solved``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize


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
