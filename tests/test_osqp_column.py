"""The OSQP column program (eq. 14) against an independent solver (Clarabel, interior point,
on a different formulation: the epigraph of the l1 norm instead of the split u = u+ - u-)."""

import clarabel
import numpy as np
import pytest
import scipy.sparse as sp

from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import OSQPSettings, SolverSettings
from nettrim_cli.solvers.osqp import ColumnQP, ScaledLayer, is_solved
from nettrim_cli.solvers.search import solve_layer


def random_layer(seed, P=120, N=12, M=5, bias=True, activation="relu", cascade=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    W = rng.standard_normal((M, N)) * (rng.random((M, N)) < 0.6)
    b = rng.standard_normal(M) * 0.3 if bias else None
    pre = X @ W.T + (b if bias else 0)
    Y = np.maximum(pre, 0) if activation == "relu" else pre
    V = None
    if cascade:  # the pruned network's input is a perturbed X; V = W^T Xhat
        X = X + 0.05 * rng.standard_normal(X.shape)
        V = X @ W.T + (b if bias else 0)
    return X, Y, W, b, V


def clarabel_column(X, y, act, v, lam, bias):
    """min ||u_w||_1 + lam ||X_act u - y_act||^2 s.t. X_inact u <= v_inact, via (u, t)."""
    P, N = X.shape
    Xa = np.hstack([X, np.ones((P, 1))]) if bias else X
    Na = Xa.shape[1]
    Xo, yo = Xa[act], y[act]
    Pm = np.zeros((Na + N, Na + N))
    Pm[:Na, :Na] = 2 * lam * Xo.T @ Xo
    q = np.concatenate([-2 * lam * Xo.T @ yo, np.ones(N)])
    I = np.eye(N)
    Z = np.zeros((N, Na - N))
    rows = [np.hstack([I, Z, -I]), np.hstack([-I, Z, -I])]
    rhs = [np.zeros(N), np.zeros(N)]
    if (~act).any():
        rows.append(np.hstack([Xa[~act], np.zeros(((~act).sum(), N))]))
        rhs.append(v[~act])
    A = sp.csc_matrix(np.vstack(rows))
    b = np.concatenate(rhs)
    s = clarabel.DefaultSettings()
    s.verbose = False
    s.tol_gap_abs = s.tol_gap_rel = s.tol_feas = 1e-10
    sol = clarabel.DefaultSolver(sp.triu(sp.csc_matrix(Pm)).tocsc(), q, A, b,
                                 [clarabel.NonnegativeConeT(A.shape[0])], s).solve()
    assert str(sol.status) == "Solved"
    return np.array(sol.x[:Na])


def objective(X, y, act, wa, lam, bias):
    Xa = np.hstack([X, np.ones((len(X), 1))]) if bias else X
    n = X.shape[1]
    r = Xa[act] @ wa - y[act]
    return np.abs(wa[:n]).sum() + lam * r @ r


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation,cascade", [("relu", False), ("relu", True), ("none", False)])
@pytest.mark.parametrize("formulation", ["split", "epigraph"])
def test_osqp_column_matches_independent_solver(seed, bias, activation, cascade, formulation):
    X, Y, W, b, V = random_layer(seed, bias=bias, activation=activation, cascade=cascade)
    prog = LayerProgram(X=X, Y=Y, W0=W, b0=b, activation=activation, V=V, lam=1.0)
    settings = OSQPSettings(eps_abs=1e-9, eps_rel=1e-9, max_iter=100000,
                            formulation=formulation)
    layer = ScaledLayer(prog)
    for lam in (0.05, 1.0):
        for m in range(prog.n_out):
            act = prog.active(m)
            r = ColumnQP(prog, m, settings, layer=layer).solve(lam)
            assert is_solved(r.status)
            ref = clarabel_column(X, Y[:, m], act, prog.bound(m), lam, bias)
            f_osqp = objective(X, Y[:, m], act, r.wa, lam, bias)
            f_ref = objective(X, Y[:, m], act, ref, lam, bias)
            assert abs(f_osqp - f_ref) <= 1e-6 * max(1.0, abs(f_ref))
            np.testing.assert_allclose(r.wa, ref, atol=1e-5, rtol=1e-5)


def clarabel_program4(X, Y, V, eps, bias, activation="relu"):
    """The constrained program (4)/(6) for the whole layer with one second-order cone."""
    P, N = X.shape
    M = Y.shape[1]
    Xa = np.hstack([X, np.ones((P, 1))]) if bias else X
    Na = Xa.shape[1]
    nu = M * Na
    nvar = nu + M * N  # u (row-major by column m), t
    act = Y > 0 if activation == "relu" else np.ones_like(Y, dtype=bool)
    Vz = np.zeros_like(Y) if V is None else V
    q = np.concatenate([np.zeros(nu), np.ones(M * N)])
    A_lin, b_lin = [], []
    for m in range(M):
        for i in range(N):
            r1 = np.zeros(nvar)
            r1[m * Na + i], r1[nu + m * N + i] = 1, -1
            r2 = np.zeros(nvar)
            r2[m * Na + i], r2[nu + m * N + i] = -1, -1
            A_lin += [r1, r2]
            b_lin += [0, 0]
        for p in np.where(~act[:, m])[0]:
            r = np.zeros(nvar)
            r[m * Na:(m + 1) * Na] = Xa[p]
            A_lin.append(r)
            b_lin.append(Vz[p, m])
    # SOC: (eps, Xa u_m - y) over active entries: s = b - A x in SOC
    soc_rows, soc_b = [np.zeros(nvar)], [eps]
    for m in range(M):
        for p in np.where(act[:, m])[0]:
            r = np.zeros(nvar)
            r[m * Na:(m + 1) * Na] = -Xa[p]
            soc_rows.append(r)
            soc_b.append(-Y[p, m])
    A = sp.csc_matrix(np.vstack(A_lin + soc_rows))
    b = np.array(b_lin + soc_b, dtype=float)
    s = clarabel.DefaultSettings()
    s.verbose = False
    sol = clarabel.DefaultSolver(sp.csc_matrix((nvar, nvar)), q, A, b,
                                 [clarabel.NonnegativeConeT(len(A_lin)),
                                  clarabel.SecondOrderConeT(len(soc_rows))], s).solve()
    assert str(sol.status) == "Solved"
    U = np.array(sol.x[:nu]).reshape(M, Na)
    return float(np.abs(U[:, :N]).sum())


@pytest.mark.parametrize("seed,cascade", [(0, False), (1, True), (2, False)])
def test_layer_lambda_solves_program_4(seed, cascade):
    """One lambda for the layer, chosen from eps, reaches program (4)'s optimum: the l1 norm is
    within the search tolerance of the exact constrained optimum and eps is met."""
    X, Y, W, b, V = random_layer(seed, P=80, N=10, M=4, cascade=cascade)
    pre = X @ W.T + b
    eps = 0.1 * np.linalg.norm(Y) if not cascade else \
        float(np.sqrt(1.2 * np.sum(np.where(Y > 0, pre - Y, 0) ** 2)))
    prog = LayerProgram(X=X, Y=Y, W0=W, b0=b, V=V, epsilon=eps)
    s = SolverSettings()
    s.search.rtol = 0.005
    sol = solve_layer(prog, s)
    assert sol.constraint <= eps * (1 + 1e-9)
    ours = float(np.abs(sol.Wa[:, :10]).sum())
    opt = clarabel_program4(X, Y, V, eps, bias=True)
    assert ours >= opt * (1 - 1e-4)  # cannot beat the optimum of a feasible point
    assert ours <= opt * 1.02
    # a per-column split of the eps budget is a restriction of program (4): never sparser in l1
    s.search.scope = "column"
    col = solve_layer(prog, s)
    assert col.constraint <= eps * (1 + 1e-9)
    assert float(np.abs(col.Wa[:, :10]).sum()) >= opt * (1 - 1e-4)


def test_written_weights_hold_exact_zeros():
    X, Y, W, b, V = random_layer(5, P=200, N=20, M=6)
    prog = LayerProgram(X=X, Y=Y, W0=W, b0=b, epsilon=0.2 * np.linalg.norm(Y))
    sol = solve_layer(prog, SolverSettings())
    w = sol.Wa[:, :20]
    thr = SolverSettings().zero_threshold * np.abs(W).max()
    assert (w == 0).sum() > 0
    assert not ((np.abs(w) <= thr) & (w != 0)).any()
