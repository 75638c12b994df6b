"""The held-out case of issue 16 (part 2 of `make experiments-sharpen`, experiments/sharpen.py).

An MLP (64-128-64-10) trained on 60% of sklearn's digits (seeded stratified split), tested on
the other 40%. Parallel Net-Trim prunes it to --sparsity 0.767 on the training inputs (plain,
--refit, --reweight K --refit); at the plain run's per-layer counts the baseline the issue
names keeps, per layer, the weights with the largest |w_ij| * ||x_j|| (x_j: input j over the
training inputs) and refits them by least squares to the layer's pre-activation on the same
inputs (bias free); the same selection is also refitted with the support refit of the Net-Trim
program (nettrim_cli/solvers/sharpen.py) to separate the selection from the refit.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from experiments.run import load_json, run, write_h5
from nettrim_cli.datasets import mlp
from nettrim_cli.program import NONE, RELU, LayerProgram
from nettrim_cli.solvers.sharpen import support_refit
from nettrim_cli.training import TrainConfig, train

ARCH = (64, 128, 64, 10)
TARGET = 0.767
EPOCHS = 100
REWEIGHT = 2
VARIANTS = {"Net-Trim": ["--no-refit"], "Net-Trim + refit": ["--refit"],
            f"Net-Trim + reweight {REWEIGHT} + refit": ["--reweight", str(REWEIGHT), "--refit"]}


def data() -> tuple[np.ndarray, ...]:
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return tuple(train_test_split(x, d.target.astype(np.int64), test_size=0.4,
                                  stratify=d.target, random_state=0))


def accuracy(net: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = net(torch.as_tensor(x)).argmax(1).numpy()
    return float((pred == y).mean())


def linears(net: torch.nn.Sequential) -> list[torch.nn.Linear]:
    return [m for m in net if isinstance(m, torch.nn.Linear)]


def layer_io(net: torch.nn.Sequential, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input, pre-activation) of every Linear layer of the original network on ``x``."""
    out, h = [], torch.as_tensor(x)
    with torch.no_grad():
        for m in net:
            if isinstance(m, torch.nn.Linear):
                z = m(h)
                out.append((h.numpy().astype(np.float64), z.numpy().astype(np.float64)))
                h = z
            else:
                h = m(h)
    return out


def select(W: np.ndarray, X: np.ndarray, count: int) -> np.ndarray:
    """The mask of the ``count`` largest |w_ij| * ||x_j|| of the layer."""
    score = np.abs(W) * np.linalg.norm(X, axis=0)[None, :]
    keep = np.argsort(-score, axis=None, kind="stable")[:count]
    mask = np.zeros(W.size, dtype=bool)
    mask[keep] = True
    return mask.reshape(W.shape)


def ls_refit(X: np.ndarray, Z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each row's kept weights and its bias by least squares to the pre-activation:
    (M, N + 1)."""
    Xa = np.hstack([X, np.ones((len(X), 1))])
    out = np.zeros((mask.shape[0], mask.shape[1] + 1))
    for m in range(mask.shape[0]):
        S = np.append(np.flatnonzero(mask[m]), mask.shape[1])
        out[m, S] = np.linalg.lstsq(Xa[:, S], Z[:, m], rcond=None)[0]
    return out


def program_refit(X: np.ndarray, Z: np.ndarray, W: np.ndarray, b: np.ndarray,
                  mask: np.ndarray, relu: bool) -> np.ndarray:
    """The kept weights refitted by the support refit of the layer program (eq. 3, V = 0)."""
    prog = LayerProgram(X=X, Y=np.maximum(Z, 0.0) if relu else Z, W0=W, b0=b,
                        activation=RELU if relu else NONE, epsilon=1.0)
    start = np.hstack([np.where(mask, W, 0.0), b[:, None]])
    return support_refit(prog, start)[0]


def baseline(net: torch.nn.Sequential, x: np.ndarray, counts: list[int],
             refit: str) -> torch.nn.Sequential:
    """The magnitude x input-norm selection at ``counts``, refitted by ``refit`` ('ls' or
    'program'), every layer on the original network's inputs (parallel)."""
    pruned = copy.deepcopy(net)
    lins = linears(pruned)
    for i, ((X, Z), lin, count) in enumerate(zip(layer_io(net, x), lins, counts, strict=True)):
        W = lin.weight.detach().numpy().astype(np.float64)
        b = lin.bias.detach().numpy().astype(np.float64)
        mask = select(W, X, count)
        Wa = (ls_refit(X, Z, mask) if refit == "ls"
              else program_refit(X, Z, W, b, mask, relu=i < len(lins) - 1))
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(Wa[:, :-1], dtype=lin.weight.dtype))
            lin.bias.copy_(torch.as_tensor(Wa[:, -1], dtype=lin.bias.dtype))
    return pruned


