"""The LC loop on least squares, with an L step that is the exact minimiser of the loss plus
the penalty: min_w 0.5 ||A w - b||^2 + (mu/2) ||w - t||^2 = (A'A + mu I)^-1 (A'b + mu t)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from nettrim_cli.methods.lc.algorithm import LCState, LearningCompression, MuSchedule, Variant
from nettrim_cli.methods.lc.compression import CStep, Form

N, M, KAPPA = 10, 40, 3
SCHEDULE = MuSchedule(mu0=0.5, a=1.3, steps=40)  # A'A ~ 40 I: mu from 0.5 to ~1.8e4


class LeastSquares:
    """A problem with correlated columns, on which the direct compression (magnitude pruning
    of the dense solution) often keeps the wrong support."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        base = rng.normal(size=(M, N))
        self.A = base + 0.8 * base[:, [0]]
        self.b = self.A @ rng.normal(size=N) + 0.5 * rng.normal(size=M)
        self.dense = np.linalg.lstsq(self.A, self.b, rcond=None)[0]
        self.calls: list[float] = []

    def loss(self, w: np.ndarray) -> float:
        return 0.5 * float(np.sum((self.A @ w - self.b) ** 2))

    def best_sparse(self, kappa: int) -> tuple[float, set[int]]:
        """The best kappa-sparse least-squares fit, by enumerating the supports."""
        best = (np.inf, set())
        for support in map(list, itertools.combinations(range(N), kappa)):
            w = np.zeros(N)
            w[support] = np.linalg.lstsq(self.A[:, support], self.b, rcond=None)[0]
            best = min(best, (self.loss(w), set(support)), key=lambda x: x[0])
        return best

    def l_step_on(self, weights: list[np.ndarray]):
        def l_step(mu: float, targets: list[np.ndarray]) -> dict[str, float]:
            self.calls.append(mu)
            lhs = self.A.T @ self.A + mu * np.eye(N)
            weights[0][...] = np.linalg.solve(lhs, self.A.T @ self.b + mu * targets[0])
            return {"loss": self.loss(weights[0])}
        return l_step


def _run(problem: LeastSquares, c_step: CStep, variant: Variant,
         schedule: MuSchedule = SCHEDULE, **kwargs) -> LCState:
    weights = [problem.dense.copy()]
    lc = LearningCompression(c_step, schedule, variant)
    return lc.run(weights, problem.l_step_on(weights), **kwargs)


@pytest.mark.parametrize("variant", list(Variant))
@pytest.mark.parametrize("seed", range(10))
def test_lc_reaches_kappa_nonzeros_and_beats_direct_compression(seed, variant):
    problem = LeastSquares(seed)
    c_step = CStep(Form.L0_CONSTRAINT, KAPPA)
    theta = _run(problem, c_step, variant).theta[0]
    direct = c_step([problem.dense], mu=0.0)[0]
    assert np.count_nonzero(theta) == KAPPA
    assert problem.loss(theta) <= problem.loss(direct) * (1 + 1e-9)


def test_augmented_lagrangian_finds_the_best_support_where_direct_compression_misses_it():
    problem = LeastSquares(7)
    best, support = problem.best_sparse(KAPPA)
    direct = CStep(Form.L0_CONSTRAINT, KAPPA)([problem.dense], mu=0.0)[0]
    assert set(np.flatnonzero(direct)) != support
    theta = _run(problem, CStep(Form.L0_CONSTRAINT, KAPPA), Variant.AUGMENTED_LAGRANGIAN
                 ).theta[0]
    assert set(np.flatnonzero(theta)) == support
    assert problem.loss(theta) == pytest.approx(best, rel=1e-3)


@pytest.mark.parametrize(("variant", "tolerance"), [(Variant.AUGMENTED_LAGRANGIAN, 1e-6),
                                                    (Variant.QUADRATIC_PENALTY, 1e-2)])
def test_both_variants_drive_w_onto_theta(variant, tolerance):
    problem = LeastSquares(0)
    state = _run(problem, CStep(Form.L0_CONSTRAINT, KAPPA), variant)
    distances = [h["distance"] for h in state.history]
    assert distances[-1] < tolerance * np.linalg.norm(state.theta[0])
    assert distances[-1] < distances[1]
    if variant == Variant.QUADRATIC_PENALTY:
        assert np.all(state.multipliers[0] == 0)


def _lasso(problem: LeastSquares, alpha: float) -> np.ndarray:
    """min 0.5 ||Aw - b||^2 + alpha ||w||_1 by cyclic coordinate descent (independent of LC)."""
    A, b = problem.A, problem.b
    w = np.zeros(N)
    for _ in range(5000):
        for j in range(N):
            rho = A[:, j] @ (b - A @ w + A[:, j] * w[j])
            w[j] = np.sign(rho) * max(abs(rho) - alpha, 0.0) / (A[:, j] @ A[:, j])
    return w


def test_lc_with_the_l1_penalty_converges_to_the_lasso_solution():
    """The l1-penalty problem is convex, so LC must reach its unique minimiser, given a mu
    that grows slowly enough: with a = 1.3 w freezes onto theta 0.04 away from it (the
    multipliers stop moving once mu dwarfs the loss's curvature)."""
    problem = LeastSquares(1)
    alpha = 20.0
    theta = _run(problem, CStep(Form.L1_PENALTY, alpha), Variant.AUGMENTED_LAGRANGIAN,
                 MuSchedule(mu0=2.0, a=1.05, steps=200)).theta[0]
    lasso = _lasso(problem, alpha)
    assert 0 < np.count_nonzero(lasso) < N
    assert np.array_equal(theta != 0, lasso != 0)
    assert np.allclose(theta, lasso, rtol=0, atol=1e-8)


