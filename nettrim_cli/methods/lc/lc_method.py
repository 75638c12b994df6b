"""``--method lc``: Learning-Compression pruning (Carreira-Perpinan and Idelbayev, CVPR 2018)
through the shared training loop.

The L step of LC step k is ``--epochs`` of ``training.train`` on the cross-entropy plus
``quadratic_penalty(w, theta + lambda/mu_k, mu_k)`` (the term (mu/2) ||w - theta - lambda/mu||^2
of the augmented Lagrangian); the C step and the multiplier update are
``algorithm.LearningCompression``'s, with the compression of ``compression.CStep``:

- ``l0-constraint`` (default): keep kappa weights, kappa from ``--sparsity`` or ``--match``,
  per layer or one joint budget over all pruned layers (``--allocation joint``);
- ``l1-constraint``: ||theta||_1 <= kappa, kappa = ``--radius`` times the dense weights'
  l1 norm (per layer, or of all of them for a joint budget);
- ``l0-penalty`` / ``l1-penalty``: alpha ||theta||_0 or alpha ||theta||_1, alpha = ``--alpha``.

The weights end as theta, which is exactly sparse; ``--finetune-epochs`` then trains with
theta's zeros fixed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.errors import BadInput
from nettrim_cli.methods.base import RunHooks, original_weights
from nettrim_cli.methods.lc.algorithm import LCState, LearningCompression, MuSchedule, Variant
from nettrim_cli.methods.lc.compression import CStep, Form
from nettrim_cli.methods.lc.trained import (
    EpochProgress,
    TrainedPruning,
    accuracy,
    masked_finetune,
)
from nettrim_cli.training import quadratic_penalty, train


def with_weights(weights: list[nn.Parameter], arrays: list[np.ndarray], fn):
    """``fn()`` with ``arrays`` in place of ``weights``, which are then restored exactly."""
    saved = [w.detach().clone() for w in weights]
    try:
        with torch.no_grad():
            for w, a in zip(weights, arrays, strict=True):
                w.copy_(torch.as_tensor(a, dtype=w.dtype))
        return fn()
    finally:
        with torch.no_grad():
            for w, s in zip(weights, saved, strict=True):
                w.copy_(s)


MU0, MU_GROWTH = 1e-3, 1.3


class LC(TrainedPruning):
    """Learning-Compression pruning (see the module docstring)."""

    name = "lc"
    specific = ("--form", "--alpha", "--radius", "--mu0", "--mu-growth", "--steps",
                "--variant")
    program = "LC: L step (training loss + mu/2 ||w - theta - lambda/mu||^2), C step"
    # the settings of `make experiments-lc` on Fashion-MNIST (LeNet300), the mu schedule the
    # one of its sweep with the lowest training loss of theta: see the README
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "allocation": "per-layer", "epochs": 1, "lr": 0.05, "lr_decay": 0.98,
        "optimizer": "sgd", "batch_size": 128, "seed": 0, "finetune_epochs": 0,
        "form": "l0-constraint", "mu0": MU0, "mu_growth": MU_GROWTH, "steps": 20,
        "variant": "augmented-lagrangian"}

    def __init__(self, **given: Any) -> None:
        super().__init__(**given)
        o = self.o
        self.form = Form(o["form"])
        self.alpha, self.radius = o.get("alpha"), o.get("radius")
        budget = self.sparsity is not None or self.match_path is not None
        if self.form is Form.L0_CONSTRAINT and not budget:
            raise BadInput("--method lc --form l0-constraint needs --sparsity S or --match "
                           "REPORT.json (the weights to keep)")
        if self.form is not Form.L0_CONSTRAINT and budget:
            raise BadInput(f"--form {self.form}: --sparsity and --match set the l0 budget; "
                           "use --radius (l1-constraint) or --alpha (penalties)")
        if self.form is Form.L1_CONSTRAINT and not (self.radius is not None
                                                    and 0 < self.radius < 1):
            raise BadInput("--form l1-constraint needs --radius R in (0, 1): the l1 budget "
                           "as a fraction of the dense weights' l1 norm")
        if not self.form.is_constraint and not (self.alpha is not None and self.alpha > 0):
            raise BadInput(f"--form {self.form} needs --alpha A > 0 (the penalty's weight)")
        if self.form is not Form.L1_CONSTRAINT and self.radius is not None:
            raise BadInput("--radius is for --form l1-constraint")
        if self.form.is_constraint and self.alpha is not None:
            raise BadInput("--alpha is for --form l0-penalty and l1-penalty")
        try:
            self.schedule = MuSchedule(mu0=o["mu0"], a=o["mu_growth"], steps=o["steps"])
        except ValueError as e:
            raise BadInput(f"--mu0 must be > 0, --mu-growth >= 1 and --steps >= 1 ({e})") from e
        if self.schedule.steps < 1:
            raise BadInput("--steps must be >= 1")
        self.variant = Variant(o["variant"])
        self.c_step: CStep | None = None

    def method_settings(self) -> dict[str, Any]:
        return {"form": str(self.form), "alpha": self.alpha, "radius": self.radius,
                "mu0": self.schedule.mu0, "mu_growth": self.schedule.a,
                "steps": self.schedule.steps, "variant": str(self.variant),
                "c_step": self.c_step.record() if self.c_step else None}

    def prepare(self, ckpt: Checkpoint) -> None:
        """kappa (per layer or joint) from the budget, or the radius times the l1 norm."""
        super().prepare(ckpt)
        joint = self.allocation == "joint"
        if self.form is Form.L0_CONSTRAINT:
            counts = [self.targets[la.name] for la in ckpt.prunable]
            value = self.joint_budget(ckpt, self.targets) if joint else tuple(counts)
        elif self.form is Form.L1_CONSTRAINT:
            norms = [float(np.abs(original_weights(ckpt, la)[0]).sum())
                     for la in ckpt.prunable]
            value = self.radius * sum(norms) if joint else tuple(self.radius * n
                                                                 for n in norms)
        else:
            value = float(self.alpha)
        self.c_step = CStep(self.form, value)

    def train_and_prune(self, ckpt: Checkpoint, model: nn.Module, weights: list[nn.Parameter],
                        hooks: RunHooks) -> dict[str, Any]:
        lc = LearningCompression(self.c_step, self.schedule, self.variant)
        K = self.schedule.steps
        resumed = self.load_state(model)
        state = None
        if resumed is not None:
            _, arrays, meta = resumed
            state = LCState.from_parts(arrays, meta["lc"])
        at = {"k": state.step if state is not None else 0}

        def l_step(mu: float, targets: list[np.ndarray]) -> dict[str, Any]:
            k = at["k"]
            label = f"LC step {k + 1}/{K}"
            if hooks.on_layer is not None:
                hooks.on_layer(k, K, label)
            config = self.training.config(k)
            result = train(model, self.x, self.y, config,
                           penalty=quadratic_penalty(weights, targets, mu),
                           callbacks=[EpochProgress(hooks, label, config.epochs)])
            acc, loss = accuracy(model, self.x, self.y)
            return {"objective": result.loss_per_epoch[-1], "loss": loss,
                    "train_accuracy": acc, "lr": config.lr, "epochs": config.epochs}

        def on_step(s: LCState) -> None:
            h = s.history[-1]
            h["theta_train_accuracy"], h["theta_loss"] = with_weights(
                weights, s.theta, lambda: accuracy(model, self.x, self.y))
            self.save_state(s.step, model, s.arrays(), {"lc": s.record()})
            at["k"] = s.step
            if hooks.on_step is not None:
                hooks.on_step(step_line(s, K))

        final = lc.run(weights, l_step, resume=state, on_step=on_step)
        with torch.no_grad():
            for w, t in zip(weights, final.theta, strict=True):
                w.copy_(torch.as_tensor(t, dtype=w.dtype))
        names = [la.name for la in ckpt.prunable]
        finetune = masked_finetune(self, model, names, hooks, K)
        return {"schedule": {"mu0": self.schedule.mu0, "a": self.schedule.a, "steps": K},
                "steps": final.history,
                "epochs": K * self.training.epochs + self.training.finetune_epochs,
                "finetune": finetune,
                "per_layer": [{"kappa": self._kappa(i)} for i in range(len(names))]}

    def _kappa(self, i: int) -> float | None:
        value = self.c_step.value
        if not self.form.is_constraint:
            return None
        return value if self.c_step.joint else value[i]


def step_line(s: LCState, steps: int) -> str:
    """One line per LC step: mu, loss, accuracies, theta's sparsity, ||w - theta||."""
    h = s.history[-1]
    total = sum(t.size for t in s.theta)
    head = ("direct compression (mu 0)" if s.step == 0 else
            f"LC step {s.step}/{steps}: mu {h['mu']:.3g}, loss {h['loss']:.4f}, training "
            f"accuracy {100 * h['train_accuracy']:.2f}%,")
    return (f"{head} theta: {100 * (1 - h['nonzeros'] / total):.2f}% zero, training "
            f"accuracy {100 * h['theta_train_accuracy']:.2f}%; ||w - theta|| "
            f"{h['distance']:.4g}")
