"""BatchNorm folding and residual units: folding and writing back leaves the network's output
as it was (modules, keys and shapes kept), pruned folded weights come out of the written
modules unchanged, and a residual unit's program is eq. 3 with target y - s and V = -s,
checked against an independent solver (scipy's SLSQP) on a small case."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import nn

from nettrim_cli.graph import trace_layers
from nettrim_cli.layers.fold import unit_matrix, write_unit
from nettrim_cli.methods.netrim.unit import build, sampled_discrepancy
from nettrim_cli.solvers import make_solver
from nettrim_cli.solvers.base import SolverSettings
from nettrim_cli.unitdata import UnitView
from tests.conv_test_archs import randomise_bn

CASES = {
    "conv without bias": lambda: nn.Sequential(nn.Conv2d(2, 3, 3, bias=False),
                                               nn.BatchNorm2d(3), nn.ReLU()),
    "conv with bias": lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU()),
    "linear, BN without affine": lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(50, 4, bias=False), nn.BatchNorm1d(4, affine=False), nn.ReLU()),
}


def _model(case: str) -> tuple[nn.Module, str, str, torch.Tensor]:
    torch.manual_seed(0)
    model = randomise_bn(CASES[case]())
    x = torch.randn(6, 2, 5, 5)
    unit = next(la for la in trace_layers(model, x) if la.prunable)
    assert unit.bn  # the BN is folded into the unit
    return model, unit.name, unit.bn, x


@pytest.mark.parametrize("case", sorted(CASES))
def test_fold_and_write_back_gives_identical_outputs(case):
    model, name, bn, x = _model(case)
    W, b = unit_matrix(model, name, bn)
    copy_ = copy.deepcopy(model)
    write_unit(copy_, name, W, b, bn)
    with torch.no_grad():
        assert torch.allclose(copy_(x), model(x), atol=1e-5, rtol=0)
    assert {k: v.shape for k, v in copy_.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pruned_folded_weights_are_what_the_written_modules_compute(case):
    model, name, bn, x = _model(case)
    W, b = unit_matrix(model, name, bn)
    W = np.where(np.abs(W) < np.median(np.abs(W)), 0.0, W)  # prune half of the folded weights
    b = b + 0.1
    write_unit(model, name, W, b, bn)
    assert np.array_equal(unit_matrix(model, name, bn)[0] == 0, W == 0)  # zeros stay zeros
    unit = model.get_submodule(name)
    with torch.no_grad():
        got = model[:-1](x).double()
        xin = x.double() if isinstance(unit, nn.Conv2d) else x.flatten(1).double()
        Wt = torch.as_tensor(W).reshape(unit.weight.shape)
        want = (F.conv2d(xin, Wt, torch.as_tensor(b)) if isinstance(unit, nn.Conv2d)
                else xin @ Wt.T + torch.as_tensor(b))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def _residual_case():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 5))
    W0, b0 = rng.standard_normal((1, 5)), np.array([0.2])
    Z = X @ W0.T + b0
    S = rng.standard_normal((40, 1))  # the shortcut s added before the ReLU
    info = trace_layers(nn.Sequential(nn.Linear(5, 1), nn.ReLU()).eval(), torch.randn(2, 5))[0]
    view = UnitView(X=X, Z=Z, S=S, used=40, total=40)
    unit = build(info, None, view, W0, b0, False, 0.3, 1.0, None)
    return X, Z, S, W0, b0, info, unit


def test_residual_program_targets_y_minus_s_with_v_equal_minus_s():
    _, Z, S, _, _, _, unit = _residual_case()
    (_, program), = unit.parts
    active = Z + S > 0
    np.testing.assert_array_equal(program.active_set, active)
    np.testing.assert_allclose(program.Y[active], (np.maximum(Z + S, 0) - S)[active])
    np.testing.assert_allclose(program.V, -S)


def test_residual_program_matches_an_independent_solver():
    X, Z, S, W0, b0, info, unit = _residual_case()
    (_, program), = unit.parts
    eps = program.epsilon
    act = program.active_set[:, 0]
    y, s = Z[:, 0], S[:, 0]
    Xa = np.hstack([X, np.ones((40, 1))])

    def split(v):  # u = u+ - u-, bias free: min sum(u+ + u-) (eq. 14's variables)
        return np.concatenate([v[:5] - v[5:10], v[10:]])

    cons = [{"type": "ineq", "fun": lambda v: eps ** 2 - np.sum((Xa[act] @ split(v) - y[act])
                                                                 ** 2)},
            {"type": "ineq", "fun": lambda v: -s[~act] - Xa[~act] @ split(v)}]
    start = np.concatenate([np.maximum(W0[0], 0), np.maximum(-W0[0], 0), b0])
    ref = minimize(lambda v: v[:10].sum(), start, constraints=cons, method="SLSQP",
                   bounds=[(0, None)] * 10 + [(None, None)], options={"maxiter": 500,
                                                                       "ftol": 1e-12})
    assert ref.success
    Wa = make_solver("osqp").solve(program, SolverSettings(workers=1)).Wa
    l1, l1_ref = float(np.abs(Wa[0, :5]).sum()), float(ref.x[:10].sum())
    assert l1_ref * (1 - 1e-3) <= l1 <= l1_ref * 1.05
    assert program.constraint_value(Wa) <= eps * (1 + 1e-4)
    # Proposition 1 for the residual unit: relu(U^T x + s) stays within eps of relu(z + s)
    assert sampled_discrepancy(unit, "relu", Wa[:, :5], Wa[:, 5]) <= eps * (1 + 1e-4)
