"""Fine-tuning of a pruned network with its sparsity mask fixed.

Every parameter of the model is trained by the loop of ``nettrim_cli.training``, with the exact
zeros of each prunable weight (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``) as its mask: those
weights stay exactly zero (their gradients, the optimizer's state and the weights themselves are
masked at every step). No printing, no files: progress goes out through a callback.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nettrim_cli.evaluate import evaluate
from nettrim_cli.layers import prunable_types
from nettrim_cli.training import OnBatch, TrainConfig, train


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


def finetune(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 1e-3,
             batch_size: int = 128, seed: int = 0, optimizer: str = "adam",
             weight_decay: float = 0.0,
             progress: Callable[[int, int, int, float], None] | None = None) -> dict:
    """Train ``model`` in place on (x, y) with cross-entropy, its pruned weights frozen at 0.

    Seeded: torch's generator (dropout) and the shuffling (numpy ``default_rng(seed)``) are
    fixed, so two runs on the same machine give the same weights. ``progress(epoch, done,
    total, running_loss)`` is called after every batch. Returns the figures of the summary
    (see the README): masked layers, nonzeros before/after, loss per epoch, training accuracy
    and loss before and after.
    """
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                         optimizer=optimizer, weight_decay=weight_decay)
    masks = weight_masks(model)
    nnz_before = linear_nonzeros(model)
    before = evaluate(model, x, y)[0]
    figures = train(model, x, y, config, masks={f"{name}.weight": m for name, m in masks.items()},
                    callbacks=[OnBatch(progress)] if progress is not None else ())
    after = evaluate(model, x, y)[0]
    mods = {name: model.get_submodule(name) for name in masks}
    zeros_kept = all(bool((mods[name].weight.detach()[~m] == 0).all())
                     for name, m in masks.items())
    return {
        "masked_layers": [{"name": name, "params": int(m.numel()),
                           "nonzeros": int(m.sum())} for name, m in masks.items()],
        "nonzeros_before": nnz_before,
        "nonzeros_after": linear_nonzeros(model),
        "zeros_kept": zeros_kept,
        "loss_per_epoch": figures.loss_per_epoch,
        "train_accuracy_before": before["accuracy"],
        "train_loss_before": before["loss"],
        "train_accuracy": after["accuracy"],
        "train_loss": after["loss"],
        "seconds": figures.seconds,
    }
