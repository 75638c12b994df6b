"""Proposition 1, Theorems 1, 2 and 3 of the paper, checked on random instances."""

import numpy as np
import pytest
import torch
from torch import nn

from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.dump import DumpReader, write_dump
from nettrim_cli.graph import trace_layers
from nettrim_cli.methods.netrim import PruneSettings, prune
from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import OSQPSettings
from nettrim_cli.solvers.osqp import ColumnQP, is_solved
from nettrim_cli.solvers.osqp_solver import OSQPSolver


def link_normalised_net(seed, widths=(8, 24, 16, 4), bias=True):
    """A random ReLU network with ||W_l||_1 = 1 for every layer (section 2)."""
    torch.manual_seed(seed)
    mods = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        lin = nn.Linear(a, b, bias=bias)
        with torch.no_grad():
            lin.weight.mul_(torch.rand_like(lin.weight) < 0.7)
            lin.weight.div_(lin.weight.abs().sum())
            if bias:
                lin.bias.mul_(0.05)
        mods.append(lin)
        if i < len(widths) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).double().float().eval()


def run(tmp_path, model, mode, epsilon=0.05, gamma=1.2, P=160, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((P, model[0].in_features)).astype(np.float32)
    ckpt = Checkpoint(model=model, form="module", path="mem")
    ckpt.layers = trace_layers(model, torch.as_tensor(x[:4]))
    path = str(tmp_path / f"acts-{mode}.h5")
    write_dump(path, model, ckpt.layers, x, None, "0")
    with DumpReader(path) as dump:
        settings = PruneSettings(mode=mode, epsilon=epsilon, gamma=gamma)
        return prune(ckpt, dump, settings, OSQPSolver())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_theorem1_parallel_bound_holds_on_link_normalised_networks(tmp_path, seed):
    res = run(tmp_path, link_normalised_net(seed), "parallel", epsilon=0.08, seed=seed)
    net = res.network
    eps = [o.epsilon for o in res.layers]
    assert net["bound_formula"] == "sum_l eps_l"
    assert net["bound"] == pytest.approx(sum(eps))
    assert net["discrepancy"] <= net["bound"]
    # Proposition 1, per layer: ||Yhat - Y||_F <= eps on the layer's own input
    for o in res.layers:
        assert o.discrepancy <= o.epsilon * (1 + 1e-9)
    assert net["nonzeros_after"] < net["nonzeros_before"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_theorem2_cascade_bound_holds_on_link_normalised_networks(tmp_path, seed):
    gamma = 1.2
    res = run(tmp_path, link_normalised_net(seed), "cascade", epsilon=0.08, gamma=gamma,
              seed=seed)
    net = res.network
    L = len(res.layers)
    eps1 = res.layers[0].epsilon
    assert net["bound_formula"] == "eps_1 * gamma^((L-1)/2)"
    assert net["bound"] == pytest.approx(eps1 * gamma ** ((L - 1) / 2))
    assert net["discrepancy"] <= net["bound"]
    # each layer of the cascade: ||Yhat^(l) - Y^(l)|| <= eps_1 * gamma^((l-1)/2)
    for k, o in enumerate(res.layers):
        assert o.discrepancy <= eps1 * gamma ** (k / 2) * (1 + 1e-6)
        assert o.solution.constraint <= o.epsilon * (1 + 1e-9)


def test_bound_is_carried_back_for_unnormalised_networks(tmp_path):
    model = link_normalised_net(3)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
        model[0].bias.mul_(3.0)
        model[2].weight.mul_(2.0)
    res = run(tmp_path, model, "parallel", epsilon=0.08)
    net = res.network
    e = [o.epsilon for o in res.layers]
    l1 = [float(np.abs(o.W0).sum()) for o in res.layers]
    assert net["bound"] == pytest.approx(e[0] * l1[1] * l1[2] + e[1] * l1[2] + e[2])
    assert net["discrepancy"] <= net["bound"]


@pytest.mark.parametrize("seed", range(3))
def test_theorem3_recovers_sparse_weights_from_s_log_n_gaussian_samples(seed):
    """Gaussian X, s-sparse w*, P = (11 s + 7) mu log N, epsilon = 0: program (8) gives w*."""
    rng = np.random.default_rng(seed)
    N, s, mu = 64, 2, 1.2
    P = int(np.ceil((11 * s + 7) * mu * np.log(N)))
    assert P < N * 3
    w = np.zeros(N)
    support = rng.choice(N, s, replace=False)
    w[support] = rng.standard_normal(s) + np.sign(rng.standard_normal(s))
    X = rng.standard_normal((P, N))
    y = np.maximum(X @ w, 0)[:, None]
    # start from a dense feasible-looking W0 to be sure nothing is copied from w*
    prog = LayerProgram(X=X, Y=y, W0=rng.standard_normal((1, N)), b0=None, epsilon=0.0)
    r = ColumnQP(prog, 0, OSQPSettings(eps_abs=1e-9, eps_rel=1e-9, max_iter=200000),
                 exact=True).solve(np.inf)
    assert is_solved(r.status)
    np.testing.assert_allclose(r.wa, w, atol=1e-5)


def test_theorem3_fails_with_far_too_few_samples():
    """With P well below s log N, program (8) has feasible points sparser (in l1) than w*, so
    it does not identify w* -- the sample count in Theorem 3 matters. Checked with HiGHS."""
    from scipy.optimize import linprog

    rng = np.random.default_rng(0)
    N, s = 64, 6
    w = np.zeros(N)
    w[rng.choice(N, s, replace=False)] = 1.0
    X = rng.standard_normal((12, N))
    y = np.maximum(X @ w, 0)
    act = y > 0
    # variables [w (N), t (N)]: min 1't, -t <= w <= t, X_act w = y_act, X_inact w <= 0
    I = np.eye(N)
    A_ub = np.vstack([np.hstack([I, -I]), np.hstack([-I, -I]),
                      np.hstack([X[~act], np.zeros(((~act).sum(), N))])])
    b_ub = np.zeros(A_ub.shape[0])
    A_eq = np.hstack([X[act], np.zeros((act.sum(), N))])
    res = linprog(np.r_[np.zeros(N), np.ones(N)], A_ub=A_ub, b_ub=b_ub, A_eq=A_eq,
                  b_eq=y[act], bounds=[(None, None)] * (2 * N), method="highs")
    assert res.status == 0
    assert res.fun < np.abs(w).sum() - 1e-3
