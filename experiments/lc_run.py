"""`make experiments-lc`: the training-based methods on Fashion-MNIST, through the `nettrim` CLI.

A LeNet300-style MLP (784-300-100-10, the LC paper's LeNet300) is trained dense (Adam, lr
1e-3, batch 128), then pruned to 90% and 95% of its weights by `nettrim prune --method lc`
(l0 constraint) and `--method magnitude-iterative` (HPTD), every pruned model evaluated on the
10,000 test images with `nettrim eval`. First, at 95%, a sweep of LC's mu schedule (SWEEP);
the schedule whose pruned network has the lowest training loss (``chosen``) is the one run at
90% and the one `nettrim prune --method lc` has as its default. Then docs/results.md gets
(or has replaced) its section between the LC_BEGIN / LC_END markers; every other section is
left as it is.

Every step writes its output atomically and is skipped when it exists (a rerun resumes; delete
LC_DIR to redo). Wall times are measured here and kept in LC_DIR/times.json.

Environment: LC_DIR (default exp_out/lc), LC_TRAIN (training images, default 10000: the first
ones of the training set; the CPU of these machines is shared), LC_DENSE_EPOCHS (default 20),
LC_SEED (default 0).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from experiments.run import NETTRIM, ROOT, Timings, load_json, run, write_h5
from nettrim_cli.datasets import load_fashion_mnist, mlp
from nettrim_cli.training import TrainConfig, train

EXP = Path(os.environ.get("LC_DIR", ROOT / "exp_out" / "lc"))
DOCS = ROOT / "docs"
N_TRAIN = int(os.environ.get("LC_TRAIN", "10000"))
DENSE_EPOCHS = int(os.environ.get("LC_DENSE_EPOCHS", "20"))
SEED = int(os.environ.get("LC_SEED", "0"))
ARCH = (784, 300, 100, 10)
SPARSITIES = (0.90, 0.95)
# The same training budget for both methods: 20 epochs (LC: 20 steps x 1 epoch; HPTD: 10
# rounds x 2 epochs), SGD with Nesterov momentum 0.9, lr 0.05 (LC: decayed 0.98 per step).
TRAINING = ["--optimizer", "sgd", "--lr", "0.05", "--batch-size", "128",
            "--seed", str(SEED)]
LC_BASE = [*TRAINING, "--lr-decay", "0.98", "--steps", "20", "--epochs", "1"]
HPTD = [*TRAINING, "--lr-decay", "1", "--rounds", "10", "--epochs", "2", "--ramp", "cubic"]
# mu schedules tried at 95% (name: mu0, growth); "toolkit" is the LC toolkit's LeNet300 one
SWEEP = {"toolkit": ("9e-5", "1.1"), "mu0 3e-4 a 1.3": ("3e-4", "1.3"),
         "mu0 1e-3 a 1.3": ("1e-3", "1.3"), "mu0 3e-3 a 1.3": ("3e-3", "1.3"),
         "mu0 1e-2 a 1.3": ("1e-2", "1.3")}
FALLBACK = "mu0 1e-3 a 1.3"  # until the sweep has run
BEGIN, END = "<!-- LC_BEGIN -->", "<!-- LC_END -->"


def _tag(name: str) -> str:
    return name.replace(" ", "_")


def chosen(exp: Path) -> str:
    """The sweep's schedule whose final theta (the pruned network) has the lowest training
    loss at 95% (training data only: the test set plays no part in the choice)."""
    losses = {}
    for key in SWEEP:
        path = exp / f"lc-{_tag(key)}-95.json"
        if path.exists():
            losses[key] = load_json(path)["network"]["training"]["steps"][-1]["theta_loss"]
    return min(losses, key=losses.get) if len(losses) == len(SWEEP) else FALLBACK


def lc_run(key: str, sparsity: float) -> tuple[str, float, list[str]]:
    mu0, a = SWEEP[key]
    return (f"lc-{_tag(key)}-{round(100 * sparsity)}", sparsity,
            ["--method", "lc", *LC_BASE, "--mu0", mu0, "--mu-growth", a])


def main() -> int:
    EXP.mkdir(parents=True, exist_ok=True)
    timed = Timings(EXP / "times.json")

    x, y = load_fashion_mnist("train")
    train_h5, test_h5 = EXP / "train.h5", EXP / "test.h5"
    write_h5(train_h5, x[:N_TRAIN], y[:N_TRAIN])
    write_h5(test_h5, *load_fashion_mnist("test"))
    model = EXP / "model.pt"
    if not model.exists():
        t0 = time.perf_counter()
        torch.manual_seed(SEED)
        net = mlp(ARCH)
        train(net, x[:N_TRAIN], y[:N_TRAIN], TrainConfig(epochs=DENSE_EPOCHS, seed=SEED))
        torch.save(net, EXP / "model.tmp")
        (EXP / "model.tmp").replace(model)
        timed("dense", time.perf_counter() - t0)
    run("eval", str(model), "--data", str(test_h5), "--format", "json",
        stdout=EXP / "eval-dense.json")
    run("eval", str(model), "--data", str(train_h5), "--format", "json",
        stdout=EXP / "eval-dense-train.json")
    # the sweep at 95% first; then the chosen schedule at 90%, then HPTD
    sweep = [lc_run(key, 0.95) for key in SWEEP]
    hptd = [(f"hptd-{round(100 * s)}", s, ["--method", "magnitude-iterative", *HPTD])
            for s in SPARSITIES]
    prune_all(sweep, model, train_h5, test_h5, timed)
    prune_all([lc_run(chosen(EXP), 0.90), *hptd], model, train_h5, test_h5, timed)
    from experiments.lc_results import write_section

    write_section(EXP, DOCS / "results.md")
    return 0


def prune_all(jobs: list[tuple[str, float, list[str]]], model: Path, train_h5: Path,
              test_h5: Path, timed) -> None:
    """Run each (name, sparsity, flags) prune unless its report exists, then evaluate it."""
    for name, sparsity, flags in jobs:
        report = EXP / f"{name}.json"
        if (EXP / f"{name}.pt.nettrim-work").exists():
            flags = [*flags, "--resume"]  # a run of this step was stopped: go on from it
        timed(name, run("prune", str(model), "--data", str(train_h5), "--sparsity",
                        str(sparsity), *flags, "-o", str(EXP / f"{name}.pt"), "--report",
                        str(report), "-q", out=report))
        run("eval", str(EXP / f"{name}.pt"), "--data", str(test_h5), "--format", "json",
            stdout=EXP / f"eval-{name}.json")


if __name__ == "__main__":
    print("nettrim:", " ".join(NETTRIM), file=sys.stderr)
    sys.exit(main())
