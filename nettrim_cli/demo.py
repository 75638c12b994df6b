"""Data and model side of the embedded demo: the paper's Figure 1.

Aghasi et al. (NIPS 2017), introduction: 200 points in the plane whose two classes lie on
nested spirals, fitted by a ReLU network with two fully connected hidden layers of 200 units;
Net-Trim then prunes more than 93% of the links between the two hidden layers with only a
negligible change to the classifier's response.

This module only uses torch, numpy and the standard library (no plotting):

    python -m nettrim_cli.demo train --out DIR
        writes DIR/model.pt (the whole nn.Sequential, torch.save), DIR/calib.npy (training
        inputs, float32, shape (n, 2)) and DIR/labels.npy (int64, shape (n,)).
    python -m nettrim_cli.demo compare DIR/model.pt DIR/pruned.pt --calib DIR/calib.npy
        prints link counts before/after, accuracies and how much of the decision map changed.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from nettrim_cli import training

HIDDEN = 200
# Classes a demo checkpoint may contain when loaded with weights_only=True.
SAFE_CLASSES: list[type] = [nn.Sequential, nn.Linear, nn.ReLU]

DEFAULT_NOISE = 0.02
DEFAULT_EPOCHS = 1000
DEFAULT_LR = 5e-3


def make_spirals(
    n: int = 200, seed: int = 0, noise: float = DEFAULT_NOISE
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` points on two interleaved (nested) spirals in the plane.

    Class 0 lies on the spiral ``r = t``, ``angle = t`` for ``t`` in ``[0.25*pi, 3*pi]``; class
    1 is the same spiral rotated by 180 degrees, so the two arms wind around each other. Points
    are scaled into roughly ``[-1, 1]^2`` and perturbed by isotropic Gaussian noise of standard
    deviation ``noise`` (in those scaled units). Classes are balanced: ``n // 2`` points of
    class 0 and ``n - n // 2`` of class 1 (equal for even ``n``), interleaved in the order
    0, 1, 0, 1, ...

    Args:
        n: number of points (>= 2).
        seed: seed of the numpy generator; the same seed gives the same points.
        noise: standard deviation of the additive noise.

    Returns:
        ``(X, y)``: ``X`` float32 of shape ``(n, 2)``, ``y`` int64 of shape ``(n,)`` with
        values in ``{0, 1}``.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    t_min, t_max = 0.25 * math.pi, 3.0 * math.pi
    # sqrt spreads points evenly along the arc length (which grows like t^2).
    u = rng.uniform(0.0, 1.0, size=n)
    t = np.sqrt(t_min**2 + u * (t_max**2 - t_min**2))
    angle = t + math.pi * y
    r = t / t_max
    X = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
    X = X + noise * rng.standard_normal(size=X.shape)
    return X.astype(np.float32), y


def build_model() -> nn.Sequential:
    """The Figure 1 classifier: 2 -> 200 -> ReLU -> 200 -> ReLU -> 2 (logits).

    Only standard ``torch.nn`` layers, so a whole-module ``torch.save`` of it loads with
    ``weights_only=True`` under ``torch.serialization.safe_globals(SAFE_CLASSES)``.
    """
    return nn.Sequential(
        nn.Linear(2, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 2),
    )


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows of ``X`` whose argmax class under ``model`` equals ``y``."""
    pred = predict(model, X)
    return float(np.mean(pred == np.asarray(y)))


