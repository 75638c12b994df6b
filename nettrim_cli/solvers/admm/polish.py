"""The active-set polish: the KKT system of (4) / eq. 11 on a fixed support and bound set.

With ADMM's support S (signs s) and the set T of inactive entries it holds at the bound, the
KKT system of (4) restricted to (S, T) reads, for every column,

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
    # at a fixed lambda, which columns the KKT conditions certify (the columns are independent
    # there, so each is certified on its own); None with eps (one t couples the columns)
    col_certified: np.ndarray | None = None


@dataclass
class _PolishResult:
    best: _Candidate | None  # the certified candidate, else the feasible one with least l1
    first: _Candidate | None  # round 1 (ADMM's sets), for the least-squares repair
    log: list[dict] = field(default_factory=list)


@dataclass
class _DualCheck:
    """Column m's dual feasibility at t: its support S (signs ``sgn``) without the
    coordinates pinned at zero, its bound set T with multipliers ``nu`` (``neg``: the negative
    ones), and the gradient ``g`` of the misfit plus the bound terms (``grow``: off-support
    entries above t, i.e. subgradients outside [-1, 1])."""

    m: int
    S: np.ndarray
    sgn: np.ndarray
    T: np.ndarray
    nu: np.ndarray
    neg: np.ndarray
    g: np.ndarray
    grow: np.ndarray


@dataclass
class _Round:
    """What one active-set round's KKT checks found: the moves of each kind, the worst
    violations, the columns moved, the dual checks waiting for an LP (with their place in the
    next sets) and the next round's sets, column by column."""

    t: float
    moves: dict[str, int] = field(default_factory=lambda: {
        "sign": 0, "bound_in": 0, "bound_out": 0, "support_in": 0, "deferred": 0, "lp_ok": 0})
    worst: dict[str, float] = field(default_factory=lambda: {"sign_mag": 0.0,
                                                             "grad_viol": 0.0})
    primal_ok: bool = True
    moved: list[int] = field(default_factory=list)
    bad: set[int] = field(default_factory=set)  # columns whose primal checks failed
    pending: list[tuple[int, _DualCheck]] = field(default_factory=list)
    S: list[np.ndarray] = field(default_factory=list)
    sgn: list[np.ndarray] = field(default_factory=list)
    T: list[np.ndarray] = field(default_factory=list)

    def keep(self, S: np.ndarray, sgn: np.ndarray, T: np.ndarray) -> None:
        """Append the next sets of the next column."""
        self.S.append(S)
        self.sgn.append(sgn)
        self.T.append(T)

    def replace(self, pos: int, S: np.ndarray, sgn: np.ndarray, T: np.ndarray) -> None:
        self.S[pos], self.sgn[pos], self.T[pos] = S, sgn, T

    def changes(self) -> int:
        """The number of moves (an LP certificate is not one)."""
        return sum(v for k, v in self.moves.items() if k != "lp_ok")

    def entry(self, rnd: int) -> dict:
        return {"round": rnd + 1, "t": self.t, **self.moves, **self.worst,
                "columns": self.moved[:8]}

    def next_sets(self) -> _Sets:
        return _Sets(self.S, self.sgn, self.T)


