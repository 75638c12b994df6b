"""The support refit and reweighted l1 (nettrim_cli/solvers/sharpen.py): the refit keeps every
zero at zero and never raises the layer's constraint value (parallel and cascade programs),
reaching the least-squares point on the support; reweighting keeps eps met when measured;
uniform per-entry l1 weights leave ADMM's numbers as they were; the options reach the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import dumped, invoke
from torch import nn

from nettrim_cli.program import NONE, RELU, LayerProgram
from nettrim_cli.solvers.admm import ADMMSettings, solve_layer
from nettrim_cli.solvers.admm.refit import refit_support
from nettrim_cli.solvers.base import SolverSettings
from nettrim_cli.solvers.sharpen import reweight, support_refit

pytestmark = pytest.mark.usefixtures("one_thread")


def _program(mode: str, activation: str = RELU, eps_rel: float = 0.3, seed: int = 0
             ) -> LayerProgram:
    """A 20 -> 8 layer on 120 samples; cascade: a perturbed input and V = W0^T x_hat + b."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((120, 20))
    W0 = rng.standard_normal((8, 20)) * (rng.random((8, 20)) < 0.5)
    b0 = 0.1 * rng.standard_normal(8)
    Z = X @ W0.T + b0
    Y = np.maximum(Z, 0.0) if activation == RELU else Z
    V = None
    if mode == "cascade":
        X = X + 0.1 * rng.standard_normal(X.shape)  # the pruned network's input
        V = X @ W0.T + b0
    eps = eps_rel * float(np.linalg.norm(Y))
    return LayerProgram(X=X, Y=Y, W0=W0, b0=b0, activation=activation, V=V, epsilon=eps)


def _solve(program: LayerProgram, **kw):
    opts = ADMMSettings(polish=False, eps_rel=1e-4, max_iter=3000)
    return solve_layer(program, SolverSettings(), admm_settings=opts, **kw)


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
@pytest.mark.parametrize("activation", [RELU, NONE])
def test_support_refit_keeps_zeros_and_never_raises_the_constraint(mode, activation):
    program = _program(mode, activation)
    sol = _solve(program)
    Wa = sol.Wa
    out, rec = support_refit(program, Wa)
    n = program.n_in
    assert np.array_equal(out[:, :n] == 0, Wa[:, :n] == 0)  # the same zeros, exactly
    before, after = program.constraint_value(Wa), program.constraint_value(out)
    assert after <= before * (1 + 1e-12)
    assert after < 0.9 * before  # the l1 answer's shrinkage is taken back
    assert rec["constraint_after"] == pytest.approx(after, rel=1e-9)
    # an answer that violates inactive bounds (magnitude pruning) is not made worse either
    crude = program.Wa0.copy()
    crude[:, :n][np.abs(program.W0) < np.quantile(np.abs(program.W0), 0.7)] = 0.0
    out2, _ = support_refit(program, crude)
    assert program.constraint_value(out2) <= program.constraint_value(crude) * (1 + 1e-12)
    assert np.array_equal(out2[:, :n] == 0, crude[:, :n] == 0)


def test_support_refit_reaches_the_least_squares_point_without_activation():
    program = _program("parallel", NONE)
    Wa = _solve(program).Wa
    out, _ = support_refit(program, Wa)
    for m in range(program.n_out):
        S = np.flatnonzero(Wa[m] != 0)
        S = np.union1d(S, [program.n_in])
        ls = np.linalg.lstsq(program.Xa[:, S], program.Y[:, m], rcond=None)[0]
        np.testing.assert_allclose(out[m, S], ls, rtol=1e-6, atol=1e-8)


