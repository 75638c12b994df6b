"""Whole-layer ADMM for the constrained Net-Trim program (4) (parallel) and (6) (cascade).

Unlike the column QPs of eq. 14 (``osqp.py`` + ``search.py``), which reach program (4) only
through a search over the regularisation lambda, this solver attacks (4)/(6) directly, for all
columns of a layer at once:

    min_W  sum_{j weight} |W_mj|   s.t.  Z = X_a W^T,  Z in C,

    C = { Z : ||Z_Omega - Y_Omega||_F <= eps,  Z_Omega^c <= V_Omega^c }       (relu, eq. 3)
    C = { Z : ||Z - Y||_F <= eps }                                             (none)

(Omega: the entries with Y > 0; one scalar eps for the layer; the bias column is free.) With a
fixed lambda instead of eps the indicator of the ball becomes lambda ||Z_Omega - Y_Omega||^2
(eq. 11 for every column at once).

ADMM in graph form: x = E^{-1} W^T / s (columns of X_a equilibrated by E, the data by a scalar
s) and z = A x with A = X_a E. Each iteration

    x_half = soft-threshold(x - u_x)              (the l1 term, weights e_j, bias untouched)
    z_half = Pi_C(z - u_z)                        (ball on the active part, clamp on the rest)
    (x, z) = projection onto {z = A x}            (one Cholesky of A^T A + r I, all columns)
    u += (over-relaxed half step) - (projected)

The penalty rho is adapted by residual balancing; it only rescales the thresholds and the
scaled duals, so the factorisation is kept (it depends on the block ratio r only, which is
fixed; a change of r would refactor). Stopping uses primal and dual residuals.

ADMM's answer is then polished: with its support S (and signs s) and the set T of inactive
entries it holds at the bound, the KKT system of (4) restricted to (S, T) is, for every column,

    [X_{Om,S}^T X_{Om,S}  X_{T,S}^T] [u ]   [X_{Om,S}^T y_Om - t s]
    [X_{T,S}              0        ] [nu] = [v_T                   ],   t = 1 / (2 lambda),

linear in t, so u(t) = u_a + t u_b and the layer's squared misfit is a quadratic in t: the t
meeting ||.||_F = eps is found in closed form (one t, i.e. one multiplier, for the layer: the
KKT conditions of (4)). Sign flips, negative multipliers, violated bounds and off-support
subgradients larger than one update (S, T), and the solve repeats. When nothing changes the
KKT conditions of (4) hold to rounding and the columns are reported ``solved``; otherwise the
best feasible candidate is kept (``solved_inaccurate``), and as a last resort a column block is
pulled towards the original weights until the constraint holds.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch

from nettrim_cli.program import NONE, LayerProgram
from nettrim_cli.solvers.base import LayerSolution, Progress, SolverSettings, no_progress
from nettrim_cli.solvers.osqp import dead_column

SOLVED = "solved"
INACCURATE = "solved_inaccurate"
MIXED = "mixed_with_original"
DEAD = "dead_neuron"


@dataclass
class ADMMSettings:
    """Settings of the whole-layer ADMM (config section ``[admm]``).

    rho: initial penalty (None: ||l1 weights|| / ||warm start||, in scaled units).
    ratio: weight r of the weight copy against the sample-space copy; the factorised matrix is
        A^T A + r I with A the equilibrated X_a. Fixed during a run.
    alpha: over-relaxation in (0, 2).
    eps_abs, eps_rel: stopping tolerances on the primal and dual residuals (scaled units).
    adaptive_rho: balance the residuals by changing rho every ``adapt_every`` iterations when
        they are more than ``adapt_tol`` apart (free: no refactorisation in graph form).
    polish: fix support and bound set after ADMM and solve the KKT system of (4) on them.
    polish_rounds: active-set rounds of the polish.
    """

    rho: float | None = None
    ratio: float = 1.0
    alpha: float = 1.6
    max_iter: int = 10000
    eps_abs: float = 1e-7
    eps_rel: float = 1e-6
    adaptive_rho: bool = True
    adapt_every: int = 25
    adapt_tol: float = 5.0
    check_every: int = 5
    polish: bool = True
    polish_rounds: int = 30


@dataclass
class ADMMSolution(LayerSolution):
    """LayerSolution of the ADMM solver; ``summary()`` names it ``admm``."""

    admm_iterations: int = 0
    admm_converged: bool = False
    polish_converged: bool = False

    def summary(self) -> dict:
        counts = Counter(self.status)
        return {
            "name": "admm",
            "status_counts": dict(sorted(counts.items())),
            "failed_columns": self.failed,
            "solves": self.solves,
            "retries": self.retries,
            "iterations": self.iterations,
            "seconds": round(self.seconds, 4),
            "polish_rounds": self.passes,
            "dead_columns": self.dead_columns,
            "epsilon_reached": self.eps_reached,
            "admm_converged": self.admm_converged,
            "polish_converged": self.polish_converged,
            "history": self.history,
        }


# ----------------------------------------------------------------------------------------------
# ADMM


@dataclass
class _ADMMResult:
    WT: np.ndarray  # (Na, L) weights (transposed) from the soft-threshold step: exactly sparse
    tight: np.ndarray  # (P, L) inactive entries clamped at the bound in the last iteration
    iterations: int
    converged: bool
    trace: list[dict] = field(default_factory=list)
    rho: float = 0.0
    rho_updates: int = 0
    factorizations: int = 0
    seconds: float = 0.0


def _run_admm(Xa: np.ndarray, Y: np.ndarray, V: np.ndarray, act: np.ndarray, W0T: np.ndarray,
              l1mask: np.ndarray, eps: float | None, lam: float | None, opts: ADMMSettings,
              device: str, dtype: str, progress: Progress) -> _ADMMResult:
    t0 = time.perf_counter()
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    P, Na = Xa.shape
    L = Y.shape[1]
    # equilibration: unit-norm columns of A = X_a E; the data scaled to unit rms on Omega
    cn = np.linalg.norm(Xa, axis=0)
    cn[cn == 0] = 1.0
    e = 1.0 / cn
    n_act = int(act.sum())
    s = float(np.linalg.norm(Y[act]) / np.sqrt(n_act)) if n_act else 0.0
    if not np.isfinite(s) or s <= 0:
        s = float(np.max(np.abs(Y))) if Y.size and np.max(np.abs(Y)) > 0 else 1.0

    def T(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=dev)

    A = T(Xa * e[None, :])
    Yt, Vt, act_t = T(Y / s), T(V / s), torch.as_tensor(act, device=dev)
    wl1 = T((l1mask * e)[:, None])  # |W_jm| = s e_j |x_jm|; the constant s is dropped
    x = T(W0T / (e[:, None] * s))
    r = float(opts.ratio)
    K = A.T @ A
    K.diagonal().add_(r)
    chol = torch.linalg.cholesky(K)
    factorizations = 1
    radius = None if eps is None else eps / s
    lam_s = None if lam is None else lam * s

    wnorm = float(torch.linalg.norm(wl1)) * np.sqrt(L)
    xnorm = float(torch.linalg.norm(x))
    rho = float(opts.rho) if opts.rho else (wnorm / xnorm if xnorm > 0 and wnorm > 0 else 1.0)

    def prox_f(c: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
        clamp = (~act_t) & (c > Vt)
        inact = torch.minimum(c, Vt)
        if radius is not None:
            d = torch.where(act_t, c - Yt, 0.0)
            nrm = float(torch.linalg.norm(d))
            f = 1.0 if nrm <= radius else radius / nrm
            on = Yt + f * d
        else:
            on = (rho * c + 2.0 * lam_s * Yt) / (rho + 2.0 * lam_s)
        return torch.where(act_t, on, inact), clamp

    z = A @ x
    ux = torch.zeros_like(x)
    uz = torch.zeros_like(z)
    alpha = float(opts.alpha)
    n_dim = np.sqrt(r * x.numel() + z.numel())
    trace: list[dict] = []
    converged = False
    rho_updates = 0
    it = 0
    clamp = torch.zeros_like(z, dtype=torch.bool)
    xh = x
    rp = rd = ep = ed = float("nan")
    for it in range(1, int(opts.max_iter) + 1):
        c = x - ux
        thr = wl1 / (rho * r)
        xh = torch.sign(c) * torch.clamp(c.abs() - thr, min=0.0)
        zh, clamp = prox_f(z - uz, rho)
        xr = alpha * xh + (1.0 - alpha) * x
        zr = alpha * zh + (1.0 - alpha) * z
        rhs = A.T @ (zr + uz) + r * (xr + ux)
        xn = torch.cholesky_solve(rhs, chol)
        zn = A @ xn
        ux = ux + xr - xn
        uz = uz + zr - zn
        check = it % opts.check_every == 0 or it == opts.max_iter
        if check:
            rp = float(torch.sqrt(r * torch.sum((xh - xn) ** 2) + torch.sum((zh - zn) ** 2)))
            rd = rho * float(torch.sqrt(r * torch.sum((xn - x) ** 2) + torch.sum((zn - z) ** 2)))
            big = max(float(torch.sqrt(r * torch.sum(xh ** 2) + torch.sum(zh ** 2))),
                      float(torch.sqrt(r * torch.sum(xn ** 2) + torch.sum(zn ** 2))))
            dual = rho * float(torch.sqrt(r * torch.sum(ux ** 2) + torch.sum(uz ** 2)))
            ep = opts.eps_abs * n_dim + opts.eps_rel * big
            ed = opts.eps_abs * n_dim + opts.eps_rel * dual
        x, z = xn, zn
        if check:
            if rp <= ep and rd <= ed:
                converged = True
                break
            if opts.adaptive_rho and it % opts.adapt_every == 0 and rd > 0 and ep > 0:
                ratio = (rp / ep) / (rd / ed)
                if ratio > opts.adapt_tol or ratio < 1.0 / opts.adapt_tol:
                    new = rho * float(np.clip(np.sqrt(ratio), 0.05, 20.0))
                    ux = ux * (rho / new)
                    uz = uz * (rho / new)
                    rho = new
                    rho_updates += 1
            if it % (opts.check_every * 100) == 0:
                trace.append({"iter": it, "r_prim": rp, "r_dual": rd, "rho": rho})
                progress("admm", it, int(opts.max_iter))
    trace.append({"iter": it, "r_prim": rp, "r_dual": rd, "eps_prim": ep, "eps_dual": ed,
                  "rho": rho})
    WT = (xh * T(e[:, None] * s)).detach().cpu().numpy().astype(np.float64)
    tight = clamp.detach().cpu().numpy()
    return _ADMMResult(WT=WT, tight=tight, iterations=it, converged=converged, trace=trace,
                       rho=rho, rho_updates=rho_updates, factorizations=factorizations,
                       seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# polish: the KKT system of (4) / eq. 11 on a fixed support and bound set


def _kkt_solve(Kmat: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            sol = scipy.linalg.solve(Kmat, rhs, assume_a="sym")
            if np.all(np.isfinite(sol)):
                res = np.linalg.norm(Kmat @ sol - rhs)
                if res <= 1e-9 * (np.linalg.norm(rhs) + 1e-300):
                    return sol
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgWarning, ValueError):
            pass
    return np.linalg.lstsq(Kmat, rhs, rcond=None)[0]


class _Polish:
    """Active-set refinement of the ADMM answer for the live columns of a layer."""

    def __init__(self, Xa, Y, V, act, bias: bool, eps: float | None, lam: float | None):
        self.Xa, self.Y, self.V, self.act = Xa, Y, V, act
        self.P, self.Na = Xa.shape
        self.L = Y.shape[1]
        self.bias = bias
        self.eps, self.lam = eps, lam
        self.exact = eps is not None and eps == 0.0
        self.yscale = float(np.max(np.abs(Y))) if Y.size else 1.0
        self.yscale = self.yscale if self.yscale > 0 else 1.0
        self.cache: dict[int, tuple] = {}

    def _column(self, m: int, S: np.ndarray, sgn: np.ndarray, T: np.ndarray):
        key = (S.tobytes(), sgn.tobytes(), T.tobytes())
        hit = self.cache.get(m)
        if hit is not None and hit[0] == key:
            return hit[1]
        a = self.act[:, m]
        XS = self.Xa[:, S]
        Aa = XS[a]
        y = self.Y[a, m]
        k, q = len(S), len(T)
        Km = np.zeros((k + q, k + q))
        Km[:k, :k] = Aa.T @ Aa
        rhs = np.zeros((k + q, 2))
        rhs[:k, 0] = Aa.T @ y
        rhs[:k, 1] = -sgn
        if q:
            B = XS[T]
            Km[:k, k:] = B.T
            Km[k:, :k] = B
            rhs[k:, 0] = self.V[T, m]
        sol = _kkt_solve(Km, rhs) if k + q else np.zeros((0, 2))
        ua, ub = sol[:k, 0], sol[:k, 1]
        na, nb = sol[k:, 0], sol[k:, 1]
        ra = Aa @ ua - y
        rb = Aa @ ub
        out = (ua, ub, na, nb, float(ra @ ra), float(ra @ rb), float(rb @ rb))
        self.cache[m] = (key, out)
        return out

    def run(self, WT: np.ndarray, tight: np.ndarray, rounds: int, target: float | None):
        """Returns (WT, t, converged, log). ``target`` is the eps aimed at (slightly below the
        layer's eps, for rounding); None in fixed-lambda mode."""
        Xa, act = self.Xa, self.act
        Na, L = self.Na, self.L
        bidx = Na - 1 if self.bias else None
        S, sgn, Tset = [], [], []
        for m in range(L):
            nz = np.flatnonzero(WT[:, m] != 0)
            if bidx is not None:
                nz = np.union1d(nz, [bidx])
            sv = np.sign(WT[nz, m])
            if bidx is not None:
                sv[nz == bidx] = 0.0
            S.append(nz.astype(np.int64))
            sgn.append(sv)
            Tset.append(np.flatnonzero(tight[:, m] & ~act[:, m]).astype(np.int64))
        log: list[dict] = []
        t = 0.0 if target is None or self.exact else None
        if self.lam is not None:
            t = 1.0 / (2.0 * self.lam)
        U = np.zeros((Na, L))
        converged = False
        feasible = True
        for rnd in range(rounds):
            cols = [self._column(m, S[m], sgn[m], Tset[m]) for m in range(L)]
            if self.lam is None and not self.exact:
                c = sum(cc[4] for cc in cols)
                b = sum(cc[5] for cc in cols)
                a = sum(cc[6] for cc in cols)
                goal = target ** 2
                if c > goal:
                    feasible = False
                    log.append({"round": rnd + 1, "infeasible_on_support": True})
                    break
                if a <= 0:
                    t = 0.0
                else:
                    disc = b * b - a * (c - goal)
                    t = (-b + np.sqrt(max(disc, 0.0))) / a
            # assemble the candidate and its multipliers
            U[:] = 0.0
            Nu = np.zeros((self.P, L))
            for m in range(L):
                ua, ub, na, nb = cols[m][:4]
                U[S[m], m] = ua + t * ub
                if len(Tset[m]):
                    Nu[Tset[m], m] = na + t * nb
            Z = Xa @ U
            R = np.where(act, Z - self.Y, 0.0)
            changes = {"sign": 0, "bound_out": 0, "bound_in": 0, "support_in": 0}
            newS, newsgn, newT = [], [], []
            if not self.exact:
                G = Xa.T @ (R + Nu)  # (Na, L): X_Om^T r + X_T^T nu
            for m in range(L):
                Sm, sm, Tm = S[m], sgn[m], Tset[m]
                u = U[Sm, m]
                # multipliers of the bound set must be >= 0
                if len(Tm):
                    nu = Nu[Tm, m]
                    tol_nu = 1e-9 * (float(np.max(np.abs(nu))) + (t or 0.0) * self.yscale)
                    keep = nu >= -tol_nu
                    changes["bound_out"] += int((~keep).sum())
                    Tm = Tm[keep]
                # bounds outside the set must hold
                inact = ~act[:, m]
                viol = inact & (Z[:, m] > self.V[:, m] + 1e-10 * self.yscale)
                viol[Tm] = False
                if viol.any():
                    changes["bound_in"] += int(viol.sum())
                    Tm = np.union1d(Tm, np.flatnonzero(viol)).astype(np.int64)
                if not self.exact:
                    # signs on the support
                    bad = (sm != 0) & (u * sm <= 0)
                    if bad.any():
                        changes["sign"] += int(bad.sum())
                        Sm, sm = Sm[~bad], sm[~bad]
                    # subgradients off the support
                    g = G[:, m]
                    off = np.ones(Na, dtype=bool)
                    off[S[m]] = False
                    if bidx is not None:
                        off[bidx] = False
                    grow = off & (np.abs(g) > t * (1.0 + 1e-7) + 1e-13 * self.yscale)
                    if grow.any():
                        changes["support_in"] += int(grow.sum())
                        add = np.flatnonzero(grow)
                        order = np.argsort(np.concatenate([Sm, add]))
                        Sm = np.concatenate([Sm, add])[order]
                        sm = np.concatenate([sm, -np.sign(g[add])])[order]
                newS.append(Sm)
                newsgn.append(sm)
                newT.append(Tm)
            log.append({"round": rnd + 1, "t": t, **changes})
            self.final = (S, sgn, Tset, cols)
            if not any(changes.values()):
                converged = True
                break
            S, sgn, Tset = newS, newsgn, newT
        if not feasible:
            return None, t, False, log
        return U, t, converged, log

    def at(self, t: float) -> np.ndarray:
        """The last round's candidate (same support, signs and bound set) at another t."""
        S, _, _, cols = self.final
        U = np.zeros((self.Na, self.L))
        for m in range(self.L):
            ua, ub = cols[m][:2]
            U[S[m], m] = ua + t * ub
        return U


# ----------------------------------------------------------------------------------------------


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


def solve_layer(program: LayerProgram, settings: SolverSettings,
                progress: Progress = no_progress, device: str = "cpu", dtype: str = "float64",
                admm_settings: ADMMSettings | None = None) -> ADMMSolution:
    """Solve program (4)/(6) (or eq. 11 at a fixed lambda) for the whole layer with ADMM plus
    an active-set polish. ``admm_settings`` (or ``settings.admm`` when present) tunes ADMM."""
    t0 = time.perf_counter()
    opts = admm_settings or getattr(settings, "admm", None) or ADMMSettings()
    M, N = program.n_out, program.n_in
    Xa = program.Xa
    Wa0 = program.Wa0
    Y = np.asarray(program.Y, dtype=np.float64)
    V = np.zeros_like(Y) if program.V is None else np.asarray(program.V, dtype=np.float64)
    act = np.ones_like(Y, dtype=bool) if program.activation == NONE else Y > 0
    thr = settings.zero_threshold * float(np.max(np.abs(program.W0))) if program.W0.size else 0.0
    eps = None if program.epsilon is None else float(program.epsilon)
    lam = None if program.lam is None else float(program.lam)

    Wa = Wa0.copy()
    status = ["unsolved"] * M
    failed: list[dict] = []
    live: list[int] = []
    dead = 0
    for m in range(M):
        wa = dead_column(program, m)
        if wa is None:
            live.append(m)
        else:
            Wa[m] = wa
            status[m] = DEAD
            dead += 1

    history: list[dict] = []
    lam_out: float | None = lam
    iterations = 0
    rounds = 0
    admm_conv = True
    pol_conv = True
    if live:
        idx = np.asarray(live)
        l1mask = np.ones(Xa.shape[1])
        if program.bias:
            l1mask[-1] = 0.0
        res = _run_admm(Xa, Y[:, idx], V[:, idx], act[:, idx], Wa0[idx].T, l1mask, eps, lam,
                        opts, device, dtype, progress)
        iterations = res.iterations
        admm_conv = res.converged
        history.append({"stage": "admm", "iterations": res.iterations,
                        "converged": res.converged, "rho": res.rho,
                        "rho_updates": res.rho_updates, "factorizations": res.factorizations,
                        "seconds": round(res.seconds, 4), "trace": res.trace[-10:]})

        def assemble(WT: np.ndarray) -> np.ndarray:
            out = Wa.copy()
            out[idx] = WT.T
            return _threshold(out, N, thr)

        def ok(W: np.ndarray) -> bool:
            if eps is None:
                return _inactive_violation(program, W) <= 1e-8 * max(1.0, float(np.abs(Y).max()))
            return program.constraint_value(W) <= eps

        cand_admm = assemble(res.WT)
        chosen, chosen_status = None, INACCURATE
        pol_conv = False
        if opts.polish:
            tp = time.perf_counter()
            pol = _Polish(Xa, Y[:, idx], V[:, idx], act[:, idx], program.bias, eps, lam)
            target = None if eps is None else eps * (1.0 - 1e-9)
            U, t, pol_conv, log = pol.run(res.WT, res.tight, opts.polish_rounds, target)
            rounds = len(log)
            progress("polish", rounds, opts.polish_rounds)
            if U is not None:
                cand = assemble(U)
                if eps is not None and eps > 0 and not ok(cand):
                    # rounding or thresholding pushed it over: shrink t (the misfit grows with t)
                    cand = None
                    lo, hi = 0.0, t
                    for _ in range(60):
                        mid = 0.5 * (lo + hi)
                        c2 = assemble(pol.at(mid))
                        if ok(c2):
                            lo, cand = mid, c2
                        else:
                            hi = mid
                        if hi - lo <= 1e-9 * t:
                            break
                if cand is not None and ok(cand):
                    chosen, chosen_status = cand, (SOLVED if pol_conv else INACCURATE)
                if t is not None and t > 0 and lam is None:
                    lam_out = 1.0 / (2.0 * t)
            history.append({"stage": "polish", "rounds": rounds, "converged": pol_conv,
                            "lambda": lam_out, "seconds": round(time.perf_counter() - tp, 4),
                            "log": log[-10:]})
        if ok(cand_admm) and (chosen is None or
                              (not pol_conv and _l1(cand_admm, N) < _l1(chosen, N))):
            chosen, chosen_status = cand_admm, INACCURATE
        if chosen is None:
            # last resort: pull the ADMM answer towards the (feasible) original weights
            if ok(Wa0):
                lo, hi = 0.0, 1.0  # weight of the ADMM answer
                best = Wa0.copy()
                for _ in range(40):
                    mid = 0.5 * (lo + hi)
                    trial = _threshold(mid * cand_admm + (1 - mid) * Wa0, N, thr)
                    if ok(trial):
                        lo, best = mid, trial
                    else:
                        hi = mid
                chosen, chosen_status = best, MIXED
                history.append({"stage": "fallback", "admm_weight": lo})
                for m in live:
                    failed.append({"column": m, "status": MIXED,
                                   "action": f"mixed with original weights ({lo:.3g} ADMM)"})
            else:
                chosen, chosen_status = cand_admm, "epsilon_not_reached"
                for m in live:
                    failed.append({"column": m, "status": chosen_status,
                                   "action": "kept ADMM answer; original weights infeasible"})
        Wa = chosen
        for m in live:
            status[m] = chosen_status
    constraint = program.constraint_value(Wa)
    if eps is not None:
        reached = constraint <= eps
    else:
        reached = _inactive_violation(program, Wa) <= 1e-8 * max(1.0, float(np.abs(Y).max()))
    return ADMMSolution(
        Wa=Wa, lam=lam_out, constraint=constraint, status=status, failed=failed,
        solves=1 if live else 0, retries=0, iterations=iterations,
        seconds=time.perf_counter() - t0, passes=rounds, dead_columns=dead,
        eps_reached=bool(reached), history=history, admm_iterations=iterations,
        admm_converged=admm_conv, polish_converged=pol_conv,
    )

