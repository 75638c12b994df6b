"""One seeded, masked training loop, used by everything in nettrim that trains a network.

``train`` solves, approximately (a fixed number of epochs of minibatch Adam, or SGD with
momentum),

    min_w  (1/n) sum_i CE(f_w(x_i), y_i) + penalty(w)   s.t.  w_j = 0 wherever a mask is False

Callers: fine-tuning a pruned network (``nettrim finetune``: masks = the checkpoint's zeros, no
penalty), the Figure 1 demo (full batch, in order), the experiments' and benchmarks' networks
(plain Adam). Meant for the Learning-Compression L step (penalty(w) = mu/2 ||w - theta -
lambda/mu||^2, Carreira-Perpinan & Idelbayev 2018, the loop apart from the steps) and for
iterative magnitude pruning (retraining with the mask of each round fixed).

Seeded: ``torch.manual_seed(seed)`` (dropout and anything else drawing from torch's generator)
and ``numpy.random.default_rng(seed)`` (one permutation per epoch) at the start of every call,
so the same inputs give the same weights on the same machine and build. Masked: a masked
weight is set to zero before training, its gradient is multiplied by the mask after each
backward pass, and after each optimizer step the weight and the optimizer's state of its shape
(momentum buffers, Adam moments) are multiplied by it again, so neither momentum nor weight
decay moves a pruned weight away from exactly zero. No printing, no files: progress leaves
through callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler

from nettrim_cli.errors import BadInput

OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9

Penalty = Callable[[nn.Module], torch.Tensor]


def _dtype(model: nn.Module) -> torch.dtype:
    # as evaluate._dtype, not imported from there: this module stays free of h5py and files
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _scheduler_class(name: str) -> type | None:
    cls = getattr(lr_scheduler, name, None)
    if (name.startswith("_") or name == "LRScheduler" or not isinstance(cls, type)
            or not issubclass(cls, lr_scheduler.LRScheduler)):
        return None
    return cls


@dataclass(frozen=True)
class TrainConfig:
    """How to train; the defaults are plain Adam at lr 1e-3 in minibatches of 128.

    Attributes:
        epochs: passes over the data (>= 0).
        lr: learning rate (> 0).
        batch_size: samples per optimizer step (>= 1; the last batch may be smaller).
        seed: seed of torch's generator and of the shuffling, set at the start of ``train``.
        optimizer: "adam" or "sgd".
        weight_decay: L2 coefficient passed to the optimizer (>= 0).
        momentum: SGD's momentum (ignored by Adam).
        nesterov: SGD's Nesterov momentum (ignored by Adam).
        shuffle: a fresh permutation of the samples each epoch; False takes them in order.
        scheduler: a class name of ``torch.optim.lr_scheduler`` (e.g. "StepLR"), stepped once
            after every epoch (ReduceLROnPlateau with the epoch's mean loss), or None.
        scheduler_kwargs: keyword arguments of that class, the optimizer aside.
    """

    epochs: int
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = SGD_MOMENTUM
    nesterov: bool = False
    shuffle: bool = True
    scheduler: str | None = None
    scheduler_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise BadInput("epochs must be >= 0, batch size >= 1, lr > 0 and weight decay >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise BadInput(f"unknown optimizer {self.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
        if self.scheduler is not None and _scheduler_class(self.scheduler) is None:
            raise BadInput(f"unknown scheduler {self.scheduler!r}; use a class name of "
                           "torch.optim.lr_scheduler such as StepLR")


@dataclass
class TrainResult:
    """Figures of one ``train`` call.

    Attributes:
        loss_per_epoch: the objective minimised (cross-entropy plus penalty), averaged over
            the epoch's samples as the weights moved.
        lr_per_epoch: the learning rate of the first parameter group during each epoch.
        steps: optimizer steps taken.
        seconds: wall time of the epochs.
    """

    loss_per_epoch: list[float] = field(default_factory=list)
    lr_per_epoch: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


class Callback:
    """Hooks of the training loop; override the ones you need (here they do nothing)."""

    def on_batch(self, epoch: int, done: int, n: int, loss: float) -> None:
        """After each optimizer step: ``done`` of ``n`` samples of ``epoch`` (from 0) seen,
        ``loss`` the running mean of the objective over them."""

    def on_epoch(self, epoch: int, result: TrainResult) -> None:
        """After each epoch and its scheduler step, with the figures so far."""

    def should_stop(self) -> bool:
        """Asked after each epoch's ``on_epoch``: True ends the training there."""
        return False


class OnBatch(Callback):
    """A plain function ``fn(epoch, done, n, loss)`` as an ``on_batch`` callback."""

    def __init__(self, fn: Callable[[int, int, int, float], None]) -> None:
        self.fn = fn

    def on_batch(self, epoch: int, done: int, n: int, loss: float) -> None:
        self.fn(epoch, done, n, loss)


def make_optimizer(config: TrainConfig, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over ``params``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov)


def make_scheduler(config: TrainConfig, opt: torch.optim.Optimizer
                   ) -> lr_scheduler.LRScheduler | None:
    """The learning-rate scheduler ``config`` names, on ``opt``, or None."""
    if config.scheduler is None:
        return None
    try:
        return _scheduler_class(config.scheduler)(opt, **config.scheduler_kwargs)
    except (TypeError, ValueError) as e:
        raise BadInput(f"scheduler {config.scheduler}: {e}") from e


def _masked_parameters(model: nn.Module, masks: Mapping[str, torch.Tensor]
                       ) -> list[tuple[nn.Parameter, torch.Tensor]]:
    pairs = []
    for name, mask in masks.items():
        try:
            p = model.get_parameter(name)
        except AttributeError as e:
            raise BadInput(f"mask for {name!r}: the model has no such parameter") from e
        if mask.shape != p.shape:
            raise BadInput(f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter "
                           f"{tuple(p.shape)}")
        pairs.append((p, mask.to(device=p.device, dtype=torch.bool)))
    return pairs


class _Step:
    """One optimizer step on a minibatch, with the masks and the penalty applied."""

    def __init__(self, model: nn.Module, config: TrainConfig,
                 masked: list[tuple[nn.Parameter, torch.Tensor]], penalty: Penalty | None):
        self.model, self.masked, self.penalty = model, masked, penalty
        self.opt = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(xb), yb)
        if self.penalty is not None:
            loss = loss + self.penalty(self.model)
        loss.backward()
        with torch.no_grad():
            for p, mask in self.masked:
                if p.grad is not None:
                    p.grad.mul_(mask)
        self.opt.step()
        self.zero_masked()
        return loss.detach().item()

    @torch.no_grad()
    def zero_masked(self) -> None:
        """Masked weights, and the optimizer's state of their shape, back to exactly zero."""
        for p, mask in self.masked:
            p.mul_(mask)
            for v in self.opt.state.get(p, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    v.mul_(mask)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None, device: torch.device
             ) -> Iterator[tuple[int, int, torch.Tensor | slice]]:
    """(first, end, index) of each minibatch of one epoch: positions first..end-1 of a fresh
    permutation drawn from ``rng``, or of the samples in order when ``rng`` is None."""
    order = torch.as_tensor(rng.permutation(n)).to(device) if rng is not None else None
    for a in range(0, n, batch_size):
        idx = order[a:a + batch_size] if order is not None else slice(a, a + batch_size)
        yield a, min(a + batch_size, n), idx


