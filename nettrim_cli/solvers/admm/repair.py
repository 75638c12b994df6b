"""Helpers around the ADMM and polish stages: the Gram form of a layer without activation,
the support refit and the mixes that pull an answer onto the constraint, thresholding."""

from __future__ import annotations

import numpy as np
import torch


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
    without changing its support: refit every column on its own support (``_support_refit``),
    then move from ADMM's answer towards the refit just far enough (``_mix_towards``).
    Returns (W(s)^T, s, W_refit^T), or None when the refit itself misses the target (the
    support cannot meet eps)."""
    Wf = _support_refit(Xa, Y, V, act, WT, bias, tight, cg_iters, rounds)
    mix = _mix_towards(Xa, Y, V, act, WT, Wf, target, rest2)
    if mix is None:
        return None
    return mix[0], mix[1], Wf


def _support_refit(Xa: np.ndarray, Y: np.ndarray, V: np.ndarray, act: np.ndarray,
                   WT: np.ndarray, bias: bool, tight: np.ndarray | None, cg_iters: int,
                   rounds: int) -> np.ndarray:
    """Every column refitted on its own support (bias included) by least squares over its
    active samples (towards Y) and the inactive samples held at their bound (``tight``,
    ADMM's clamped set, plus any a fit pushes over the bound, in up to ``rounds`` rounds;
    towards V; eq. 3's inequalities taken as equalities on those samples). The refit is
    conjugate gradients on the normal equations, all columns at once (two products with X
    per step), started from ADMM's answer and stopped after ``cg_iters`` steps: it only has
    to lower the misfit, not reach the least-squares point. Returns W_refit^T."""
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
    return Wf.numpy()


def _growth_order(Xa: np.ndarray, WT: np.ndarray, W0T: np.ndarray, n_in: int) -> np.ndarray:
    """The order in which the original weights join ADMM's support (flat indices into the
    weight rows of W^T, ``n_in`` x L): ADMM's nonzeros first, then the other original nonzeros
    by |w| ||x_j|| (the magnitude times input norm score), largest first."""
    score = np.abs(W0T[:n_in]) * np.linalg.norm(Xa[:, :n_in], axis=0)[:, None]
    score[WT[:n_in] != 0] = np.inf
    order = np.argsort(-score, axis=None, kind="stable")
    return order[: int(np.count_nonzero(score))]


def _mix_towards(Xa: np.ndarray, Y: np.ndarray, V: np.ndarray, act: np.ndarray,
                 WT: np.ndarray, Wf: np.ndarray, target: float,
                 rest2: float) -> tuple[np.ndarray, float] | None:
    """W(s) = s W_admm + (1 - s) W_refit with the largest s in [0, 1] whose constraint value
    (eq. 3: active misfit plus inactive violations, plus ``rest2`` from the other columns) is
    at most ``target``. Z(s) = X W(s)^T is affine in s, so every trial s costs a few vector
    operations. Returns (W(s)^T, s), or None when W_refit itself misses the target."""
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
    return lo * WT + (1.0 - lo) * Wf, lo


def _l1(Wa: np.ndarray, n_in: int) -> float:
    return float(np.abs(Wa[:, :n_in]).sum())


def _threshold(Wa: np.ndarray, n_in: int, thr: float) -> np.ndarray:
    out = Wa.copy()
    w = out[:, :n_in]
    w[np.abs(w) <= thr] = 0.0
    return out


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
