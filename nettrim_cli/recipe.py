"""The fine-tuning recipe of `nettrim finetune`, with its measured defaults (no torch here:
the CLI reads the defaults when it starts)."""

from __future__ import annotations

from dataclasses import dataclass

from nettrim_cli.errors import BadInput

# the default recipe, chosen by measurement (`make finetune-recipe`, docs/finetune-recipe.md)
DEFAULT_EPOCHS = 10
DEFAULT_LR = 1e-2
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class Recipe:
    """How `nettrim finetune` trains; the defaults are the recipe measured in docs/results.md
    ("The default fine-tune"): Adam at lr 1e-2 with a cosine decay to 0 over the epochs.

    schedule: "cosine" (torch.optim.lr_scheduler.CosineAnnealingLR over ``epochs``) or
        "constant".
    val_split: fraction of the samples held out (seeded) to validate on after every epoch;
        the weights of the best epoch are the result.
    patience: with a validation split, stop after this many epochs without a better
        validation accuracy (None: run every epoch).
    """

    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    batch_size: int = 128
    seed: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    val_split: float = 0.0
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise BadInput(f"unknown schedule {self.schedule!r}; use {' or '.join(SCHEDULES)}")
        if not 0.0 <= self.val_split < 1.0:
            raise BadInput(f"--val-split must be in [0, 1), got {self.val_split}")
        if self.patience is not None and (self.patience < 1 or self.val_split == 0.0):
            raise BadInput("--patience needs --val-split and must be >= 1")

    def train_config(self):
        """The ``training.TrainConfig`` of this recipe."""
        from nettrim_cli.training import TrainConfig

        cosine = self.schedule == "cosine" and self.epochs > 0
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           seed=self.seed, optimizer=self.optimizer,
                           weight_decay=self.weight_decay,
                           scheduler="CosineAnnealingLR" if cosine else None,
                           scheduler_kwargs={"T_max": self.epochs} if cosine else {})
