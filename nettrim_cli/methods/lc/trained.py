"""What the training-based pruning methods share (``--method lc``, ``--method
magnitude-iterative``): labelled training data, the kept-weight budget (``--sparsity`` or
``--match``, per layer or joint), the L-step / retraining settings of the shared loop
(``nettrim_cli.training.train``), the work folder that makes them resumable per step, and the
result in the common report schema.

Both methods train a copy of the network (every parameter with ``requires_grad``: weights,
biases, kept layers) on the cross-entropy of the training data and prune the weights of the
prunable units (``ckpt.prunable``, whatever the layer abstraction offers). They never need the
activation dump: when one is given its inputs are the calibration set the report's
discrepancies are measured on, otherwise the first ``CALIBRATION_MAX`` training samples are.

Resumable: after every step (an LC step, a round) the trained network and the method's state
are written to the work folder (``nettrim_cli.workdir.WorkDir``, the Net-Trim folder's format
and manifest checks). Every step's training is seeded by (seed, step) only and starts a fresh
optimizer, so a resumed run takes the same steps from the same state and writes the same
checkpoint, bit for bit, as an uninterrupted one on the same machine and build.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from nettrim_cli import __version__
from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.errors import BadInput
from nettrim_cli.methods.base import (
    LayerResult,
    MethodResult,
    ResumableMethod,
    RunHooks,
    original_weights,
)
from nettrim_cli.training import Callback, TrainConfig
from nettrim_cli.workdir import WorkDir, default_workdir

CALIBRATION_MAX = 10_000
STATE = "state"  # the work folder's record of the last finished step
ALLOCATIONS = ("per-layer", "joint")


@dataclass(frozen=True)
class TrainingSettings:
    """How each step trains: ``epochs`` passes of ``optimizer`` (SGD: Nesterov momentum 0.9)
    at lr * lr_decay^k in step k (k from 0), minibatches of ``batch_size``, seeded by seed + k,
    with an optional torch.optim.lr_scheduler class stepped after every epoch of a step; then
    ``finetune_epochs`` of masked fine-tuning after the last step."""

    epochs: int
    lr: float
    lr_decay: float
    optimizer: str
    batch_size: int
    seed: int
    scheduler: str | None = None
    scheduler_args: dict[str, Any] = field(default_factory=dict)
    finetune_epochs: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.finetune_epochs < 0:
            raise BadInput("--epochs must be >= 1 and --finetune-epochs >= 0")
        if not 0 < self.lr_decay <= 1:
            raise BadInput(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        self.config(0)  # the optimizer, lr, batch size and scheduler are checked here

    def config(self, k: int, epochs: int | None = None) -> TrainConfig:
        """The training loop's settings for step ``k``."""
        return TrainConfig(epochs=self.epochs if epochs is None else epochs,
                           lr=self.lr * self.lr_decay ** k, batch_size=self.batch_size,
                           seed=self.seed + k, optimizer=self.optimizer,
                           nesterov=self.optimizer == "sgd", scheduler=self.scheduler,
                           scheduler_kwargs=dict(self.scheduler_args))


def parse_scheduler_args(text: str | None) -> dict[str, Any]:
    """``--scheduler-args '{"step_size": 1, "gamma": 0.5}'`` as a dict."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"--scheduler-args is not JSON ({e})") from e
    if not isinstance(value, dict):
        raise BadInput("--scheduler-args must be a JSON object of the scheduler's keyword "
                       "arguments, e.g. '{\"step_size\": 1, \"gamma\": 0.5}'")
    return value


class EpochProgress(Callback):
    """The loop's batches as ``on_columns(stage, done, n)``: stage names step and epoch."""

    def __init__(self, hooks: RunHooks, label: str, epochs: int) -> None:
        self.hooks, self.label, self.epochs = hooks, label, epochs

    def on_batch(self, epoch: int, done: int, n: int, loss: float) -> None:
        if self.hooks.on_columns is not None:
            self.hooks.on_columns(f"{self.label} epoch {epoch + 1}/{self.epochs} loss "
                                  f"{loss:.4f}", done, n)