def test_the_refit_meets_the_optimality_conditions_of_the_piecewise_quadratic():
    """From a poor start (most inactive inequalities violated), the Newton rounds end where
    the gradient of f vanishes: the minimiser over the support."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 6))
    y = np.maximum(X @ rng.standard_normal(6), 0.0)
    act = y > 0
    v = np.zeros(200)
    u0 = np.abs(rng.standard_normal(6))
    f0 = float(np.sum(np.where(act, X @ u0 - y, np.maximum(X @ u0 - v, 0.0)) ** 2))
    WT, f = refit_support(X, y[:, None], v[:, None], act[:, None], u0[:, None], bias=False,
                          rounds=30, tol=0.0)
    u = WT[:, 0]
    z = X @ u
    grad = X[act].T @ (z[act] - y[act]) + X[~act].T @ np.maximum(z[~act] - v[~act], 0.0)
    assert f[0] < f0
    assert np.linalg.norm(grad) <= 1e-8 * np.linalg.norm(X.T @ y)


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
def test_reweighting_keeps_eps_met_when_measured_and_never_adds_weights(mode):
    program = _program(mode, eps_rel=0.2, seed=1)
    sol = _solve(program)
    assert program.constraint_value(sol.Wa) <= program.epsilon
    out, rec = reweight(program, sol, SolverSettings(), rounds=3)
    assert program.constraint_value(out.Wa) <= program.epsilon  # measured on every sample
    assert out.eps_reached
    n = program.n_in
    assert rec["nonzeros_after"] == int(np.count_nonzero(out.Wa[:, :n]))
    assert rec["nonzeros_after"] <= rec["nonzeros_before"]
    assert rec["rounds"] and all(r["constraint"] <= program.epsilon or not r["kept"]
                                 for r in rec["rounds"])


def test_uniform_entry_weights_give_the_unweighted_admm_numbers():
    program = _program("parallel")
    plain = _solve(program)
    ones = _solve(program, l1_weights=np.ones_like(program.W0))
    np.testing.assert_allclose(ones.Wa, plain.Wa, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sharpen")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                          nn.Linear(12, 3))
    return dumped(d, model, np.random.default_rng(0).standard_normal((150, 10))
                  .astype(np.float32))


def _prune(d, tmp_path, tag, *flags) -> dict:
    r = invoke("prune", d / "model.pt", "--acts", d / "acts.h5", "--epsilon", "0.15", *flags,
               "-o", tmp_path / f"{tag}.pt", "--report", tmp_path / f"{tag}.json", "-q")
    assert r.exit_code == 0, r.stderr
    return json.loads((tmp_path / f"{tag}.json").read_text())


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
def test_prune_refit_lowers_the_discrepancy_with_the_same_zeros(files, tmp_path, mode):
    plain = _prune(files, tmp_path, "plain", "--mode", mode, "--no-refit")
    fit = _prune(files, tmp_path, "fit", "--mode", mode, "--refit")
    assert plain["settings"]["refit"] is False and fit["settings"]["refit"] is True
    p0, f0 = plain["layers"][0], fit["layers"][0]
    assert f0["nonzeros_after"] == p0["nonzeros_after"]
    assert f0["discrepancy"] < p0["discrepancy"]
    sharpen = f0["solver"]["sharpen"]["refit"]
    assert sharpen["constraint_after"] <= sharpen["constraint_before"]
    w_plain = torch.load(tmp_path / "plain.pt", weights_only=False)[0].weight
    w_fit = torch.load(tmp_path / "fit.pt", weights_only=False)[0].weight
    assert torch.equal(w_plain == 0, w_fit == 0)
    for la in fit["layers"]:
        if la.get("epsilon") is not None:
            assert la["constraint"] <= la["epsilon"] * (1 + 1e-9)
    if mode == "parallel":  # the same supports everywhere; every layer's discrepancy falls
        for a, b in zip(plain["layers"], fit["layers"], strict=True):
            assert b["nonzeros_after"] == a["nonzeros_after"]
            assert b["discrepancy"] <= a["discrepancy"] * (1 + 1e-9)


def test_prune_reweight_is_recorded_and_meets_eps(files, tmp_path):
    plain = _prune(files, tmp_path, "plain", "--mode", "parallel", "--no-refit")
    rw = _prune(files, tmp_path, "rw", "--mode", "parallel", "--reweight", "2", "--no-refit")
    assert rw["settings"]["reweight"] == 2
    assert rw["network"]["nonzeros_after"] <= plain["network"]["nonzeros_after"]
    for la in rw["layers"]:
        assert "reweight" in la["solver"]["sharpen"]
        assert la["constraint"] <= la["epsilon"] * (1 + 1e-9)


def test_preset_keys_set_the_options(files, tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("mode = 'parallel'\nrefit = false\nreweight = 1\n")
    rep = _prune(files, tmp_path, "preset", "--config", preset)
    assert rep["settings"]["refit"] is False and rep["settings"]["reweight"] == 1
    assert "refit" not in rep["layers"][0]["solver"]["sharpen"]
    rep = _prune(files, tmp_path, "flag", "--config", preset, "--refit", "--reweight", "0")
    assert rep["settings"]["refit"] is True and rep["settings"]["reweight"] == 0
    assert "reweight" not in rep["layers"][0]["solver"]["sharpen"]
    rep = _prune(files, tmp_path, "off", "--config", preset, "--no-refit", "--reweight", "0")
    assert "sharpen" not in rep["layers"][0]["solver"]


@pytest.mark.parametrize("extra, needle", [
    (["--lambda", "0.01", "--reweight", "2"], "needs an epsilon"),
    (["--reweight", "-1"], "--reweight"),
    (["--method", "wanda", "--sparsity", "0.5", "--refit"], "--refit: not an option"),
])
def test_bad_sharpen_options_are_refused(files, tmp_path, extra, needle):
    r = invoke("prune", files / "model.pt", "--acts", files / "acts.h5", *extra,
               "-o", tmp_path / "p.pt")
    assert r.exit_code == 2
    assert needle in r.stderr
    assert not (tmp_path / "p.pt").exists()


def test_bad_preset_value_is_refused(files, tmp_path):
    preset = tmp_path / "bad.toml"
    preset.write_text("refit = 1\n")
    r = invoke("prune", files / "model.pt", "--acts", files / "acts.h5", "--config", preset,
               "-o", tmp_path / "p.pt")
    assert r.exit_code == 2
    assert "refit" in r.stderr and str(preset) in r.stderr


@pytest.mark.parametrize("mode,default", [("parallel", True), ("cascade", False)])
def test_refit_default_is_on_in_parallel_mode_only(files, tmp_path, mode, default):
    """In cascade mode eq. 7 takes each later layer's eps from its input's misfit: a refit
    that removes most of it would leave those layers nothing to prune, so it is opt-in."""
    rep = _prune(files, tmp_path, "dflt", "--mode", mode)
    assert rep["settings"]["refit"] is default
