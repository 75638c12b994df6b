"""The whole-layer ADMM solver against the OSQP column solver (lambda search, layer scope).

Program (4)/(6) has one multiplier for the layer, so the OSQP reference with a layer-wide lambda
search solves the same program; with a tight search tolerance both must reach the same l1 norm
and support, and the ADMM answer (KKT-certified by its polish) can be no worse than OSQP's.
"""

from __future__ import annotations

import numpy as np
import pytest

from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers import search
from nettrim_cli.solvers.admm import ADMMSettings, solve_layer
from nettrim_cli.solvers.base import SearchSettings, SolverSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def make_layer(P=200, N=30, M=8, activation="relu", bias=True, cascade=False, eps_r=0.3,
               gamma=2.0, lam=None, seed=0) -> LayerProgram:
    """A random layer; ``cascade`` perturbs the input and sets V = X_hat W0^T (+ b0) and
    eps from eq. 7 (relu) or the same inflation of the original misfit (none)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    if activation == "relu":
        X = np.maximum(X, 0.0)
    W0 = rng.standard_normal((M, N)) / np.sqrt(N)
    b0 = 0.1 * rng.standard_normal(M) if bias else None
    shift = b0 if bias else 0.0
    pre = X @ W0.T + shift
    Y = np.maximum(pre, 0.0) if activation == "relu" else pre
    V = None
    if cascade:
        X = X + 0.05 * rng.standard_normal(X.shape) * (X != 0)
        pre_hat = X @ W0.T + shift
        act = Y > 0 if activation == "relu" else np.ones_like(Y, dtype=bool)
        eps = float(np.sqrt(gamma) * np.linalg.norm(np.where(act, pre_hat - Y, 0.0)))
        V = pre_hat if activation == "relu" else None
    else:
        eps = eps_r * float(np.linalg.norm(Y))
    if lam is not None:
        eps = None
    return LayerProgram(X=X, Y=Y, W0=W0, b0=b0, activation=activation, V=V, epsilon=eps,
                        lam=lam)


def tight_settings() -> SolverSettings:
    return SolverSettings(search=SearchSettings(scope="layer", rtol=1e-5))


def l1(Wa: np.ndarray, n_in: int) -> float:
    return float(np.abs(Wa[:, :n_in]).sum())


def assert_exact_zeros(program: LayerProgram, Wa: np.ndarray, settings: SolverSettings):
    thr = settings.zero_threshold * float(np.abs(program.W0).max())
    W = Wa[:, : program.n_in]
    small = np.abs(W) <= thr
    assert small.any(), "expected some pruned weights"
    assert np.all(W[small] == 0.0), "weights below the zero threshold must be exact zeros"


CASES = {
    "relu-bias-parallel": dict(activation="relu", bias=True),
    "relu-nobias-parallel": dict(activation="relu", bias=False, eps_r=0.6),
    "none-bias-parallel": dict(activation="none", bias=True),
    "relu-bias-cascade": dict(activation="relu", bias=True, cascade=True, gamma=3.0),
    "relu-nobias-cascade": dict(activation="relu", bias=False, cascade=True, gamma=2.0,
                                seed=1),
    "none-nobias-cascade": dict(activation="none", bias=False, cascade=True),
    # fewer samples than inputs: many exact zeros, degenerate bound sets (LP certificate)
    "relu-redundant": dict(P=60, N=100, M=5, activation="relu", bias=True, eps_r=0.6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_osqp_layer_search(case):
    program = make_layer(**CASES[case])
    settings = tight_settings()
    ref = search.solve_layer(program, settings)
    sol = solve_layer(program, settings)
    N = program.n_in
    eps = program.epsilon

    # feasible when measured, at the constraint (the optimum of (4) uses the whole budget)
    assert sol.eps_reached
    assert program.constraint_value(sol.Wa) <= eps
    assert sol.constraint == pytest.approx(program.constraint_value(sol.Wa))
    assert program.constraint_value(sol.Wa) >= (1 - 1e-6) * eps
    assert ref.constraint <= eps

    # same objective: within 1e-3, and never worse than the (feasible) OSQP answer
    la, lo = l1(sol.Wa, N), l1(ref.Wa, N)
    assert abs(la - lo) <= 1e-3 * lo, (la, lo)
    assert la <= lo * (1 + 1e-7), (la, lo)

    # same support, up to weights that are nearly zero in one of the two answers
    top = float(np.abs(ref.Wa[:, :N]).max())
    differ = (sol.Wa[:, :N] == 0) != (ref.Wa[:, :N] == 0)
    assert np.all(np.abs(sol.Wa[:, :N][differ]) <= 1e-3 * top)
    assert np.all(np.abs(ref.Wa[:, :N][differ]) <= 1e-3 * top)
    assert differ.sum() <= max(1, int(0.01 * differ.size))
    assert np.allclose(sol.Wa, ref.Wa, atol=2e-2 * top)

    assert_exact_zeros(program, sol.Wa, settings)
    assert sol.status == ["solved"] * program.n_out
    summary = sol.summary()
    assert summary["name"] == "admm"
    assert summary["status_counts"] == {"solved": program.n_out}
    assert summary["epsilon_reached"] is True
    stages = [h["stage"] for h in sol.history]
    assert sol.iterations > 0 and "admm" in stages
    # a layer without activation runs ADMM on X^T X's square root (N + 1 rows, not P)
    assert ("gram_form" in stages) == (program.activation == "none")
    if program.activation == "none":
        assert sol.history[0]["rows"] <= program.n_in + program.bias < program.n_samples


def test_lambda_of_the_solution_reproduces_it_with_osqp():
    """The layer's multiplier reported by ADMM, fed to OSQP as a fixed lambda (eq. 11 per
    column), gives back the same weights: a KKT cross-check of program (4)."""
    program = make_layer(**CASES["relu-bias-cascade"])
    settings = SolverSettings()
    sol = solve_layer(program, settings)
    assert sol.lam is not None and sol.lam > 0
    fixed = LayerProgram(X=program.X, Y=program.Y, W0=program.W0, b0=program.b0,
                         activation=program.activation, V=program.V, lam=sol.lam)
    ref = search.solve_layer(fixed, settings)
    top = float(np.abs(ref.Wa).max())
    assert np.allclose(sol.Wa, ref.Wa, atol=1e-4 * top)
    assert l1(sol.Wa, program.n_in) == pytest.approx(l1(ref.Wa, program.n_in), rel=1e-5)
    assert program.constraint_value(ref.Wa) == pytest.approx(program.epsilon, rel=1e-4)


@pytest.mark.parametrize("activation,bias,cascade", [("relu", True, False),
                                                      ("relu", False, True),
                                                      ("none", True, False)])
def test_fixed_lambda_agrees_with_osqp(activation, bias, cascade):
    program = make_layer(activation=activation, bias=bias, cascade=cascade, lam=2.0, seed=3)
    settings = SolverSettings()
    ref = search.solve_layer(program, settings)
    sol = solve_layer(program, settings)
    N = program.n_in
    assert sol.lam == 2.0
    assert sol.status == ["solved"] * program.n_out
    assert l1(sol.Wa, N) == pytest.approx(l1(ref.Wa, N), rel=1e-5)
    top = float(np.abs(ref.Wa).max())
    assert np.allclose(sol.Wa, ref.Wa, atol=1e-4 * top)
    assert np.array_equal(sol.Wa[:, :N] == 0, ref.Wa[:, :N] == 0)
    assert_exact_zeros(program, sol.Wa, settings)
    # the inactive inequalities hold
    Z = program.Xa @ sol.Wa.T
    if activation == "relu":
        V = np.zeros_like(program.Y) if program.V is None else program.V
        inact = program.Y <= 0
        assert np.all(Z[inact] <= V[inact] + 1e-8)


def test_admm_alone_is_feasible_and_close():
    """Without the polish ADMM's own answer, pulled onto the constraint, is feasible and
    within 1e-3 of the optimum (reported as solved_inaccurate: no certificate)."""
    program = make_layer(**CASES["relu-bias-parallel"])
    settings = SolverSettings()
    full = solve_layer(program, settings)
    raw = solve_layer(program, settings, admm_settings=ADMMSettings(polish=False))
    assert raw.eps_reached
    assert program.constraint_value(raw.Wa) <= program.epsilon
    N = program.n_in
    assert l1(raw.Wa, N) == pytest.approx(l1(full.Wa, N), rel=1e-3)
    assert set(raw.status) == {"solved_inaccurate"}
    assert_exact_zeros(program, raw.Wa, settings)


@pytest.mark.parametrize("case", ["relu-bias-parallel", "relu-bias-cascade",
                                  "relu-nobias-cascade", "none-bias-parallel"])
def test_support_refit_repair_keeps_admm_support(case):
    """A short ADMM run ends marginally outside the constraint; the repair (least squares on
    each column's support, then the largest step from ADMM's answer towards it that meets
    eps) must meet eps when measured, keep ADMM's support, and be logged as a repair."""
    from nettrim_cli.solvers.admm.iterate import _ADMM
    from nettrim_cli.solvers.admm.repair import _refit_mix

    program = make_layer(**CASES[case])
    opts = ADMMSettings(max_iter=30, polish=False, retry=False, stable_checks=1000)
    sol = solve_layer(program, SolverSettings(), admm_settings=opts)
    assert sol.eps_reached
    assert program.constraint_value(sol.Wa) <= program.epsilon
    stages = {h["stage"]: h for h in sol.history}
    assert stages["repair"]["ok"] and 0.0 <= stages["repair"]["mix"] < 1.0
    # the support is ADMM's own: recompute ADMM's answer the same way and compare
    Y = np.asarray(program.Y, dtype=np.float64)
    act = Y > 0 if program.activation == "relu" else np.ones_like(Y, dtype=bool)
    V = np.zeros_like(Y) if program.V is None else program.V
    mask = np.ones(program.Xa.shape[1])
    if program.bias:
        mask[-1] = 0.0
    run = _ADMM(program.Xa, Y, V, act, program.Wa0.T, mask, program.epsilon, None, opts,
                "cpu", "float64")
    run.run(opts.max_iter, opts.eps_abs, opts.eps_rel)
    WT, tight = run.result()
    N = program.n_in
    assert program.constraint_value(WT.T) > program.epsilon  # the repair had work to do
    out = _refit_mix(program.Xa, Y, V, act, WT, program.bias, program.epsilon, 0.0, tight)
    assert out is not None
    WTm, s, WTf = out
    assert np.array_equal(WTm[:N] != 0, (WT[:N] != 0) | ((WTf[:N] != 0) & (s < 1)))
    assert np.all(WTf[:N][WT[:N] == 0] == 0.0)  # the refit never leaves the support
    assert program.constraint_value(WTm.T) <= program.epsilon * (1 + 1e-12)
    assert np.array_equal(sol.Wa[:, :N] != 0, WTm.T[:, :N] != 0)


