"""LC on a tiny torch network through the shared training loop: each L step is
``training.train`` with ``quadratic_penalty(weights, theta + lambda/mu, mu)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nettrim_cli.methods.lc.algorithm import LCState, LearningCompression, MuSchedule
from nettrim_cli.methods.lc.compression import CStep, Form
from nettrim_cli.training import TrainConfig, quadratic_penalty, train

NAMES = ["0.weight", "2.weight"]
L_STEP = TrainConfig(epochs=30, lr=1e-2, batch_size=512, shuffle=False)  # full batch
# mu on the scale of a mean cross-entropy: 0.01 .. 22 over 20 steps
SCHEDULE = MuSchedule(mu0=1e-2, a=1.5, steps=20)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread) -> tuple[dict, np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 10, generator=g)
    y = (X @ torch.randn(10, 3, generator=g)).argmax(1)
    model = _model()
    train(model, X.numpy(), y.numpy(), TrainConfig(epochs=500, lr=1e-2, batch_size=512))
    return {k: v.clone() for k, v in model.state_dict().items()}, X.numpy(), y.numpy()


def _model(state: dict | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    if state is not None:
        model.load_state_dict(state)
    return model


def _weights(model: nn.Module) -> list[nn.Parameter]:
    return [model.get_parameter(n) for n in NAMES]


def _l_step(model, X, y):
    def l_step(mu, targets):
        result = train(model, X, y, L_STEP, penalty=quadratic_penalty(_weights(model),
                                                                       targets, mu))
        return {"loss": result.loss_per_epoch[-1]}
    return l_step


def _accuracy(model, X, y, weights) -> float:
    with torch.no_grad():
        for p, w in zip(_weights(model), weights, strict=True):
            p.copy_(torch.from_numpy(w))
        return (model(torch.from_numpy(X)).argmax(1).numpy() == y).mean()


def test_lc_on_a_tiny_network_reaches_kappa_and_beats_direct_compression(trained):
    state, X, y = trained
    model = _model(state)
    kappa = int(0.2 * sum(p.numel() for p in _weights(model)))
    c_step = CStep(Form.L0_CONSTRAINT, kappa)
    dense = [p.detach().double().numpy().copy() for p in _weights(model)]
    result = LearningCompression(c_step, SCHEDULE).run(_weights(model), _l_step(model, X, y))
    assert sum(np.count_nonzero(t) for t in result.theta) == kappa
    assert result.history[-1]["distance"] < 0.05 * result.history[0]["distance"]
    lc_accuracy = _accuracy(model, X, y, result.theta)
    assert lc_accuracy > 0.9 > _accuracy(model, X, y, c_step(dense, mu=0.0)) + 0.1


def test_resume_through_the_training_loop_gives_the_identical_theta(trained):
    state, X, y = trained
    lc = LearningCompression(CStep(Form.L0_CONSTRAINT, 90), MuSchedule(1e-2, 1.5, 6))
    model = _model(state)
    stored = {}

    def store(s: LCState) -> None:
        if s.step == 3:
            stored["lc"] = LCState.from_parts(s.arrays(), s.record())
            stored["model"] = {k: v.clone() for k, v in model.state_dict().items()}

    whole = lc.run(_weights(model), _l_step(model, X, y), on_step=store)
    model = _model(stored["model"])
    resumed = lc.run(_weights(model), _l_step(model, X, y), resume=stored["lc"])
    assert all(np.array_equal(a, b) for a, b in zip(whole.theta, resumed.theta, strict=True))