def predict(model: nn.Module, X: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Predicted classes (argmax of the logits) of ``model`` on the rows of ``X``, int64."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(X), batch):
            xb = torch.as_tensor(np.asarray(X[i:i + batch], dtype=np.float32))
            out.append(model(xb).argmax(dim=1).numpy())
    model.train(was_training)
    if not out:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


@contextmanager
def _one_deterministic_thread() -> Iterator[None]:
    """torch's deterministic algorithms on one intra-op thread, both restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    # The matrices are tiny: one thread is faster than two here, does not spin against other
    # processes for the cores, and makes the result independent of the machine's core count.
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(threads)


def train(
    seed: int = 0, n: int = 200, epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR
) -> tuple[nn.Module, np.ndarray, np.ndarray, float]:
    """Train the Figure 1 classifier on ``make_spirals(n, seed)`` (full batch Adam).

    Seeds torch (``torch.manual_seed``) and the data generator, and runs with
    ``torch.use_deterministic_algorithms(True)`` on one intra-op thread (both restored
    afterwards), so the same arguments give the same weights on the same machine and build.
    Cross-entropy loss, no weight decay or dropout: the network is dense, as in Figure 1(a/b).
    The loop is ``nettrim_cli.training.train`` with one batch of all points, in order.

    Args:
        seed: seed for the data and the weight initialisation.
        n: number of training points.
        epochs: number of full-batch Adam steps.
        lr: Adam learning rate.

    Returns:
        ``(model, X, y, train_accuracy)`` with the model in eval mode.
    """
    X, y = make_spirals(n=n, seed=seed)
    with _one_deterministic_thread():
        torch.manual_seed(seed)
        model = build_model()
        training.train(model, X, y, training.TrainConfig(
            epochs=epochs, lr=lr, batch_size=len(X), seed=seed, shuffle=False))
    return model, X, y, accuracy(model, X, y)


def grid_points(X: np.ndarray, steps: int = 200, margin: float = 0.1) -> np.ndarray:
    """A ``steps x steps`` grid over the bounding box of ``X``, widened by ``margin``.

    The margin is a fraction of each axis' extent (at least 1e-3 absolute, so a degenerate
    box still has area). Returns float32 of shape ``(steps * steps, 2)``, rows in C order
    (x varies fastest), i.e. ``grid.reshape(steps, steps, 2)[i, j]`` is at ``(xs[j], ys[i])``.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2 or len(X) == 0:
        raise ValueError(f"X must have shape (n, 2) with n >= 1, got {X.shape}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = np.maximum(margin * (hi - lo), 1e-3)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], steps)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], steps)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def decision_changes(model_a: nn.Module, model_b: nn.Module, grid: np.ndarray) -> tuple[int, int]:
    """Number of grid points whose predicted class differs between the models, and grid size."""
    pa = predict(model_a, grid)
    pb = predict(model_b, grid)
    return int(np.count_nonzero(pa != pb)), int(len(grid))


def load_module(path: str) -> nn.Module:
    """Load a whole-module checkpoint with ``weights_only=True`` and the demo's allowlist."""
    with torch.serialization.safe_globals(SAFE_CLASSES):
        obj = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{path}: expected a whole nn.Module, got {type(obj).__name__}")
    obj.eval()
    return obj


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's ``nn.Linear`` layers in registration (forward, for Sequential) order."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def count_links(layer: nn.Linear) -> int:
    """Number of weights of ``layer`` that are not exactly zero (biases not counted)."""
    return int(torch.count_nonzero(layer.weight.detach()).item())


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def compare_report(
    original: nn.Module, pruned: nn.Module, X: np.ndarray, y: np.ndarray | None,
    steps: int = 200,
) -> list[str]:
    """The lines ``compare`` prints: links, accuracies and decision-map changes."""
    la, lb = linear_layers(original), linear_layers(pruned)
    if [m.weight.shape for m in la] != [m.weight.shape for m in lb]:
        raise ValueError("the two models do not have the same Linear layer shapes")
    if len(la) < 3:
        raise ValueError(f"expected at least 3 Linear layers, found {len(la)}")
    hid_a = sum(count_links(m) for m in la[1:-1])
    hid_b = sum(count_links(m) for m in lb[1:-1])
    all_a = sum(count_links(m) for m in la)
    all_b = sum(count_links(m) for m in lb)
    lines = [
        f"hidden-to-hidden links: {hid_a} -> {hid_b} ({_pct(hid_a - hid_b, hid_a):.1f}% pruned)",
        f"all links: {all_a} -> {all_b} ({_pct(all_a - all_b, all_a):.1f}% pruned)",
    ]
    if y is not None:
        acc_a, acc_b = accuracy(original, X, y), accuracy(pruned, X, y)
        lines.append(f"training accuracy: {100 * acc_a:.1f}% -> {100 * acc_b:.1f}%")
    changed, total = decision_changes(original, pruned, grid_points(X, steps))
    lines.append(
        f"decision map: {changed} of {total} grid points change class "
        f"({_pct(changed, total):.2f}%)"
    )
    return lines


def _cmd_train(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model, X, y, acc = train(seed=args.seed, n=args.n, epochs=args.epochs)
    elapsed = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    torch.save(model, os.path.join(args.out, "model.pt"))
    np.save(os.path.join(args.out, "calib.npy"), X.astype(np.float32))
    np.save(os.path.join(args.out, "labels.npy"), y.astype(np.int64))
    print(f"training accuracy: {100 * acc:.1f}% ({len(y)} points, {elapsed:.1f} s)",
          file=sys.stderr)
    print(f"wrote {args.out}/model.pt, calib.npy, labels.npy", file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    original = load_module(args.original)
    pruned = load_module(args.pruned)
    X = np.load(args.calib)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"{args.calib}: expected shape (n, 2), got {X.shape}")
    labels = args.labels or os.path.join(os.path.dirname(args.calib), "labels.npy")
    y = np.load(labels) if os.path.exists(labels) else None
    if y is None:
        print(f"note: {labels} not found, accuracies not shown", file=sys.stderr)
    elif y.shape != (len(X),):
        raise ValueError(f"{labels}: expected shape ({len(X)},), got {y.shape}")
    for line in compare_report(original, pruned, X, y, steps=args.steps):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m nettrim_cli.demo``; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m nettrim_cli.demo",
        description="Figure 1 demo of Net-Trim: nested spirals, 2x200 ReLU classifier.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the spiral classifier and write model + data")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("-n", type=int, default=200, help="number of training points")
    t.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    c = sub.add_parser("compare", help="compare an original and a pruned model")
    c.add_argument("original")
    c.add_argument("pruned")
    c.add_argument("--calib", required=True, help="training inputs (n, 2) .npy")
    c.add_argument("--labels", help="labels .npy (default: labels.npy next to --calib)")
    c.add_argument("--steps", type=int, default=200, help="grid resolution per axis")
    args = p.parse_args(argv)
    try:
        if args.cmd == "train":
            return _cmd_train(args)
        return _cmd_compare(args)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
