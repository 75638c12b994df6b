"""LC's C steps against brute force or an independent solution on small vectors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

from nettrim_cli.methods.lc.compression import (
    CStep,
    Form,
    l0_constraint,
    l0_penalty,
    l0_support,
    l1_constraint,
    l1_penalty,
)

RNG_SEEDS = range(40)


def _vector(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    return rng.normal(size=n) * 10.0 ** rng.uniform(-3, 3)


def _supports(n: int):
    for size in range(n + 1):
        yield from itertools.combinations(range(n), size)


def _l1_by_bisection(v: np.ndarray, kappa: float) -> np.ndarray:
    """The projection found independently: bisection on the threshold tau of
    sum max(|v| - tau, 0) = kappa (decreasing in tau), to the last bit."""
    a = np.abs(v)
    if a.sum() <= kappa:
        return v.copy()
    lo, hi = 0.0, float(a.max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if np.maximum(a - mid, 0).sum() > kappa else (lo, mid)
    return np.sign(v) * np.maximum(a - 0.5 * (lo + hi), 0)


# ---- l0 constraint ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_l0_constraint_matches_the_best_support_found_by_enumeration(seed):
    v = _vector(seed)
    for kappa in range(v.size + 1):
        theta = l0_constraint(v, kappa)
        assert np.count_nonzero(theta) == kappa
        best = min(np.sum(np.delete(v, s) ** 2) for s in _supports(v.size) if len(s) <= kappa)
        assert np.sum((v - theta) ** 2) == pytest.approx(best, rel=1e-12, abs=0)
        kept = theta != 0
        assert np.array_equal(theta[kept], v[kept])


def test_l0_constraint_breaks_ties_towards_the_lower_index():
    v = np.array([[1.0, -2.0, 2.0], [2.0, -1.0, 0.5]])
    assert np.array_equal(l0_support(v, 2), [[False, True, True], [False, False, False]])
    assert np.array_equal(l0_constraint(v, 3), [[0.0, -2.0, 2.0], [2.0, 0.0, 0.0]])


def test_l0_support_chooses_only_among_allowed_positions():
    v = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    allowed = np.array([False, True, True, False, True])
    assert np.array_equal(l0_support(v, 2, allowed), [False, True, True, False, False])
    with pytest.raises(ValueError):
        l0_support(v, 4, allowed)


def test_l0_constraint_does_not_modify_its_input():
    v = np.array([3.0, -1.0, 2.0])
    l0_constraint(v, 1)
    assert np.array_equal(v, [3.0, -1.0, 2.0])


# ---- l1 constraint ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_l1_projection_lies_on_the_ball_and_matches_bisection(seed):
    v = _vector(seed)
    rng = np.random.default_rng(1000 + seed)
    norm = np.abs(v).sum()
    for ratio in (1e-3, 0.1, 0.5, 0.9, 0.999, *rng.uniform(0, 1, 3)):
        kappa = ratio * norm
        theta = l1_constraint(v, kappa)
        assert np.abs(theta).sum() == pytest.approx(kappa, rel=1e-12, abs=0)
        assert np.allclose(theta, _l1_by_bisection(v, kappa), rtol=0, atol=1e-12 * norm)


@pytest.mark.parametrize("v", [[3.0], [-3.0], [1.0, 1.0], [2.0, -2.0, 2.0], [1.0, 0.0],
                               [0.1, 0.2], [5.0, 0.01, 0.01], [1.0, 1.0, 1.0, 1.0]])
@pytest.mark.parametrize("kappa", [0.01, 0.5, 1.0, 1.5, 2.9])
def test_l1_projection_is_exact_on_short_vectors(v, kappa):
    v = np.asarray(v)
    theta = l1_constraint(v, kappa)
    if np.abs(v).sum() <= kappa:
        assert np.array_equal(theta, v)
        return
    assert np.abs(theta).sum() == pytest.approx(kappa, rel=1e-12, abs=0)
    # KKT: theta = soft(v, tau) with one tau >= 0 for all entries (sufficient: convex problem)
    tau = np.max(np.abs(v) - np.abs(theta))
    assert tau > 0
    assert np.allclose(theta, np.sign(v) * np.maximum(np.abs(v) - tau, 0), rtol=0, atol=1e-14)


@pytest.mark.parametrize("seed", range(8))
def test_l1_projection_beats_a_general_solver(seed):
    """Against scipy's SLSQP on theta = p - n, p, n >= 0, sum(p + n) <= kappa."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=5)
    kappa = 0.4 * np.abs(v).sum()
    n = v.size

    def objective(z):
        return np.sum((v - z[:n] + z[n:]) ** 2)

    result = minimize(objective, np.zeros(2 * n), method="SLSQP", bounds=[(0, None)] * 2 * n,
                      constraints=[{"type": "ineq", "fun": lambda z: kappa - z.sum()}],
                      options={"ftol": 1e-14, "maxiter": 500})
    theta = l1_constraint(v, kappa)
    assert np.sum((v - theta) ** 2) <= result.fun + 1e-10
    assert np.allclose(theta, result.x[:n] - result.x[n:], atol=1e-5)


def test_l1_projection_of_a_short_vector_with_tied_magnitudes():
    theta = l1_constraint(np.array([2.0, -2.0, -0.5, 0.5]), 1.0)
    assert np.array_equal(theta, [0.5, -0.5, 0.0, 0.0])


def test_l1_projection_keeps_the_inside_and_the_origin():
    v = np.array([0.3, -0.2])
    assert np.array_equal(l1_constraint(v, 0.5), v)
    assert np.array_equal(l1_constraint(v, 0.0), [0.0, 0.0])
    with pytest.raises(ValueError):
        l1_constraint(v, -1.0)


