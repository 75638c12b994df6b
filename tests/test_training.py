"""The one training loop (nettrim_cli.training): masked weights stay exactly zero, a penalty pulls
the weights towards its target, seeded runs repeat bit for bit, the loop is the plain seeded
minibatch loop the callers had before, and a torch.optim.lr_scheduler sets the lr it steps
with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nettrim_cli.errors import BadInput
from nettrim_cli.training import (
    Callback,
    TrainConfig,
    TrainResult,
    quadratic_penalty,
    train,
)

N, D, K = 60, 5, 3


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)).astype(np.int64)
    return x, y


def net(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, K))


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [v.clone() for v in model.state_dict().values()]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_masked_weights_stay_exactly_zero_under_momentum_decay_and_penalty(optimizer):
    x, y = data()
    model = net()
    mask = torch.rand(8, D, generator=torch.Generator().manual_seed(0)) > 0.5
    assert bool((model[0].weight.detach()[~mask] != 0).all())  # not zero before: the loop zeroes
    before = model[0].weight.detach().clone()
    # a penalty pulling every weight towards 1 pushes the pruned ones too
    pull = quadratic_penalty([model[0].weight], [np.ones((8, D), np.float32)], mu=1.0)
    config = TrainConfig(epochs=3, lr=0.05, batch_size=16, optimizer=optimizer,
                         weight_decay=0.1)
    train(model, x, y, config, masks={"0.weight": mask}, penalty=pull)
    w = model[0].weight.detach()
    assert bool((w[~mask] == 0).all())
    assert bool((w[mask] != before[mask]).all())


def test_penalty_pulls_weights_towards_its_target():
    x, y = data()
    target = [np.full((8, D), 0.7, np.float32)]
    config = TrainConfig(epochs=4, lr=0.01, batch_size=20, optimizer="sgd", momentum=0.0)
    plain = net()
    start = float((plain[0].weight.detach() - 0.7).norm())
    train(plain, x, y, config)
    pulled = net()
    train(pulled, x, y, config, penalty=quadratic_penalty([pulled[0].weight], target, mu=50.0))
    d_plain = float((plain[0].weight.detach() - 0.7).norm())
    d_pulled = float((pulled[0].weight.detach() - 0.7).norm())
    assert d_pulled < 0.1 * start and d_pulled < 0.1 * d_plain


def test_seeded_runs_are_identical_and_the_seed_matters():
    x, y = data()
    runs = []
    for k, seed in enumerate((4, 4, 5)):
        model = net(dropout=0.3)  # dropout draws from torch's generator
        torch.rand(k + 1)  # whatever was drawn before, train starts from its seed
        result = train(model, x, y, TrainConfig(epochs=2, batch_size=16, seed=seed))
        runs.append((weights(model), result.loss_per_epoch))
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[1][0], strict=True))
    assert runs[0][1] == runs[1][1]
    assert not all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[2][0], strict=True))


def test_the_loop_is_the_plain_seeded_minibatch_loop():
    """Bit for bit what datasets.train and experiments did by hand: seed torch, then one numpy
    permutation per epoch, Adam on the mean cross-entropy of each slice of it."""
    x, y = data()
    ref = net()
    torch.manual_seed(7)
    gen = np.random.default_rng(7)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(3):
        order = torch.as_tensor(gen.permutation(N))
        for i in range(0, N, 25):
            idx = order[i:i + 25]
            opt.zero_grad()
            nn.functional.cross_entropy(ref(xt[idx]), yt[idx]).backward()
            opt.step()
    model = net()
    result = train(model, x, y, TrainConfig(epochs=3, lr=1e-2, batch_size=25, seed=7))
    assert all(torch.equal(a, b) for a, b in zip(weights(ref), weights(model), strict=True))
    assert result.steps == 9 and not model.training


def test_a_scheduler_sets_the_lr_of_each_epoch():
    x, y = data()
    config = TrainConfig(epochs=5, lr=0.1, batch_size=30, optimizer="sgd",
                         scheduler="StepLR", scheduler_kwargs={"step_size": 2, "gamma": 0.1})
    result = train(net(), x, y, config)
    assert result.lr_per_epoch == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001], rel=1e-12)


def test_the_optimizer_steps_with_the_scheduler_lr():
    # lr 0 from the second epoch on: three epochs end where one epoch without scheduler ends
    x, y = data()
    frozen, once = net(), net()
    train(frozen, x, y, TrainConfig(epochs=3, batch_size=20, scheduler="ExponentialLR",
                                    scheduler_kwargs={"gamma": 0.0}))
    train(once, x, y, TrainConfig(epochs=1, batch_size=20))
    assert all(torch.equal(a, b) for a, b in zip(weights(frozen), weights(once), strict=True))


def test_reduce_on_plateau_is_given_the_epoch_loss():
    x, y = data()
    # mode "max": every epoch whose loss is not above the best so far counts as bad
    config = TrainConfig(epochs=4, lr=0.01, batch_size=N, shuffle=False,
                         scheduler="ReduceLROnPlateau",
                         scheduler_kwargs={"mode": "max", "patience": 0, "factor": 0.5})
    result = train(net(), x, y, config)
    losses = result.loss_per_epoch
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))  # full batch descends
    assert result.lr_per_epoch == pytest.approx([0.01, 0.01, 0.005, 0.0025])


def test_callbacks_see_every_batch_and_epoch():
    x, y = data()

    class Record(Callback):
        def __init__(self) -> None:
            self.batches: list[tuple[int, int, int, float]] = []
            self.epochs: list[tuple[int, list[float]]] = []

        def on_batch(self, epoch: int, done: int, n: int, loss: float) -> None:
            self.batches.append((epoch, done, n, loss))

        def on_epoch(self, epoch: int, result: TrainResult) -> None:
            self.epochs.append((epoch, list(result.loss_per_epoch)))

    rec = Record()
    result = train(net(), x, y, TrainConfig(epochs=2, batch_size=25), callbacks=[rec])
    assert [(e, d, n) for e, d, n, _ in rec.batches] == [
        (0, 25, N), (0, 50, N), (0, 60, N), (1, 25, N), (1, 50, N), (1, 60, N)]
    assert [rec.batches[2][3], rec.batches[5][3]] == result.loss_per_epoch
    assert rec.epochs == [(0, result.loss_per_epoch[:1]), (1, result.loss_per_epoch)]


@pytest.mark.parametrize("kwargs", [{"optimizer": "rmsprop"}, {"scheduler": "NoSuchLR"},
                                    {"scheduler": "LRScheduler"}, {"lr": 0.0},
                                    {"batch_size": 0}, {"epochs": -1}])
def test_bad_settings_are_refused_by_name(kwargs):
    with pytest.raises(BadInput):
        TrainConfig(**{"epochs": 1, **kwargs})


def test_a_mask_that_fits_no_parameter_is_refused():
    x, y = data()
    with pytest.raises(BadInput, match="shape"):
        train(net(), x, y, TrainConfig(epochs=1), masks={"0.weight": torch.ones(3, 3, dtype=bool)})
    with pytest.raises(BadInput, match="no such parameter"):
        train(net(), x, y, TrainConfig(epochs=1), masks={"9.weight": torch.ones(8, D, dtype=bool)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_model_on_the_gpu_trains_there_masked_and_pulled():
    x, y = data()
    model = net().to("cuda")
    mask = torch.rand(8, D, generator=torch.Generator().manual_seed(0)) > 0.5
    pull = quadratic_penalty([model[0].weight], [np.ones((8, D), np.float32)], mu=1.0)
    result = train(model, x, y, TrainConfig(epochs=2, batch_size=16, optimizer="sgd"),
                   masks={"0.weight": mask}, penalty=pull)
    w = model[0].weight.detach()
    assert w.is_cuda and result.steps == 8
    assert bool((w[~mask.cuda()] == 0).all()) and bool((w[mask.cuda()] != 0).all())
