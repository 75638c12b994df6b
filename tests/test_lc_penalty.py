"""The LC penalty hook: its value and its gradient mu (w - targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nettrim_cli.methods.lc.penalty import lc_penalty


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Conv1d(1, 2, 3))


def test_penalty_value_and_gradient_are_those_of_the_l_step_term():
    model = _model()
    names = ["0.weight", "2.weight"]
    rng = np.random.default_rng(0)
    targets = [rng.normal(size=tuple(model.get_parameter(n).shape)) for n in names]
    mu = 0.37
    value = lc_penalty(names, targets, mu)(model)
    weights = [model.get_parameter(n).detach().double().numpy() for n in names]
    expected = 0.5 * mu * sum(np.sum((w - t) ** 2) for w, t in zip(weights, targets, strict=True))
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    for name, w, t in zip(names, weights, targets, strict=True):
        grad = model.get_parameter(name).grad.double().numpy()
        assert np.allclose(grad, mu * (w - t), rtol=1e-5, atol=1e-7)
    assert model.get_parameter("0.bias").grad is None  # biases are not pruned


def test_penalty_refuses_targets_of_the_wrong_shape_or_number():
    model = _model()
    with pytest.raises(ValueError, match="shape"):
        lc_penalty(["0.weight"], [np.zeros((4, 3))], 1.0)(model)
    with pytest.raises(ValueError):
        lc_penalty(["0.weight", "2.weight"], [np.zeros((3, 4))], 1.0)
