"""Fine-tuning of a pruned network with its sparsity mask fixed.

Every parameter of the model is trained, except that in each ``nn.Linear`` whose weight holds
exact zeros those zeros are frozen at zero: after each backward pass the weight's gradient is
multiplied by the mask, after each optimizer step the weight is multiplied by it again, and
the optimizer's per-parameter state (momentum buffers, Adam moments) is masked too, so
neither momentum nor weight decay can move a pruned weight away from zero. No printing, no
files: progress goes out through a callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nettrim_cli.errors import BadInput
from nettrim_cli.evaluate import _dtype, evaluate

OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9


def weight_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: weight != 0} for every Linear layer whose weight holds an exact zero."""
    return {name: (mod.weight.detach() != 0)
            for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and bool((mod.weight.detach() == 0).any())}


def linear_nonzeros(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(mod.weight.detach())) for mod in model.modules()
               if isinstance(mod, nn.Linear))


def _make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay)
    raise BadInput(f"unknown optimizer {name!r}; use {' or '.join(OPTIMIZERS)}")


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
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise BadInput("--epochs must be >= 0, --batch-size >= 1 and --lr > 0")
    masks = weight_masks(model)
    nnz_before = linear_nonzeros(model)
    before = evaluate(model, x, y)[0]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dtype = _dtype(model)
    xt = torch.as_tensor(x).to(dtype)
    yt = torch.as_tensor(y)
    mods = {name: model.get_submodule(name) for name in masks}
    opt = _make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr,
                          weight_decay)
    n = len(x)
    per_epoch: list[float] = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.as_tensor(rng.permutation(n))
        total = 0.0
        for a in range(0, n, batch_size):
            idx = order[a:a + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            with torch.no_grad():
                for name, mod in mods.items():
                    if mod.weight.grad is not None:
                        mod.weight.grad.mul_(masks[name])
            opt.step()
            with torch.no_grad():
                for name, mod in mods.items():
                    mod.weight.mul_(masks[name])
                    for v in opt.state.get(mod.weight, {}).values():
                        if isinstance(v, torch.Tensor) and v.shape == mod.weight.shape:
                            v.mul_(masks[name])
            total += loss.detach().item() * len(idx)
            if progress is not None:
                progress(epoch, min(a + batch_size, n), n, total / min(a + batch_size, n))
        per_epoch.append(total / n)
    seconds = time.perf_counter() - t0
    opt.zero_grad(set_to_none=True)
    model.eval()
    after = evaluate(model, x, y)[0]
    zeros_kept = all(bool((mods[name].weight.detach()[~m] == 0).all())
                     for name, m in masks.items())
    return {
        "masked_layers": [{"name": name, "params": int(m.numel()),
                           "nonzeros": int(m.sum())} for name, m in masks.items()],
        "nonzeros_before": nnz_before,
        "nonzeros_after": linear_nonzeros(model),
        "zeros_kept": zeros_kept,
        "loss_per_epoch": per_epoch,
        "train_accuracy_before": before["accuracy"],
        "train_loss_before": before["loss"],
        "train_accuracy": after["accuracy"],
        "train_loss": after["loss"],
        "seconds": seconds,
    }