def _step_scheduler(scheduler: lr_scheduler.LRScheduler | None, epoch_loss: float) -> None:
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(epoch_loss)
    elif scheduler is not None:
        scheduler.step()


def train(model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor,
          config: TrainConfig, masks: Mapping[str, torch.Tensor] | None = None,
          penalty: Penalty | None = None, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train ``model`` in place on (x, y): min mean CE + penalty(model), masked weights at 0.

    Args:
        model: any module mapping a batch of ``x`` to class logits; every parameter with
            ``requires_grad`` is trained. Left in eval mode, with its gradients cleared.
        x: inputs, moved to the model's device and the dtype of its first floating parameter.
        y: class labels (int64).
        config: optimizer, epochs, batching, seed and learning-rate schedule.
        masks: {parameter name (e.g. "2.weight"): bool tensor of its shape, False = pruned};
            those weights are zero from the start and stay exactly zero.
        penalty: ``penalty(model)`` -> scalar tensor added to each batch's loss.
        callbacks: their ``on_batch`` after every step, ``on_epoch`` after every epoch.

    Returns:
        The figures: loss and learning rate per epoch, steps taken, seconds.

    Example (an L step of Learning-Compression: targets = theta + lambda/mu per weight):
        weights = [model.get_parameter(name) for name in ("0.weight", "2.weight")]
        config = TrainConfig(epochs=2, lr=0.01, optimizer="sgd", nesterov=True)
        train(model, x, y, config, penalty=quadratic_penalty(weights, targets, mu))
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    xt = torch.as_tensor(x).to(device=device, dtype=_dtype(model))
    yt = torch.as_tensor(y).to(device)
    n = len(xt)
    if n == 0 or len(yt) != n:
        raise BadInput(f"{n} inputs and {len(yt)} labels: need as many labels as inputs, >= 1")
    step = _Step(model, config, _masked_parameters(model, masks or {}), penalty)
    step.zero_masked()
    scheduler = make_scheduler(config, step.opt)
    result = TrainResult()
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        result.lr_per_epoch.append(float(step.opt.param_groups[0]["lr"]))
        total = 0.0
        for first, done, idx in _batches(n, config.batch_size,
                                         rng if config.shuffle else None, device):
            total += step(xt[idx], yt[idx]) * (done - first)
            result.steps += 1
            for cb in callbacks:
                cb.on_batch(epoch, done, n, total / done)
        result.loss_per_epoch.append(total / n)
        _step_scheduler(scheduler, total / n)
        result.seconds = time.perf_counter() - t0
        for cb in callbacks:
            cb.on_epoch(epoch, result)
        if any(cb.should_stop() for cb in callbacks):
            break
    result.seconds = time.perf_counter() - t0
    step.opt.zero_grad(set_to_none=True)
    model.eval()
    return result


def quadratic_penalty(params: Sequence[torch.Tensor], targets: Sequence[np.ndarray | torch.Tensor],
                      mu: float) -> Penalty:
    """The LC L step's term (mu/2) sum_k ||w_k - t_k||^2 as a ``penalty`` for ``train``.

    ``params`` are the model's parameters w_k, ``targets`` arrays t_k of their shapes (for the
    augmented Lagrangian t = theta + lambda/mu), copied here once in the parameters' dtype.
    """
    if len(params) != len(targets):
        raise BadInput(f"{len(params)} parameters and {len(targets)} targets")
    fixed = [torch.as_tensor(t).to(device=p.device, dtype=p.dtype).detach().clone()
             for p, t in zip(params, targets, strict=True)]
    for p, t in zip(params, fixed, strict=True):
        if t.shape != p.shape:
            raise BadInput(f"target of shape {tuple(t.shape)} for a parameter {tuple(p.shape)}")

    def penalty(_model: nn.Module) -> torch.Tensor:
        return mu / 2 * sum(((p - t) ** 2).sum() for p, t in zip(params, fixed, strict=True))

    return penalty
