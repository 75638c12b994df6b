"""The exact support refit (solvers/admm/refit.py): on a fixed support it minimises the eq. 3
misfit (active misfit plus inactive violations), so zeros stay zeros, no column's misfit ever
rises, and the result is the minimiser (checked against OSQP on the same restricted QP)."""

from __future__ import annotations

import numpy as np
import osqp
import pytest
import scipy.sparse as sp
from test_admm_solver import make_layer

from nettrim_cli.solvers.admm.refit import grow_by_gradient, misfit, refit_support


def _shrunk(program, keep: float, seed: int = 0) -> np.ndarray:
    """The original weights (bias last), shrunk towards zero, with a random part zeroed."""
    rng = np.random.default_rng(seed)
    Wa = program.Wa0.copy()
    Wa[:, :-1] *= 0.7 * (rng.random(Wa[:, :-1].shape) < keep)
    return Wa.T


@pytest.mark.parametrize("case", [dict(), dict(cascade=True, gamma=2.0)])
def test_refit_keeps_zeros_and_never_raises_the_misfit(case):
    program = make_layer(P=300, N=30, M=8, activation="relu", bias=True, **case)
    WT = _shrunk(program, keep=0.5)
    Y, V, act = program.Y, program.bounds, program.active_set
    before = misfit(program.Xa @ WT, Y, V, act)
    WF, after = refit_support(program.Xa, Y, V, act, WT, bias=True, rounds=6)
    assert np.all(WF[:-1][WT[:-1] == 0] == 0)
    assert np.all(after <= before * (1 + 1e-12))
    assert after.sum() < 0.9 * before.sum()  # the shrinkage is undone in part
    assert np.allclose(after, misfit(program.Xa @ WF, Y, V, act))
    assert program.constraint_value(WF.T) ** 2 == pytest.approx(after.sum(), rel=1e-9)


def test_refit_reaches_the_restricted_minimum():
    """Per column, min over the support of sum_active (x w - y)^2 + sum_inactive (x w - v)_+^2
    equals the QP min ||r||^2 + ||s||^2 s.t. r = X_act w - y, s >= X_in w - v, s >= 0."""
    program = make_layer(P=200, N=20, M=4, activation="relu", bias=True, seed=2)
    WT = _shrunk(program, keep=0.6, seed=2)
    Y, V, act, Xa = program.Y, program.bounds, program.active_set, program.Xa
    _, after = refit_support(Xa, Y, V, act, WT, bias=True, rounds=50, tol=0.0)
    for m in range(WT.shape[1]):
        S = np.flatnonzero(WT[:, m] != 0)
        a, i = act[:, m], ~act[:, m]
        Xs_a, Xs_i = Xa[a][:, S], Xa[i][:, S]
        k, ni = S.size, int(i.sum())
        # variables (w, s); objective ||X_a w - y||^2 + ||s||^2; X_i w - s <= v, s >= 0
        Pm = sp.block_diag([2 * Xs_a.T @ Xs_a + 1e-12 * np.eye(k), 2 * sp.eye(ni)], "csc")
        q = np.concatenate([-2 * Xs_a.T @ Y[a, m], np.zeros(ni)])
        A = sp.vstack([sp.hstack([sp.csc_matrix(Xs_i), -sp.eye(ni)]),
                       sp.hstack([sp.csc_matrix((ni, k)), sp.eye(ni)])], "csc")
        lo = np.concatenate([np.full(ni, -np.inf), np.zeros(ni)])
        hi = np.concatenate([V[i, m], np.full(ni, np.inf)])
        qp = osqp.OSQP()
        qp.setup(Pm, q, A, lo, hi, verbose=False, eps_abs=1e-10, eps_rel=1e-10,
                 polishing=True, max_iter=20000)
        res = qp.solve()
        best = res.info.obj_val + float(Y[a, m] @ Y[a, m])
        assert after[m] == pytest.approx(best, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("limit", [None, 0])
def test_gram_source_gathers_the_same_block_from_either_layout(monkeypatch, limit):
    """X[r, S] is the same whether gathered from the rows of X or of X^T (many rows and a
    small support picks X^T; with the transposed copy capped at 0 bytes, X itself)."""
    from nettrim_cli.solvers.admm import refit

    if limit is not None:
        monkeypatch.setattr(refit, "TRANSPOSE_MAX", limit)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 40)).astype(np.float32)
    src = refit.GramSource(X)
    for r, S in [(np.arange(0, 500, 2), np.array([3, 7])),          # X^T reads less
                 (np.array([5, 9, 11]), np.arange(0, 40, 3))]:      # X reads less
        block = src.take(r, S)
        assert np.array_equal(block, X[np.ix_(r, S)])
    assert (src._tT is None) == (limit == 0)


def test_misfit_matches_its_definition():
    """f_m = sum over the active samples of (z - y)^2 plus over the others of (z - v)_+^2."""
    rng = np.random.default_rng(2)
    Z, Y, V = (rng.standard_normal((60, 4)) for _ in range(3))
    act = rng.random((60, 4)) < 0.5
    want = [float(np.sum((Z[act[:, m], m] - Y[act[:, m], m]) ** 2)
                  + np.sum(np.maximum(Z[~act[:, m], m] - V[~act[:, m], m], 0.0) ** 2))
            for m in range(4)]
    assert np.allclose(misfit(Z, Y, V, act), want, rtol=1e-12)


def _grow_case(seed: int = 0):
    program = make_layer(P=300, N=30, M=8, activation="relu", bias=True)
    Y, V, act = program.Y, program.bounds, program.active_set
    WT, f = refit_support(program.Xa, Y, V, act, _shrunk(program, keep=0.3, seed=seed),
                          bias=True, rounds=8)
    return program, WT, 0.3 * f.sum()  # a goal this support cannot meet


def test_gradient_growth_meets_the_goal_keeping_the_support_and_adding_few():
    """The growth keeps every weight of the support it is given, meets the misfit goal the
    support misses, and adds fewer weights than growing by the original weights in order of
    |w| ||x_j|| with the same exact refit (the rule it replaced as the first try)."""
    program, WT, goal = _grow_case()
    Y, V, act, Xa, n = program.Y, program.bounds, program.active_set, program.Xa, 30
    out = grow_by_gradient(Xa, Y, V, act, WT, True, n, goal, lambda W: True)
    assert out is not None
    W, added = out
    assert np.all(W[:n][WT[:n] != 0] != 0)
    assert added == np.count_nonzero(W[:n]) - np.count_nonzero(WT[:n]) > 0
    assert misfit(Xa @ W, Y, V, act).sum() <= goal
    W0T = program.Wa0.T
    score = np.abs(W0T[:n]) * np.linalg.norm(Xa[:, :n], axis=0)[:, None]
    score[WT[:n] != 0] = -1.0
    order = np.argsort(-score, axis=None)
    for k in range(1, int(np.count_nonzero(WT[:n] == 0)) + 1):  # the fewest that meet it
        start = WT.copy()
        start[:n].reshape(-1)[order[:k]] = W0T[:n].reshape(-1)[order[:k]]
        if refit_support(Xa, Y, V, act, start, bias=True, rounds=8)[1].sum() <= goal:
            break
    assert added < k


def test_gradient_growth_gives_up_when_the_check_refuses():
    """``accept`` is the caller's exact check (thresholding included): when it refuses
    every answer, the growth returns None after its rounds instead of a refused answer."""
    program, WT, goal = _grow_case()
    calls = []
    out = grow_by_gradient(program.Xa, program.Y, program.bounds, program.active_set, WT,
                           True, 30, goal, lambda W: calls.append(1) and False)
    assert out is None and calls