def test_exact_zeros_dead_neuron_and_float32():
    program = make_layer(activation="relu", bias=True, eps_r=0.5, seed=5)
    Y = program.Y.copy()
    Y[:, 2] = 0.0  # a neuron that never fires
    program = LayerProgram(X=program.X, Y=Y, W0=program.W0, b0=program.b0,
                           activation="relu", epsilon=0.5 * float(np.linalg.norm(Y)))
    settings = SolverSettings()
    sol = solve_layer(program, settings, dtype="float32")
    assert sol.status[2] == "dead_neuron"
    assert sol.dead_columns == 1
    assert np.all(sol.Wa[2, : program.n_in] == 0.0)
    assert sol.Wa[2, -1] <= 0.0
    assert all(s == "solved" for i, s in enumerate(sol.status) if i != 2)
    assert program.constraint_value(sol.Wa) <= program.epsilon
    assert_exact_zeros(program, sol.Wa, settings)
    ref = solve_layer(program, settings)  # float64 ADMM, same polish
    assert l1(sol.Wa, program.n_in) == pytest.approx(l1(ref.Wa, program.n_in), rel=1e-6)


def test_unreachable_epsilon_is_reported():
    """Cascade with eps far below what any weights reach -> eps_reached False."""
    program = make_layer(activation="relu", bias=True, cascade=True, gamma=1e-8)
    sol = solve_layer(program, SolverSettings(), admm_settings=ADMMSettings(max_iter=500))
    assert not sol.eps_reached
    assert program.constraint_value(sol.Wa) > program.epsilon
    assert sol.failed and all(f["status"] != "solved" for f in sol.failed)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gram_form_with_an_input_that_is_zero_on_every_sample(dtype):
    """A dead input (a zero column of X, as a pruned previous layer leaves) gives X^T X a zero
    row; its eigenvectors carry rounding there, which the equilibration once blew up to
    inf/NaN in float32 (ADMM then fell back to the original weights)."""
    base = make_layer(**CASES["none-nobias-cascade"])
    X = base.X.copy()
    dead = [1, 4, 9, 16, 25]  # scattered: eigh leaves rounding in those coordinates
    X[:, dead] = 0.0
    eps = 1.2 * float(np.linalg.norm(X @ base.W0.T - base.Y))
    program = LayerProgram(X=X, Y=base.Y, W0=base.W0, b0=None, activation="none",
                           epsilon=eps)
    from nettrim_cli.solvers.admm.repair import _gram_form

    R, B, eps_g = _gram_form(program.Xa, program.Y, eps)
    assert np.all(R[:, dead] == 0.0)  # exactly, not rounding
    Wa = program.Wa0
    assert np.linalg.norm(R @ Wa.T - B) ** 2 == pytest.approx(
        np.linalg.norm(program.Xa @ Wa.T - program.Y) ** 2 - (eps ** 2 - eps_g ** 2),
        rel=1e-9)
    opts = ADMMSettings(eps_abs=1e-6, eps_rel=1e-3, max_iter=2000, polish=False, retry=False)
    sol = solve_layer(program, SolverSettings(), dtype=dtype, admm_settings=opts)
    assert [h["stage"] for h in sol.history][:2] == ["gram_form", "admm"]
    assert sol.history[1]["converged"] and np.isfinite(sol.history[1]["rho"])
    assert set(sol.status) == {"solved_inaccurate"}
    assert program.constraint_value(sol.Wa) <= eps
    assert np.all(sol.Wa[:, dead] == 0.0)  # nothing to gain from weights on a dead input
    assert np.count_nonzero(sol.Wa) < 0.9 * sol.Wa.size


@pytest.mark.parametrize("case", ["relu-bias-cascade", "none-bias-parallel"])
def test_constraint_value_of_some_columns_adds_up(case):
    """constraint_value(Wa[cols], columns=cols) counts just those columns (the repair's
    contribution of the columns ADMM does not solve)."""
    program = make_layer(**CASES[case])
    rng = np.random.default_rng(3)
    Wa = program.Wa0 + 0.1 * rng.standard_normal(program.Wa0.shape)
    cols = np.array([0, 3, 5])
    rest = np.setdiff1d(np.arange(program.n_out), cols)
    whole = program.constraint_value(Wa) ** 2
    parts = (program.constraint_value(Wa[cols], columns=cols) ** 2
             + program.constraint_value(Wa[rest], columns=rest) ** 2)
    assert parts == pytest.approx(whole, rel=1e-12)
    assert program.constraint_value(Wa[:0], columns=cols[:0]) == 0.0