def test_lc_with_the_l1_constraint_ends_on_the_ball():
    problem = LeastSquares(2)
    kappa = 0.3 * np.abs(problem.dense).sum()
    state = _run(problem, CStep(Form.L1_CONSTRAINT, kappa), Variant.AUGMENTED_LAGRANGIAN)
    assert np.abs(state.theta[0]).sum() == pytest.approx(kappa, rel=1e-12)
    assert problem.loss(state.theta[0]) < problem.loss(problem.dense * 0.3)


def test_the_record_holds_the_schedule_and_the_l_steps_figures():
    problem = LeastSquares(0)
    state = _run(problem, CStep(Form.L0_CONSTRAINT, KAPPA), Variant.AUGMENTED_LAGRANGIAN)
    assert state.step == SCHEDULE.steps == len(state.history) - 1
    assert problem.calls == [SCHEDULE.mu0 * SCHEDULE.a ** k for k in range(SCHEDULE.steps)]
    assert [h["mu"] for h in state.history[1:]] == problem.calls
    assert "loss" not in state.history[0] and "loss" in state.history[-1]
    assert all(h["nonzeros"] == KAPPA for h in state.history)
    json.dumps(state.record())


def test_resume_after_step_k_gives_the_identical_final_theta():
    problem = LeastSquares(3)
    c_step = CStep(Form.L0_CONSTRAINT, KAPPA)
    stored = {}
    weights = [problem.dense.copy()]
    lc = LearningCompression(c_step, SCHEDULE)

    def store(state: LCState) -> None:
        if state.step == 17:  # the state, through JSON and copies, and the weights of then
            stored["arrays"] = {k: v.copy() for k, v in state.arrays().items()}
            stored["record"] = json.loads(json.dumps(state.record()))
            stored["weights"] = weights[0].copy()

    uninterrupted = lc.run(weights, problem.l_step_on(weights), on_step=store)
    resumed_weights = [stored["weights"]]
    state = LCState.from_parts(stored["arrays"], stored["record"])
    resumed = lc.run(resumed_weights, problem.l_step_on(resumed_weights), resume=state)
    assert np.array_equal(resumed.theta[0], uninterrupted.theta[0])
    assert np.array_equal(resumed.multipliers[0], uninterrupted.multipliers[0])
    assert resumed.history == json.loads(json.dumps(uninterrupted.history))


def test_resume_is_refused_with_other_settings_or_shapes():
    problem = LeastSquares(0)
    state = _run(problem, CStep(Form.L0_CONSTRAINT, KAPPA), Variant.AUGMENTED_LAGRANGIAN)
    weights = [problem.dense.copy()]
    with pytest.raises(ValueError, match="settings"):
        LearningCompression(CStep(Form.L0_CONSTRAINT, KAPPA + 1), SCHEDULE).run(
            weights, problem.l_step_on(weights), resume=state)
    with pytest.raises(ValueError, match="shapes"):
        LearningCompression(CStep(Form.L0_CONSTRAINT, KAPPA), SCHEDULE).run(
            [np.zeros(N + 1)], problem.l_step_on(weights), resume=state)


def test_torch_weights_trained_in_place_are_read_back():
    problem = LeastSquares(5)
    parameter = torch.nn.Parameter(torch.tensor(problem.dense))
    weights_np = [problem.dense.copy()]
    inner = problem.l_step_on(weights_np)

    def l_step(mu, targets):
        inner(mu, targets)
        with torch.no_grad():
            parameter.copy_(torch.from_numpy(weights_np[0]))

    lc = LearningCompression(CStep(Form.L0_CONSTRAINT, KAPPA), SCHEDULE)
    from_torch = lc.run([parameter], l_step).theta[0]
    from_numpy = _run(LeastSquares(5), CStep(Form.L0_CONSTRAINT, KAPPA),
                      Variant.AUGMENTED_LAGRANGIAN).theta[0]
    assert np.array_equal(from_torch, from_numpy)


def test_joint_budget_over_two_layers():
    problem = LeastSquares(7)
    weights = [problem.dense[:4].copy(), problem.dense[4:].copy()]

    def l_step(mu, targets):
        lhs = problem.A.T @ problem.A + mu * np.eye(N)
        w = np.linalg.solve(lhs, problem.A.T @ problem.b + mu * np.concatenate(targets))
        weights[0][...], weights[1][...] = w[:4], w[4:]

    state = LearningCompression(CStep(Form.L0_CONSTRAINT, KAPPA), SCHEDULE).run(weights, l_step)
    single = _run(LeastSquares(7), CStep(Form.L0_CONSTRAINT, KAPPA),
                  Variant.AUGMENTED_LAGRANGIAN).theta[0]
    assert np.array_equal(np.concatenate(state.theta), single)
    assert state.history[-1]["nonzeros_per_layer"] == [np.count_nonzero(t) for t in state.theta]


def test_the_default_schedule_is_the_lc_toolkits_lenet300_one():
    schedule = MuSchedule()
    assert (schedule.mu0, schedule.a, schedule.steps) == (9e-5, 1.1, 40)
    with pytest.raises(ValueError):
        MuSchedule(mu0=0.0)
