"""``--method magnitude-iterative``: iterative magnitude pruning with retraining, the way Han,
Pool, Tran and Dally (NIPS 2015) reach their best results (HPTD).

Round t = 1 .. ``--rounds``: prune each unit to its count of round t (``schedule.
MagnitudeSchedule``: a cubic ramp of Zhu and Gupta, or equal steps, from the dense counts to
the final ones from ``--sparsity`` or ``--match``) by keeping its largest surviving magnitudes
(``schedule.prune_step``: a pruned weight never returns), then retrain ``--epochs`` with the
masks fixed (``training.train`` with masks). With ``--allocation joint`` the rounds' counts are
of all pruned weights together and the magnitudes are compared across layers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.errors import BadInput
from nettrim_cli.methods.base import RunHooks
from nettrim_cli.methods.lc.schedule import MagnitudeSchedule, Ramp, prune_step
from nettrim_cli.methods.lc.trained import (
    EpochProgress,
    TrainedPruning,
    accuracy,
    masked_finetune,
)
from nettrim_cli.training import train


def _numpy(weights: list[nn.Parameter]) -> list[np.ndarray]:
    return [w.detach().cpu().double().numpy() for w in weights]


def next_masks(weights: list[np.ndarray], masks: list[np.ndarray], row: list[int],
               joint: bool) -> list[np.ndarray]:
    """The masks after one mask step: per layer its own count, or (joint) one count over
    the concatenated layers."""
    if not joint:
        return [prune_step(w, m, keep) for w, m, keep in zip(weights, masks, row, strict=True)]
    flat = prune_step(np.concatenate([w.ravel() for w in weights]),
                      np.concatenate([m.ravel() for m in masks]), row[0])
    ends = np.cumsum([w.size for w in weights])[:-1]
    return [part.reshape(w.shape) for part, w in zip(np.split(flat, ends), weights,
                                                      strict=True)]


class IterativeMagnitude(TrainedPruning):
    """Prune-and-retrain in rounds of rising sparsity (see the module docstring)."""

    name = "magnitude-iterative"
    specific = ("--rounds", "--ramp")
    program = "iterative magnitude pruning with retraining (HPTD)"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "allocation": "per-layer", "epochs": 2, "lr": 0.05, "lr_decay": 1.0,
        "optimizer": "sgd", "batch_size": 128, "seed": 0, "finetune_epochs": 0,
        "rounds": 10, "ramp": "cubic"}

    def __init__(self, **given: Any) -> None:
        super().__init__(**given)
        if self.sparsity is None and self.match_path is None:
            raise BadInput("--method magnitude-iterative needs --sparsity S or --match "
                           "REPORT.json (the weights to keep)")
        if self.o["rounds"] < 1:
            raise BadInput(f"--rounds must be >= 1, got {self.o['rounds']}")
        self.schedule = MagnitudeSchedule(self.o["rounds"], Ramp(self.o["ramp"]))
        self.table: list[list[int]] | None = None

    def method_settings(self) -> dict[str, Any]:
        return {**self.schedule.record(), "counts_per_round": self.table}

    def prepare(self, ckpt: Checkpoint) -> None:
        super().prepare(ckpt)
        sizes = [la.out_features * la.in_features for la in ckpt.prunable]
        if self.allocation == "joint":
            self.table = self.schedule.counts([sum(sizes)],
                                              [self.joint_budget(ckpt, self.targets)])
        else:
            final = [self.targets[la.name] for la in ckpt.prunable]
            self.table = self.schedule.counts(sizes, final)

    def train_and_prune(self, ckpt: Checkpoint, model: nn.Module, weights: list[nn.Parameter],
                        hooks: RunHooks) -> dict[str, Any]:
        names = [la.name for la in ckpt.prunable]
        masks = [np.ones(tuple(w.shape), dtype=bool) for w in weights]
        history: list[dict[str, Any]] = []
        resumed = self.load_state(model)
        start = 0
        if resumed is not None:
            start, arrays, meta = resumed
            masks = [arrays[f"mask_{i}"].astype(bool) for i in range(len(weights))]
            history = meta["history"]
        rounds = self.schedule.rounds
        for t in range(start, rounds):
            label = f"round {t + 1}/{rounds}"
            if hooks.on_layer is not None:
                hooks.on_layer(t, rounds, label)
            masks = next_masks(_numpy(weights), masks, self.table[t],
                               self.allocation == "joint")
            tensors = {f"{n}.weight": torch.from_numpy(m) for n, m in zip(names, masks,
                                                                          strict=True)}
            config = self.training.config(t)
            result = train(model, self.x, self.y, config, masks=tensors,
                           callbacks=[EpochProgress(hooks, label, config.epochs)])
            acc, loss = accuracy(model, self.x, self.y)
            kept = [int(m.sum()) for m in masks]
            history.append({"round": t + 1, "kept": sum(kept), "kept_per_layer": kept,
                            "objective": result.loss_per_epoch[-1], "loss": loss,
                            "train_accuracy": acc, "lr": config.lr,
                            "epochs": config.epochs})
            self.save_state(t + 1, model, {f"mask_{i}": m for i, m in enumerate(masks)},
                            {"history": history})
            if hooks.on_step is not None:
                total = sum(m.size for m in masks)
                hooks.on_step(f"{label}: kept {sum(kept)} of {total} weights "
                              f"({100 * (1 - sum(kept) / total):.2f}% pruned), loss "
                              f"{loss:.4f}, training accuracy {100 * acc:.2f}%")
        finetune = masked_finetune(self, model, names, hooks, rounds)
        return {"steps": history, "epochs": rounds * self.training.epochs
                + self.training.finetune_epochs, "finetune": finetune}
