"""Constraint screening gives the optimum of the full program (14), not an approximation."""

import numpy as np
import pytest

from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import OSQPSettings
from nettrim_cli.solvers.osqp import ColumnQP, ScaledLayer, is_solved


def layer(seed, P=600, N=15, M=4):
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.standard_normal((P, N)), 0)
    W = rng.standard_normal((M, N))
    b = rng.standard_normal(M) * 0.2
    Y = np.maximum(X @ W.T + b, 0)
    return LayerProgram(X=X, Y=Y, W0=W, b0=b, lam=1.0)


def objective(prog, m, wa, lam):
    act = prog.active(m)
    r = prog.Xa[act] @ wa - prog.Y[act, m]
    return np.abs(wa[:-1]).sum() + lam * r @ r


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("formulation", ["split", "epigraph"])
def test_screened_solution_equals_full_program(seed, formulation):
    """The plain paper formulation (split, every inactive sample a row) against the fast path
    (screening, either formulation)."""
    prog = layer(seed)
    L = ScaledLayer(prog)
    full = OSQPSettings(eps_abs=1e-9, eps_rel=1e-9, max_iter=100000, screening=False,
                        formulation="split")
    screened = OSQPSettings(eps_abs=1e-9, eps_rel=1e-9, max_iter=100000, screen_init=3,
                            formulation=formulation)
    rounds = 0
    for m in range(prog.n_out):
        a = ColumnQP(prog, m, full, layer=L)
        b = ColumnQP(prog, m, screened, layer=L)
        assert b.working.size == 3 < b.n_inactive
        for lam in (0.01, 0.3, 5.0):  # one set-up, several lambdas, warm started
            ra, rb = a.solve(lam), b.solve(lam)
            assert is_solved(ra.status) and is_solved(rb.status)
            fa, fb = objective(prog, m, ra.wa, lam), objective(prog, m, rb.wa, lam)
            assert abs(fa - fb) <= 1e-7 * max(1.0, abs(fa))
            np.testing.assert_allclose(rb.wa, ra.wa, atol=1e-6)
            # every inactive inequality of the full program holds
            viol = prog.Xa[b.inactive] @ rb.wa - prog.bound(m)[b.inactive]
            assert viol.max() <= 1e-6
        assert b.working.size < b.n_inactive  # it did not simply fall back to all rows
        rounds += b.rounds
    assert rounds > 0  # violated constraints were found and added at least once


def test_exact_program_8_with_screening():
    rng = np.random.default_rng(4)
    N, P = 40, 200
    w = np.zeros(N)
    w[[3, 17]] = [1.5, -0.8]
    X = rng.standard_normal((P, N))
    y = np.maximum(X @ w, 0)[:, None]
    prog = LayerProgram(X=X, Y=y, W0=rng.standard_normal((1, N)), b0=None, epsilon=0.0)
    qp = ColumnQP(prog, 0, OSQPSettings(eps_abs=1e-9, eps_rel=1e-9, max_iter=200000,
                                        screen_init=5), exact=True)
    r = qp.solve(np.inf)
    assert is_solved(r.status)
    np.testing.assert_allclose(r.wa, w, atol=1e-5)
    assert qp.working.size < qp.n_inactive
