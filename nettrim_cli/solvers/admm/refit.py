"""The support refit: the weights on a fixed support that minimise the eq. 3 misfit.

For a layer answer W whose zeros are to stay zeros, every column m is refitted on its
support S_m by minimising the constraint function of eq. 3 restricted to S_m,

    f_m(w) = sum_{p in Omega_m} (x_p[S]^T w - y_pm)^2
             + sum_{p not in Omega_m} (x_p[S]^T w - v_pm)_+^2,

a convex piecewise quadratic (the active misfit plus the violations of the inactive
inequalities): the sum over the columns of its minima is the least constraint value any
weights with these zeros can have, so a support whose refit misses eps cannot meet it at all.
f_m is minimised by a semismooth Newton method: with H the inactive samples whose
pre-activation is over the bound, the step is the least-squares fit over Omega_m and H
(targets y and v), computed from the small Gram matrix X[R, S]^T X[R, S] of the column's
rows R = Omega_m + H; a backtracking line search on f_m over all samples keeps every step a
descent step, and H is recomputed after each step. The minimiser is reached when H stops
changing (finitely many sets); a few rounds settle it in practice.

All columns share the products with X (one P x (N+1) x L product per round, for the
pre-activations after the step); only the Gram matrices are per column.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import numpy as np
import torch

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - optional
    threadpool_limits = None

# backtracking steps tried along each column's Newton direction (1 is the full step)
STEPS = (1.0, 0.5, 0.25, 0.125, 0.0625)


def misfit(Z: np.ndarray, Y: np.ndarray, V: np.ndarray, act: np.ndarray) -> np.ndarray:
    """f_m for every column m, given the pre-activations Z (P x L): the squared eq. 3
    constraint value per column (active misfit plus inactive violations)."""
    return Targets(Y, V, act).misfit(Z)


class Targets:
    """A layer's eq. 3 targets for its P x L pre-activations: T (y on the active entries, the
    bound v on the others) and the floor Lo (-inf on the active entries, 0 on the others), so
    that the residual is max(Z - T, Lo): two passes over P x L instead of np.where's four (the
    misfit is evaluated after every refit round on arrays of 10^7 entries)."""

    def __init__(self, Y: np.ndarray, V: np.ndarray, act: np.ndarray) -> None:
        self.act = act
        self.T = np.where(act, Y, V)
        self.Lo = np.where(act, -np.inf, 0.0)

    @cached_property
    def actf(self) -> np.ndarray:
        """The active set as 0/1 floats (the line search's sums only)."""
        return self.act.astype(np.float64)

    def residual(self, Z: np.ndarray) -> np.ndarray:
        r = Z - self.T
        return np.maximum(r, self.Lo, out=r)

    def misfit(self, Z: np.ndarray) -> np.ndarray:
        r = self.residual(Z)
        return np.einsum("pl,pl->l", r, r)


# the transposed copy of X is made only up to this size (a conv layer's patches at 5,000
# images can hold 10^6 - 10^7 rows; the gathers from X itself then do)
TRANSPOSE_MAX = 512 * 2**20


class GramSource:
    """X (P x N) in the Gram matrices' dtype, from which each column's X[r, S] is gathered.
    The gathers, not the Gram products, took most of a refit (one core, the bench MLP at
    20,000 samples: 2.6 s of 4.1 s on the 785 -> 500 layer). Each takes its rows from the
    layout that reads less: rows of X (|r| N values) or, made on first use and when X holds at
    most ``TRANSPOSE_MAX`` bytes, rows of X^T
    (|S| P values; on the 501 -> 200 layer, 100 of 501 inputs kept and 9,000 of 20,000 rows:
    1.05 -> 0.35 s), with torch's index_select (1.6 s against numpy's take, 2.6 s, there)."""

    def __init__(self, X: np.ndarray) -> None:
        self.X = np.require(X, requirements=("C", "W"))  # torch shares writable memory
        self.dtype = self.X.dtype
        self._t = torch.from_numpy(self.X)
        self._tT: torch.Tensor | None = None
        self._lock = threading.Lock()

    def take(self, r: np.ndarray, S: np.ndarray) -> np.ndarray:
        """X[r, S] (|r| x |S|; a transposed view when gathered from X^T)."""
        P, N = self.X.shape
        ri, si = torch.from_numpy(r), torch.from_numpy(S)
        if S.size * P >= r.size * N or self.X.nbytes > TRANSPOSE_MAX:
            return self._t.index_select(0, ri).index_select(1, si).numpy()
        with self._lock:
            if self._tT is None:
                self._tT = self._t.T.contiguous()
        return self._tT.index_select(0, si).index_select(1, ri).numpy().T


def _column_fit(src: GramSource, rows: np.ndarray, T: np.ndarray, S: np.ndarray,
                ridge: float) -> np.ndarray:
    """The least-squares fit of one column on its support S over its rows (targets T)."""
    r = np.flatnonzero(rows)
    if S.size == 0 or r.size == 0:
        return np.zeros(S.size)
    Xs = src.take(r, S)
    G = (Xs.T @ Xs).astype(np.float64)  # (numpy's gemm beat scipy's syrk here)
    G[np.diag_indices_from(G)] += ridge * (np.trace(G) / S.size + 1e-300)
    b = (Xs.T @ T[r].astype(Xs.dtype)).astype(np.float64)
    try:
        return np.linalg.solve(G, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(G, b, rcond=None)[0]


def _line_search(Z: np.ndarray, DZ: np.ndarray, tg: Targets,
                 f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every column, the first of ``STEPS`` t along DZ that lowers f (0 when none) and f
    there. f(Z + t DZ) without forming it for each t: on the active samples a quadratic in t
    (three sums), on the inactive ones only the entries over the bound at t = 0 or t = 1
    count (Z - V + t DZ is linear in t), a small set once the bound set has settled."""
    R = Z - tg.T  # Z - Y on the active entries, Z - V on the others
    M = R * tg.actf
    a = np.einsum("pl,pl->l", M, M)
    b = np.einsum("pl,pl->l", M, DZ)
    np.multiply(DZ, tg.actf, out=M)
    c = np.einsum("pl,pl->l", M, DZ)
    np.add(R, DZ, out=M)
    np.maximum(M, R, out=M)
    M += tg.Lo
    p, m = np.nonzero(M > 0)
    g, d = R[p, m], DZ[p, m]
    L = Z.shape[1]
    best_t = np.zeros(L)
    best_f = f.copy()
    for t in STEPS:
        ft = a + 2.0 * t * b + t * t * c
        ft += np.bincount(m, weights=np.maximum(g + t * d, 0.0) ** 2, minlength=L)
        better = (ft < best_f * (1.0 - 1e-12)) & (best_t == 0)
        best_t = np.where(better, t, best_t)
        best_f = np.where(better, ft, best_f)
    return best_t, best_f


def _newton_points(src: GramSource, Z: np.ndarray, tg: Targets, on: np.ndarray,
                   ridge: float, workers: int) -> np.ndarray:
    """Every column's Newton point: the least-squares fit on its support over its active
    samples and the inactive samples over the bound (towards Y and V). Returns W^T. The
    columns are shared among ``workers`` threads, each with one BLAS thread (the Gram
    matrices are small: more BLAS threads per column only contend). The Gram matrices are
    formed in ``src``'s dtype (float32 halves the gathers on a large layer; its rounding,
    1e-7 relative, acts as a ridge) and solved in float64."""
    rows_all = (Z - tg.T) > tg.Lo  # the active samples and the inactive ones over the bound
    T = tg.T
    Na, L = on.shape
    WN = np.zeros((Na, L))

    def fit(cols: range) -> None:
        for m in cols:
            S = np.flatnonzero(on[:, m])
            WN[S, m] = _column_fit(src, rows_all[:, m], T[:, m], S, ridge)

    chunks = [range(k, L, workers) for k in range(workers)]
    # one BLAS thread per worker, set once around the pool: threadpoolctl's limits are
    # process-wide, and a limit entered and left in each worker raced with the other's (and
    # with an outer limit, ``execution.threads.fixed_threads``: the refit ran 2x slower there)
    with threadpool_limits(1) if threadpool_limits else _null():
        if workers <= 1:
            fit(chunks[0])
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(fit, chunks))
    return WN


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def refit_support(Xa: np.ndarray, Y: np.ndarray, V: np.ndarray, act: np.ndarray,
                  WT: np.ndarray, bias: bool, rounds: int = 4, ridge: float = 1e-10,
                  workers: int = 2, tol: float = 1e-3,
                  gram_dtype=np.float64, source: GramSource | None = None,
                  targets: Targets | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Minimise f_m over the support of every column of ``WT`` ((N + bias) x L, the bias as
    last row, always free), starting from ``WT``. Returns (the refitted W^T, f per column):
    zeros stay zeros and no column's f ever rises (each accepted step is a descent step).
    Stops after ``rounds`` Newton steps or when a step lowers the layer's misfit by less than
    ``tol`` (relative). ``source``: ``Xa`` already in ``gram_dtype`` (a caller's cached source);
    ``targets``: ``Targets(Y, V, act)`` (a caller's, kept across refits of one layer)."""
    Xa = np.asarray(Xa, dtype=np.float64)
    if source is None or source.dtype != np.dtype(gram_dtype):
        source = GramSource(Xa if gram_dtype == np.float64 else Xa.astype(gram_dtype))
    Y = np.asarray(Y, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    W = np.array(WT, dtype=np.float64)
    on = W != 0
    if bias:
        on[-1] = True
    Z = Xa @ W
    tg = targets if targets is not None else Targets(Y, V, act)
    f = tg.misfit(Z)
    for _ in range(rounds):
        WN = _newton_points(source, Z, tg, on, ridge, workers)
        D = WN - W
        DZ = Xa @ D
        best_t, best_f = _line_search(Z, DZ, tg, f)
        moved = best_t > 0
        if not moved.any():
            break
        W += D * best_t
        Z += DZ * best_t
        gain = (f.sum() - best_f.sum()) / max(f.sum(), 1e-300)
        f = tg.misfit(Z)
        if gain < tol:  # the layer's misfit no longer moves: the sets have settled
            break
    return W, f


def grow_by_gradient(Xa: np.ndarray, Y: np.ndarray, V: np.ndarray, act: np.ndarray,
                     WT: np.ndarray, bias: bool, n_in: int, goal: float, accept,
                     source: GramSource | None = None, targets: Targets | None = None,
                     rounds: int = 10, overshoot: float = 2.0,
                     block: tuple[float, float] = (0.01, 0.1)):
    """A support that misses eps grown where the misfit falls fastest, the rule of orthogonal
    matching pursuit taken a block at a time: refit the support (``refit_support``), score
    every weight outside it by the misfit its own least-squares step would remove,
    g_j^2 / ||x_j||^2 with g = X^T r (r the residual of eq. 3's targets), add the best until
    their scores sum to ``overshoot`` times the misfit still over ``goal`` (at least
    ``block[0]`` of the support's size, at most ``block[1]`` of it in the first round, twice as
    many in each next: ten rounds can add a hundred times the support), refit, and repeat while
    the layer's misfit sum_m f_m exceeds ``goal`` or ``accept(W^T)`` (the caller's exact check)
    refuses; then the last round's additions are trimmed to the fewest that still meet it
    (``_trim``). Returns (W^T, weights added) or None after ``rounds`` rounds.

    On NN3-60K after the default fine-tune the 784 -> 300 layer at relative eps 0.0026 (ADMM's
    30,294 weights, their refit 1.04 eps) met eps with 186 weights added (2,988 before the
    trim), where the growth by original weights (``grow._Growth.grow_original``) added 47,404."""
    Xa = np.asarray(Xa, dtype=np.float64)
    if source is None or source.dtype != np.float64:
        source = GramSource(Xa)
    tg = targets if targets is not None else Targets(np.asarray(Y, np.float64),
                                                     np.asarray(V, np.float64), act)
    W, f = refit_support(Xa, Y, V, act, WT, bias, rounds=8, source=source, targets=tg)
    n0 = int(np.count_nonzero(W[:n_in]))
    xn2 = np.einsum("pn,pn->n", Xa[:, :n_in], Xa[:, :n_in])
    last = None  # the last round's start and additions (best first), for the trim
    for r in range(rounds + 1):
        if f.sum() <= goal and accept(W):
            if last is not None:
                W = _trim(Xa, Y, V, act, W, bias, goal, accept, source, tg, *last)
            return W, int(np.count_nonzero(W[:n_in])) - n0
        G = Xa[:, :n_in].T @ tg.residual(Xa @ W)  # half the gradient of sum_m f_m
        gain = np.divide(G * G, xn2[:, None], out=np.zeros_like(G), where=xn2[:, None] > 0)
        gain[W[:n_in] != 0] = 0.0
        order = np.argsort(-gain, axis=None, kind="stable")
        order = order[: int(np.count_nonzero(gain))]
        if order.size == 0:
            break
        cum = np.cumsum(gain.reshape(-1)[order])
        k = int(np.searchsorted(cum, overshoot * max(float(f.sum()) - goal, 0.0))) + 1
        k = min(max(k, int(block[0] * n0) + 1), int(block[1] * n0 * 2 ** r) + 1, order.size)
        last = (W, order[:k], n_in)
        W = W.copy()
        # a token value marks the support (refit_support keeps zeros at zero); its first
        # Newton step sets them
        W[:n_in].reshape(-1)[order[:k]] = -1e-30 * np.sign(G.reshape(-1)[order[:k]])
        W, f = refit_support(Xa, Y, V, act, W, bias, rounds=8, source=source, targets=tg)
    return None


def _trim(Xa, Y, V, act, W, bias, goal, accept, source, tg, W_start, added, n_in,
          steps: int = 4):
    """The shortest prefix of the last round's additions (best first) whose refit still
    meets the goal, by bisection (``steps`` refits); ``W`` (all of them) when none does."""
    lo, hi, best = 0, added.size, W
    for _ in range(steps):
        if hi - lo <= 1:
            break
        k = (lo + hi) // 2
        Wk = W_start.copy()
        Wk[:n_in].reshape(-1)[added[:k]] = W[:n_in].reshape(-1)[added[:k]] + 1e-30
        Wk, fk = refit_support(Xa, Y, V, act, Wk, bias, rounds=8, source=source, targets=tg)
        if fk.sum() <= goal and accept(Wk):
            hi, best = k, Wk
        else:
            lo = k
    return best