class _ColumnBest:
    """At a fixed lambda the columns are independent: each column's best primal-feasible
    candidate so far (least eq. 11 objective, ||u||_1 + lambda x active misfit) over the
    rounds, and whether the KKT conditions certified it (a certified column is settled)."""

    def __init__(self, Na: int, L: int, n_in: int, lam: float) -> None:
        self.n_in, self.lam = n_in, lam
        self.obj = np.full(L, np.inf)
        self.U = np.zeros((Na, L))
        self.S: list = [None] * L
        self.sgn: list = [None] * L
        self.T: list = [None] * L
        self.cols: list = [None] * L
        self.cert = np.zeros(L, dtype=bool)

    def offer(self, cand: _Candidate, step: _Round) -> None:
        moved, t = set(step.moved), cand.t
        for m in range(len(self.obj)):
            if m in step.bad or self.cert[m]:
                continue
            c, b, a = cand.cols[m][4:7]
            obj = float(np.abs(cand.U[: self.n_in, m]).sum()) + self.lam * (
                c + 2.0 * b * t + a * t * t)
            cert = m not in moved
            if cert or obj < self.obj[m]:
                self.obj[m], self.U[:, m], self.cert[m] = obj, cand.U[:, m], cert
                self.S[m], self.sgn[m], self.T[m] = (cand.sets.S[m], cand.sets.sgn[m],
                                                     cand.sets.T[m])
                self.cols[m] = cand.cols[m]

    def candidate(self, t: float) -> _Candidate | None:
        """Every column's best, or None while a column has no primal-feasible candidate."""
        if not np.isfinite(self.obj).all():
            return None
        return _Candidate(U=self.U.copy(), t=t, sets=_Sets(self.S, self.sgn, self.T),
                          cols=self.cols, certified=bool(self.cert.all()),
                          col_certified=self.cert.copy())


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
        if not k + q:
            sol = np.zeros((0, 2))
        elif q > k:
            # more bound rows than support coordinates: singular whatever their values (a
            # dense solve of that size only to fail cost seconds a round on a 3 x 3 conv
            # with 20,000 patches)
            sol = None
        else:
            sol = _try_solve(*system(keep))
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
        import scipy.optimize  # on first use: 0.2 s of every prune's start-up otherwise

        res = scipy.optimize.linprog(np.zeros(len(T)), A_ub=A_ub, b_ub=b_ub,
                                     bounds=(0, None), method="highs-ipm")
        self.lp_cache[m] = (key, res.status == 0)
        return res.status == 0

    def _dual_moves(self, step: _Round, chk: _DualCheck) -> tuple:
        """A few dual moves for column ``chk.m``, the worst first, releasing bounds before
        growing the support (wholesale moves can cycle). Returns the column's next
        (S, signs, T)."""
        t, neg, grow, g = step.t, chk.neg, chk.grow, chk.g
        if grow.any():
            step.worst["grad_viol"] = max(step.worst["grad_viol"],
                                          float(np.abs(g[grow]).max()) / max(t, 1e-300) - 1)
        if neg.any():
            drop = np.flatnonzero(neg)
            drop = drop[np.argsort(chk.nu[drop])[: self.max_moves]]
            neg = np.zeros_like(neg)
            neg[drop] = True
            grow = np.zeros_like(grow)
        add = np.flatnonzero(grow)
        if len(add) > self.max_moves:
            add = add[np.argsort(-np.abs(g[add]))[: self.max_moves]]
        add = np.sort(add)
        step.moves["bound_out"] += int(neg.sum())
        step.moves["support_in"] += len(add)
        if len(add) or neg.any():
            step.moved.append(chk.m)
        newS = np.concatenate([chk.S, add])
        order = np.argsort(newS)
        return newS[order], np.concatenate([chk.sgn, -np.sign(g[add])])[order], chk.T[~neg]

    def _start(self, WT: np.ndarray, tight: np.ndarray) -> _Sets:
        """ADMM's sets: its support and signs (the bias always in, sign 0) and the inactive
        entries it clamped at their bound."""
        bidx = self.Na - 1 if self.bias else None
        S, sgn, T = [], [], []
        for m in range(self.L):
            nz = np.flatnonzero(WT[:, m] != 0)
            if bidx is not None:
                nz = np.union1d(nz, [bidx])
            sv = np.sign(WT[nz, m])
            if bidx is not None:
                sv[nz == bidx] = 0.0
            S.append(nz.astype(np.int64))
            sgn.append(sv)
            T.append(np.flatnonzero(tight[:, m] & ~self.act[:, m]).astype(np.int64))
        return _Sets(S, sgn, T)

    def _candidate(self, sets: _Sets, cols: list, t: float) -> tuple[_Candidate, np.ndarray]:
        """The weights u(t) on every column's support and the bound multipliers nu'(t), (P, L),
        of the KKT solutions ``cols`` at the layer's t."""
        U = np.zeros((self.Na, self.L))
        Nu = np.zeros((self.P, self.L))
        for m in range(self.L):
            ua, ub, na, nb = cols[m][:4]
            U[sets.S[m], m] = ua + t * ub
            if len(sets.T[m]):
                Nu[sets.T[m], m] = na + t * nb
        return _Candidate(U=U, t=t, sets=sets, cols=cols, certified=False), Nu

    def _check(self, cand: _Candidate, Nu: np.ndarray) -> _Round:
        """The KKT conditions of (4) at the candidate, column by column, and the moves that
        repair what fails; the LP checks of degenerate bound sets run last, once every other
        column has settled."""
        Z = self.Xa @ cand.U
        Gr = G = None
        if not self.exact:
            R = np.where(self.act, Z - self.Y, 0.0)
            Gr = self.Xa.T @ R
            G = Gr + self.Xa.T @ Nu  # (Na, L): X_Om^T r + X_T^T nu'
        step = _Round(cand.t)
        for m in range(self.L):
            self._check_column(step, cand, m, Z[:, m], Nu, G)
        settled = step.primal_ok and not step.moved
        for pos, chk in step.pending:
            if not settled:
                step.moves["deferred"] += 1
                continue
            if self._lp_certify(chk.m, chk.S, chk.sgn, chk.T, Gr[:, chk.m], step.t):
                step.moves["lp_ok"] += 1
                step.replace(pos, chk.S, chk.sgn, chk.T)
                continue
            step.replace(pos, *self._dual_moves(step, chk))
        return step

    def _check_column(self, step: _Round, cand: _Candidate, m: int, z: np.ndarray,
                      Nu: np.ndarray, G: np.ndarray | None) -> None:
        """Primal feasibility of column m (the signs on its support, the bounds of eq. 3 on
        its inactive samples); when it holds, dual feasibility. Adds the column's next sets."""
        Sm, sm, Tm = cand.sets.S[m], cand.sets.sgn[m], cand.sets.T[m]
        u = cand.U[Sm, m]
        # values pinned at zero by the bound set come out as rounding noise
        near0 = (sm != 0) & (np.abs(u) <= self.zero_tol)
        wrong = (sm != 0) & (u * sm < 0) & ~near0
        viol = ~self.act[:, m] & (z > self.V[:, m] + 1e-10 * self.yscale)
        viol[Tm] = False
        if wrong.any() or viol.any():
            step.primal_ok = False
            step.moved.append(m)
            step.bad.add(m)
            step.moves["sign"] += int(wrong.sum())
            step.moves["bound_in"] += int(viol.sum())
            if wrong.any():
                step.worst["sign_mag"] = max(step.worst["sign_mag"],
                                             float(np.abs(u[wrong]).max()))
            keep = ~wrong & ~near0
            step.keep(Sm[keep], sm[keep], np.union1d(Tm, np.flatnonzero(viol)).astype(np.int64))
        elif self.exact:
            step.keep(Sm, sm, Tm)
        else:
            self._check_dual(step, cand, m, near0, Nu[Tm, m], G[:, m])

    def _check_dual(self, step: _Round, cand: _Candidate, m: int, near0: np.ndarray,
                    nu: np.ndarray, g: np.ndarray) -> None:
        """Dual feasibility of column m: multipliers >= 0, subgradients within [-1, 1] off S.
        A degenerate bound set (multipliers not unique) waits for the LP."""
        Sm, sm, Tm = cand.sets.S[m], cand.sets.sgn[m], cand.sets.T[m]
        Se, se = Sm[~near0], sm[~near0]
        tol_nu = 1e-9 * (float(np.max(np.abs(nu))) if len(nu) else 0.0) + 1e-14
        neg = nu < -tol_nu
        off = np.ones(self.Na, dtype=bool)
        off[Se] = False
        if self.bias:
            off[self.Na - 1] = False
        grow = off & (np.abs(g) > step.t * (1.0 + 1e-7) + 1e-12 * self.yscale)
        chk = _DualCheck(m=m, S=Se, sgn=se, T=Tm, nu=nu, neg=neg, g=g, grow=grow)
        if (neg.any() or grow.any()) and len(Tm) and cand.cols[m][7] and self.lam is None:
            # degenerate bound set: the multipliers are not unique, an LP decides; deferred
            # until the other columns (and so t) have settled. At a fixed lambda the column
            # moves at once instead: on the 785 x 500 bench layer its LPs (one per degenerate
            # column and round, over hundreds of bound rows) took 1.3 s each and 70 of them
            # filled the polish's time before its second round ended; ADMM's answer is the
            # column's fallback there
            step.pending.append((len(step.S), chk))
            step.keep(Sm, sm, Tm)
            return
        step.keep(*self._dual_moves(step, chk))

    def run(self, WT: np.ndarray, tight: np.ndarray, rounds: int,
            target: float | None, deadline: float = math.inf) -> _PolishResult:
        """Up to ``rounds`` active-set rounds from ADMM's answer ``WT`` (the live columns' W^T)
        and its clamped set ``tight``: each solves the KKT system on the current sets with the
        layer's one t, checks the KKT conditions and moves the sets. Stops when they hold
        (certified), on a cycle, when eps cannot be met on the support, or after
        ``deadline`` (perf_counter seconds)."""
        sets = self._start(WT, tight)
        out = _PolishResult(best=None, first=None)
        best_l1 = np.inf
        colbest = (None if self.lam is None
                   else _ColumnBest(self.Na, self.L, self.n_in, self.lam))
        seen: set[int] = set()
        for rnd in range(rounds):
            if rnd and time.perf_counter() > deadline:
                out.log.append({"round": rnd + 1, "stopped": "time budget"})
                break
            key = sets.key()
            if key in seen:
                out.log.append({"round": rnd + 1, "cycle": True})
                break
            seen.add(key)
            cols = [self.column(m, sets.S[m], sets.sgn[m], sets.T[m]) for m in range(self.L)]
            t = self._t_for(cols, target)
            if t is None:
                out.log.append({"round": rnd + 1, "infeasible_on_support": True})
                break
            cand, Nu = self._candidate(sets, cols, t)
            if rnd == 0:
                out.first = cand
            step = self._check(cand, Nu)
            if colbest is not None:
                colbest.offer(cand, step)
            elif step.primal_ok:
                l1 = float(np.abs(cand.U[: self.n_in]).sum())
                if l1 < best_l1:
                    best_l1, out.best = l1, cand
            out.log.append(step.entry(rnd))
            if step.primal_ok and step.changes() == 0:
                # eps = 0 (program 8): primal checks only, no optimality certificate
                cand.certified = not self.exact
                out.best = cand
                break
            sets = step.next_sets()
        if colbest is not None:
            out.best = colbest.candidate(1.0 / (2.0 * self.lam))
        return out
