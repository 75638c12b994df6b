"""Fine-tuning of a pruned network with its sparsity mask fixed.

Every parameter of the model is trained by the loop of ``nettrim_cli.training``, with the exact
zeros of each prunable weight (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``) as its mask: those
weights stay exactly zero (their gradients, the optimizer's state and the weights themselves are
masked at every step). No printing, no files: progress goes out through a callback.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nettrim_cli.errors import BadInput
from nettrim_cli.evaluate import evaluate
from nettrim_cli.layers import prunable_types
from nettrim_cli.recipe import Recipe
from nettrim_cli.training import Callback, OnBatch, train


def weight_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: weight != 0} for every prunable layer (Linear, conv) whose weight holds
    an exact zero."""
    return {name: (mod.weight.detach() != 0)
            for name, mod in model.named_modules()
            if isinstance(mod, prunable_types()) and bool((mod.weight.detach() == 0).any())}


def linear_nonzeros(model: nn.Module) -> int:
    """Nonzero weights of the prunable layers (Linear and conv)."""
    return sum(int(torch.count_nonzero(mod.weight.detach())) for mod in model.modules()
               if isinstance(mod, prunable_types()))


class BestOnValidation(Callback):
    """Validation accuracy after every epoch; keeps the best epoch's weights (restored at the
    end) and asks the loop to stop after ``patience`` epochs without improvement."""

    def __init__(self, model: nn.Module, x: np.ndarray, y: np.ndarray,
                 patience: int | None) -> None:
        self.model, self.x, self.y, self.patience = model, x, y, patience
        self.accuracy: list[float] = []
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_epoch(self, epoch: int, result) -> None:
        acc = evaluate(self.model, self.x, self.y)[0]["accuracy"]
        self.accuracy.append(acc)
        if self.best_state is None or acc > self.accuracy[self.best_epoch]:
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(self.model.state_dict())

    def should_stop(self) -> bool:
        return (self.patience is not None
                and len(self.accuracy) - 1 - self.best_epoch >= self.patience)

    def restore(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


def split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """(x_train, y_train, x_val, y_val): a seeded random ``fraction`` held out."""
    n_val = int(round(fraction * len(x)))
    if fraction > 0 and not 1 <= n_val < len(x):
        raise BadInput(f"--val-split {fraction} of {len(x)} samples leaves no validation or "
                       "no training sample")
    order = np.random.default_rng(seed + 1).permutation(len(x))
    val, tr = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[tr], y[tr], x[val], y[val]


class EpochReport(Callback):
    """``fn(epoch, loss, validation_accuracy or None)`` after every epoch (after the
    validation callback ``watch`` measured it)."""

    def __init__(self, fn: Callable[[int, float, float | None], None],
                 watch: BestOnValidation | None) -> None:
        self.fn, self.watch = fn, watch

    def on_epoch(self, epoch: int, result) -> None:
        val = self.watch.accuracy[-1] if self.watch is not None else None
        self.fn(epoch, result.loss_per_epoch[-1], val)


def finetune(model: nn.Module, x: np.ndarray, y: np.ndarray, recipe: Recipe | None = None,
             progress: Callable[[int, int, int, float], None] | None = None,
             on_epoch: Callable[[int, float, float | None], None] | None = None) -> dict:
    """Train ``model`` in place on (x, y) with cross-entropy, its pruned weights frozen at 0.

    Seeded: torch's generator (dropout), the shuffling and the validation split are fixed, so
    two runs on the same machine give the same weights. ``progress(epoch, done, total,
    running_loss)`` is called after every batch, ``on_epoch(epoch, loss, validation accuracy or
    None)`` after every epoch. Returns the figures of the summary (see the
    README): masked layers, nonzeros before/after, loss per epoch, training accuracy and loss
    before and after, the cost (epochs x samples) and, with a validation split, the
    validation accuracy per epoch and the epoch kept.
    """
    recipe = recipe or Recipe()
    masks = weight_masks(model)
    nnz_before = linear_nonzeros(model)
    xt, yt, xv, yv = split(x, y, recipe.val_split, recipe.seed)
    before = evaluate(model, xt, yt)[0]
    callbacks: list[Callback] = [OnBatch(progress)] if progress is not None else []
    watch = BestOnValidation(model, xv, yv, recipe.patience) if len(xv) else None
    if watch is not None:
        callbacks.append(watch)
    if on_epoch is not None:
        callbacks.append(EpochReport(on_epoch, watch))
    figures = train(model, xt, yt, recipe.train_config(),
                    masks={f"{name}.weight": m for name, m in masks.items()},
                    callbacks=callbacks)
    if watch is not None:
        watch.restore()
    after = evaluate(model, xt, yt)[0]
    mods = {name: model.get_submodule(name) for name in masks}
    zeros_kept = all(bool((mods[name].weight.detach()[~m] == 0).all())
                     for name, m in masks.items())
    epochs_run = len(figures.loss_per_epoch)
    out = {
        "masked_layers": [{"name": name, "params": int(m.numel()),
                           "nonzeros": int(m.sum())} for name, m in masks.items()],
        "nonzeros_before": nnz_before,
        "nonzeros_after": linear_nonzeros(model),
        "zeros_kept": zeros_kept,
        "loss_per_epoch": figures.loss_per_epoch,
        "lr_per_epoch": figures.lr_per_epoch,
        "train_accuracy_before": before["accuracy"],
        "train_loss_before": before["loss"],
        "train_accuracy": after["accuracy"],
        "train_loss": after["loss"],
        "cost": {"epochs": epochs_run, "samples": int(len(xt)),
                 "sample_passes": epochs_run * int(len(xt))},
        "seconds": figures.seconds,
    }
    if watch is not None:
        out["validation"] = {"samples": int(len(xv)), "accuracy_per_epoch": watch.accuracy,
                             "best_epoch": watch.best_epoch + 1,
                             "stopped_early": epochs_run < recipe.epochs}
    return out