class TrainedPruning(ResumableMethod):
    """The shared part of the training-based methods (see the module docstring).

    Subclasses set ``name``, ``DEFAULTS`` (their settings' defaults, by parameter) and
    ``specific`` (their own flags), and implement ``method_settings`` and ``train_and_prune``.
    """

    needs_acts: ClassVar[bool] = False
    common: ClassVar[tuple[str, ...]] = (
        "--data", "--sparsity", "--match", "--allocation", "--epochs", "--lr", "--lr-decay",
        "--optimizer", "--batch-size", "--seed", "--scheduler", "--scheduler-args",
        "--finetune-epochs", "--workdir", "--resume")
    specific: ClassVar[tuple[str, ...]] = ()
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    hint = "see `nettrim prune --help` and the README's section on training-based pruning"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.options = cls.common + cls.specific

    def __init__(self, **given: Any) -> None:
        o = {**self.DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
        self.o = o
        if o.get("data_path") is None:
            raise BadInput(f"--method {self.name} needs --data TRAIN (labelled training data: "
                           ".h5 with /inputs and /labels, or .npz with inputs and labels)")
        self.data_path = o["data_path"]
        self.match_path, self.sparsity = o.get("match_path"), o.get("sparsity")
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise BadInput(f"--sparsity must be a fraction in (0, 1), got {self.sparsity}")
        if self.match_path is not None and self.sparsity is not None:
            raise BadInput(f"--method {self.name} takes one of --match and --sparsity, not both")
        self.allocation = o["allocation"]
        if self.allocation not in ("per-layer", "joint"):
            raise BadInput(f"--allocation {self.allocation}: --method {self.name} takes "
                           "per-layer or joint (uniform and discrepancy are Net-Trim's)")
        self.training = TrainingSettings(
            epochs=o["epochs"], lr=o["lr"], lr_decay=o["lr_decay"], optimizer=o["optimizer"],
            batch_size=o["batch_size"], seed=o["seed"], scheduler=o.get("scheduler"),
            scheduler_args=parse_scheduler_args(o.get("scheduler_args")),
            finetune_epochs=o["finetune_epochs"])
        self.workdir_path, self.resume = o.get("workdir"), bool(o.get("resume"))
        self.work: WorkDir | None = None
        self.x = self.y = None
        self.matched: dict | None = None
        self.targets: dict[str, int] | None = None

    def input_files(self) -> dict[str, str]:
        files = {"data": self.data_path}
        if self.match_path:
            files["match"] = self.match_path
        return files

    def load(self) -> None:
        from nettrim_cli.evaluate import load_labelled
        from nettrim_cli.report import read_report_file

        self.x, self.y = load_labelled(self.data_path)
        self.matched = read_report_file(self.match_path) if self.match_path else None

    def sample(self, ckpt: Checkpoint, model_path: str) -> np.ndarray:
        """A few training inputs to trace the network with, once the data are known to fit
        it (input shape, (batch, classes) output, labels within the classes)."""
        from nettrim_cli.evaluate import check_fits

        check_fits(ckpt.model, self.x, self.y, self.data_path, model_path)
        return self.x[: min(8, len(self.x))]

    # -- budget ---------------------------------------------------------------------------

    def kept_counts(self, ckpt: Checkpoint) -> dict[str, int] | None:
        """Weights each prunable unit keeps at the end: Net-Trim's (``--match``) or a
        uniform ``--sparsity``; None when neither is given."""
        from nettrim_cli.methods.oneshot import counts_for_sparsity, counts_from_report

        if self.matched is not None:
            return counts_from_report(self.matched, ckpt.prunable, self.match_path)
        if self.sparsity is not None:
            return counts_for_sparsity(ckpt.prunable, self.sparsity)
        return None

    def joint_budget(self, ckpt: Checkpoint, counts: dict[str, int]) -> int:
        """The joint budget: Net-Trim's total (``--match``) or round((1 - s) * all weights)."""
        from nettrim_cli.methods.oneshot import count_for_sparsity

        if self.sparsity is None:
            return sum(counts.values())
        return count_for_sparsity(sum(la.out_features * la.in_features
                                      for la in ckpt.prunable), self.sparsity)

    # -- work folder ----------------------------------------------------------------------

    def settings_record(self) -> dict[str, Any]:
        """Every setting that changes the pruned checkpoint (the manifest's and report's)."""
        return {"method": self.name, "allocation": self.allocation, "sparsity": self.sparsity,
                "match": self.match_path, "targets": self.targets,
                "training": asdict(self.training), **self.method_settings()}

    def start(self, ckpt: Checkpoint, acts_sha: str | None, output: str) -> None:
        from nettrim_cli.atomic import sha256_file

        self.prepare(ckpt)
        path = self.workdir_path or default_workdir(output)
        if path is None:
            if self.resume:
                raise BadInput("--resume needs --workdir when the output is stdout")
            return
        manifest = {"model_sha256": ckpt.sha256, "data_sha256": sha256_file(self.data_path),
                    "acts_sha256": acts_sha, "settings": self.settings_record(),
                    "nettrim": __version__}
        self.work = WorkDir(path, manifest, self.resume)

    def prepare(self, ckpt: Checkpoint) -> None:
        """Work out the targets from the traced layers (before the manifest is written)."""
        counts = self.kept_counts(ckpt)
        self.targets = counts

    def save_state(self, step: int, model: nn.Module, arrays: dict[str, np.ndarray],
                   meta: dict[str, Any]) -> None:
        if self.work is None:
            return
        named = {f"model.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        named.update({f"state.{k}": v for k, v in arrays.items()})
        self.work.save_record(STATE, named, {"step": step, **meta})

    def load_state(self, model: nn.Module) -> tuple[int, dict[str, np.ndarray], dict] | None:
        """The last recorded step (its number, the method's arrays and metadata), with the
        network of then loaded into ``model``; None when nothing is recorded."""
        record = self.work.load_record(STATE) if self.work is not None else None
        if record is None:
            return None
        arrays, meta = record
        state = {k[len("model."):]: torch.from_numpy(v.copy()) for k, v in arrays.items()
                 if k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise BadInput(f"damaged work-folder record ({str(e).splitlines()[0][:160]}); "
                           "remove the folder to start over", str(self.work.path)) from e
        self.note(f"resuming from {self.work.path} after step {meta['step']}")
        return int(meta["step"]), {k[len("state."):]: v for k, v in arrays.items()
                                   if k.startswith("state.")}, meta

    # -- the run --------------------------------------------------------------------------

    def run(self, ckpt: Checkpoint, dump, hooks: RunHooks) -> MethodResult:
        """Train a copy of the network and prune it (``train_and_prune``), then measure it on
        the calibration set as every method's result is measured."""
        model = copy.deepcopy(ckpt.model)
        weights = [model.get_submodule(la.name).weight for la in ckpt.prunable]
        training = self.train_and_prune(ckpt, model, weights, hooks)
        calib = dump.inputs() if dump is not None else self.x[:CALIBRATION_MAX]
        calibration = ("the activation dump's inputs" if dump is not None else
                       f"the first {len(calib)} training samples")
        return assemble(self, ckpt, model, calib, calibration, training)

    def method_settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def train_and_prune(self, ckpt: Checkpoint, model: nn.Module, weights: list[nn.Parameter],
                        hooks: RunHooks) -> dict[str, Any]:
        """Prune ``weights`` (the prunable units' parameters of ``model``) in place, training
        ``model``; return the training record for the report (its ``steps``, ``epochs``)."""
        raise NotImplementedError


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y)."""
    from nettrim_cli.evaluate import evaluate

    r = evaluate(model, x, y)[0]
    return r["accuracy"], r["loss"]


def masked_finetune(method: TrainedPruning, model: nn.Module, names: list[str],
                    hooks: RunHooks, step: int) -> dict[str, Any] | None:
    """``--finetune-epochs`` of training with every pruned weight held at zero."""
    from nettrim_cli.training import train

    epochs = method.training.finetune_epochs
    if epochs == 0:
        return None
    masks = {f"{n}.weight": model.get_submodule(n).weight.detach() != 0 for n in names}
    result = train(model, method.x, method.y, method.training.config(step, epochs), masks=masks,
                   callbacks=[EpochProgress(hooks, "fine-tune", epochs)])
    acc, loss = accuracy(model, method.x, method.y)
    if hooks.on_step is not None:
        hooks.on_step(f"fine-tune: {epochs} epoch(s), loss {loss:.4f}, training accuracy "
                      f"{100 * acc:.2f}%")
    return {"epochs": epochs, "loss_per_epoch": result.loss_per_epoch, "train_loss": loss,
            "train_accuracy": acc}


def layer_discrepancies(ckpt: Checkpoint, calib: np.ndarray,
                        pruned: dict[str, tuple[np.ndarray, np.ndarray | None]]
                        ) -> dict[str, tuple[float, float]]:
    """Per unit (||act(X W^T + b) - act(X W0^T + b0)||_F, ||act(X W0^T + b0)||_F) on its
    input X in the original network (as the one-shot baselines measure a unit)."""
    from nettrim_cli.dump import forward_collect
    from nettrim_cli.unitdata import folded_preact, full_discrepancy, unit_output

    sums = {la.name: [0.0, 0.0] for la in ckpt.prunable}
    for _, found, _ in forward_collect(ckpt.model, ckpt.prunable, calib):
        for la in ckpt.prunable:
            X, pre, s = found[la.name]
            W, b = pruned[la.name]  # the program's view: a following BatchNorm folded in
            bn = ckpt.module(la.bn) if la.bn else None
            Z = folded_preact(pre, bn)
            if la.kind == "conv":  # through the convolution, on every patch
                d, n = full_discrepancy(ckpt.module(la.name), X, W, b, Z, s, la.activation)
                sums[la.name][0] += d ** 2
                sums[la.name][1] += n ** 2
                continue
            X = X.reshape(len(X), -1).astype(np.float64)
            Y = unit_output(Z, s, la.activation)
            Yhat = unit_output(X @ W.T + (b if b is not None else 0.0), s, la.activation)
            sums[la.name][0] += float(np.sum((Yhat - Y) ** 2))
            sums[la.name][1] += float(np.sum(Y ** 2))
    return {k: (float(np.sqrt(a)), float(np.sqrt(b))) for k, (a, b) in sums.items()}


def assemble(method: TrainedPruning, ckpt: Checkpoint, model: nn.Module, calib: np.ndarray,
             calibration: str, training: dict[str, Any]) -> MethodResult:
    """The result in the common schema: per unit its weights, counts and discrepancy, the
    network figures, and the method's training record under ``network.training``."""
    from nettrim_cli.layers.fold import unit_matrix
    from nettrim_cli.methods.network import network_summary

    layers, pruned = [], {}
    per_layer = training.get("per_layer") or [{} for _ in ckpt.prunable]
    for la in ckpt.prunable:  # the program's view (BN folded), as pruned_copy writes it back
        pruned[la.name] = unit_matrix(model, la.name, la.bn)
    disc = layer_discrepancies(ckpt, calib, pruned)
    for i, la in enumerate(ckpt.prunable):
        W0, _ = original_weights(ckpt, la)
        W, b = pruned[la.name]
        target = method.targets[la.name] if method.targets else None
        layers.append(LayerResult(
            info=la, W=W, b=b, W0=W0, discrepancy=disc[la.name][0], y_norm=disc[la.name][1],
            program=method.program,
            record={"kept_target": target, "epsilon": None, "lambda": None,
                    "constraint": None, **per_layer[i]}))
    network = {**network_summary(ckpt, calib, pruned, [(o.W, o.W0) for o in layers],
                                 base=model),
               "bound": None, "bound_formula": None,
               "bound_note": f"not applicable: {method.name} has no eps and no bound",
               "bound_holds": None,
               "training": {k: v for k, v in training.items() if k != "per_layer"}}
    settings = {"mode": "training", "epsilon": None, "gamma": None, "lambda": None,
                "solver": method.name, "zero_threshold": None, "osqp": None, "search": None,
                "data": method.data_path, "calibration": calibration,
                **method.settings_record()}
    return MethodResult(method=method.name, mode="training", settings=settings, layers=layers,
                        network=network, model=model)