def heldout(d: Path, timed) -> dict:
    """Train, prune and compare (module docstring); returns the figures for the doc."""
    d.mkdir(parents=True, exist_ok=True)
    xtr, xte, ytr, yte = data()
    model = d / "model.pt"
    if not model.exists():
        torch.manual_seed(0)
        net = mlp(ARCH)
        train(net, xtr, ytr, TrainConfig(epochs=EPOCHS, seed=0))
        torch.save(net, d / "model.tmp")
        (d / "model.tmp").replace(model)
    net = torch.load(model, weights_only=False).eval()
    np.save(d / "calib.npy", xtr)
    write_h5(d / "test.h5", xte, yte)
    acts = d / "acts.h5"
    run("dump", str(model), "--inputs", str(d / "calib.npy"), "-o", str(acts), out=acts)
    rows: dict[str, tuple[float, float]] = {"dense": (accuracy(net, xte, yte), 0.0)}
    start, counts = None, None
    for name, flags in VARIANTS.items():
        tag = name.replace(" + ", "-").replace(" ", "").lower()
        out, report = d / f"{tag}.pt", d / f"{tag}.json"
        extra = []
        if start is not None:
            (d / "start.toml").write_text(f"epsilon = {start!r}\n")
            extra = ["--config", str(d / "start.toml")]
        timed(f"digits-{tag}", run("prune", str(model), "--acts", str(acts), "--mode",
                                   "parallel", "--sparsity", str(TARGET), "--allocation",
                                   "uniform", *extra, *flags, "-o", str(out), "--report",
                                   str(report), "-q", out=report))
        r = load_json(report)
        if start is None:
            start = r["settings"]["sparsity_search"]["epsilon"]
            counts = [lay["nonzeros_after"] for lay in r["layers"]]
        pruned = torch.load(out, weights_only=False).eval()
        rows[name] = (accuracy(pruned, xte, yte), r["network"]["pruned_fraction"])
    total = sum(lin.weight.numel() for lin in linears(net))
    for name, how in (("magnitude x input norm + least-squares refit", "ls"),
                      ("magnitude x input norm + support refit (program)", "program")):
        rows[name] = (accuracy(baseline(net, xtr, counts, how), xte, yte),
                      1.0 - sum(counts) / total)
    return {"rows": rows, "counts": counts, "n_train": len(xtr), "n_test": len(xte),
            "epsilon": start}


def heldout_lines(held: dict) -> list[str]:
    lines = ["## The held-out case", "",
             f"MLP {'-'.join(map(str, ARCH))} trained ({EPOCHS} epochs, Adam) on "
             f"{held['n_train']} of sklearn's digits, tested on the other {held['n_test']} "
             f"(stratified split, seed 0). Net-Trim: `nettrim prune --mode parallel --sparsity "
             f"{TARGET}` on the training inputs (eps {held['epsilon']:.4g}); the baselines keep "
             f"Net-Trim's per-layer counts ({', '.join(map(str, held['counts']))}). No "
             "fine-tuning.", "", "| method | pruned | held-out accuracy |", "|---|---|---|"]
    for name, (acc, pruned) in held["rows"].items():
        lines.append(f"| {name} | {100 * pruned:.2f}% | {100 * acc:.2f}% |")
    return lines