def test_l1_projection_keeps_the_shape_of_a_conv_kernel():
    v = np.random.default_rng(0).normal(size=(4, 3, 2, 2))
    theta = l1_constraint(v, 1.0)
    assert theta.shape == v.shape
    assert np.abs(theta).sum() == pytest.approx(1.0, rel=1e-12)


# ---- penalties --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_l0_penalty_matches_the_best_support_found_by_enumeration(seed):
    v = _vector(seed)
    rng = np.random.default_rng(2000 + seed)
    mu = 10.0 ** rng.uniform(-2, 2)
    alpha = 0.5 * mu * np.median(v ** 2)  # threshold at the median magnitude
    theta = l0_penalty(v, alpha, mu)

    def cost(t):
        return 0.5 * mu * np.sum((v - t) ** 2) + alpha * np.count_nonzero(t)

    best = min(cost(np.where(np.isin(np.arange(v.size), s), v, 0.0)) for s in _supports(v.size))
    assert cost(theta) == pytest.approx(best, rel=1e-12, abs=0)
    assert np.count_nonzero(theta) == np.sum(np.abs(v) > np.sqrt(2 * alpha / mu))


def test_l0_penalty_threshold_is_sqrt_of_two_alpha_over_mu_and_zeroes_the_tie():
    v = np.array([1.0, -2.0, 3.0, 2.0000001])
    assert np.array_equal(l0_penalty(v, alpha=2.0, mu=1.0), [0.0, 0.0, 3.0, 2.0000001])
    assert np.array_equal(l0_penalty(v, alpha=1.0, mu=0.0), np.zeros(4))


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_l1_penalty_meets_the_subgradient_conditions(seed):
    v = _vector(seed)
    mu, alpha = 2.0, float(np.median(np.abs(v)))
    theta = l1_penalty(v, alpha, mu)
    on = theta != 0
    # stationarity: mu (theta - v) + alpha sign(theta) = 0 on the support,
    # |mu v| <= alpha off it
    assert np.allclose(mu * (theta[on] - v[on]) + alpha * np.sign(theta[on]), 0,
                       atol=1e-12 * max(alpha, 1))
    assert np.all(np.abs(mu * v[~on]) <= alpha * (1 + 1e-12))


def test_l1_penalty_is_at_least_as_good_as_every_point_of_a_fine_grid():
    v = np.array([0.7, -0.2, 1.5])
    mu, alpha = 1.5, 0.6
    theta = l1_penalty(v, alpha, mu)
    grid = np.linspace(-2, 2, 40001)
    for i in range(v.size):  # separable: one coordinate at a time
        costs = 0.5 * mu * (v[i] - grid) ** 2 + alpha * np.abs(grid)
        mine = 0.5 * mu * (v[i] - theta[i]) ** 2 + alpha * abs(theta[i])
        assert mine <= costs.min() + 1e-15
    assert np.allclose(theta, [0.3, 0.0, 1.1])


# ---- several layers ---------------------------------------------------------------------


def test_joint_l0_budget_is_allocated_across_layers_by_magnitude():
    layers = [np.array([[0.1, 5.0], [0.2, 0.3]]), np.array([4.0, 0.05, 3.0])]
    theta = CStep(Form.L0_CONSTRAINT, 3)(layers, mu=1.0)
    assert [t.shape for t in theta] == [(2, 2), (3,)]
    assert np.array_equal(theta[0], [[0.0, 5.0], [0.0, 0.0]])
    assert np.array_equal(theta[1], [4.0, 0.0, 3.0])


def test_per_layer_l0_budgets_give_exact_counts_per_layer():
    rng = np.random.default_rng(3)
    layers = [rng.normal(size=(6, 5)), rng.normal(size=(3, 2, 3, 3)), rng.normal(size=7)]
    theta = CStep(Form.L0_CONSTRAINT, (4, 20, 7))(layers, mu=0.0)
    assert [np.count_nonzero(t) for t in theta] == [4, 20, 7]


def test_joint_l1_budget_is_one_projection_of_the_concatenation():
    rng = np.random.default_rng(4)
    layers = [rng.normal(size=(3, 4)), rng.normal(size=5)]
    theta = CStep("l1-constraint", 2.0)(layers, mu=1.0)
    whole = l1_constraint(np.concatenate([x.ravel() for x in layers]), 2.0)
    assert np.array_equal(np.concatenate([t.ravel() for t in theta]), whole)
    assert sum(np.abs(t).sum() for t in theta) == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("form", [Form.L0_PENALTY, Form.L1_PENALTY])
def test_joint_penalty_equals_the_same_alpha_per_layer(form):
    rng = np.random.default_rng(5)
    layers = [rng.normal(size=(3, 4)), rng.normal(size=5)]
    joint = CStep(form, 0.3)(layers, mu=2.0)
    per_layer = CStep(form, (0.3, 0.3))(layers, mu=2.0)
    assert all(np.array_equal(a, b) for a, b in zip(joint, per_layer, strict=True))


def test_c_step_refuses_a_fractional_l0_budget_and_a_wrong_number_of_values():
    layers = [np.ones(3), np.ones(2)]
    with pytest.raises(ValueError):
        CStep(Form.L0_CONSTRAINT, 2.5)(layers, mu=1.0)
    with pytest.raises(ValueError):
        CStep(Form.L0_CONSTRAINT, (1, 1, 1))(layers, mu=1.0)
