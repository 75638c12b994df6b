"""`make conv-experiments`: whole conv networks pruned with Net-Trim through the `nettrim` CLI
(issue 14): LeNet-5 and a small ResNet (Conv-BN blocks with residual adds) on Fashion-MNIST,
every conv and Linear layer pruned, BatchNorm folded, residual units with eq. 3's y - s / V = -s.

For each network: train (seeded), dump the calibration set, prune in parallel mode, prune with
the baselines at the same per-layer counts (--match), evaluate on the 10,000 test images,
fine-tune each pruned model with its mask fixed, evaluate again; then the section "Whole conv
networks" of docs/results.md is rewritten from the files on disk (the rest of the file is
kept). Steps whose output exists are skipped (delete EXP_DIR/conv/<net> to redo one).

Environment: EXP_DIR (default exp_out), CONV_NETS (default lenet5,resnet), CONV_EPS (the
relative eps per network, e.g. lenet5=0.08), CALIB (calibration images, default 5000),
FT_EPOCHS (default 2), BASELINE_FT (0: fine-tune the Net-Trim model only).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nettrim_cli.datasets import load_fashion_mnist
from nettrim_cli.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
EXP = Path(os.environ.get("EXP_DIR", ROOT / "exp_out")) / "conv"
CALIB = int(os.environ.get("CALIB", "5000"))
FT_EPOCHS = int(os.environ.get("FT_EPOCHS", "2"))
BASELINE_FT = os.environ.get("BASELINE_FT", "1") != "0"  # fine-tune the baselines' models too
BASELINES = ("magnitude", "wanda", "sparsegpt")
ARCH = "experiments.convnets:small_resnet"


def lenet5() -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling; inputs flat 784-vectors."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


class Block(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is a 1x1 conv + BN
    when the block changes width or stride, else the identity."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        s = x if self.down is None else self.down(x)
        return F.relu(self.bn2(self.conv2(h)) + s)


class SmallResNet(nn.Module):
    """A stride-2 stem conv (28x28 -> 14x14), three residual blocks (8, 16, 16 channels; the
    second halves the size again), global average pooling and a Linear classifier; inputs
    flat 784-vectors. Small enough to train on two shared cores."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2), Block(16, 16, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x.view(-1, 1, 28, 28))))
        return self.fc(torch.flatten(self.pool(self.blocks(h)), 1))


def small_resnet() -> nn.Module:
    return SmallResNet()


# name: (factory, training images, epochs, eps, whole-module checkpoint)
NETS = {
    "lenet5": (lenet5, 30_000, 5, 0.06, True),
    "resnet": (small_resnet, 30_000, 5, 0.03, False),
}


CPU = {}  # the last command's CPU seconds (user + system, its processes together)


def nettrim(*args: str) -> float:
    """Run `nettrim ARGS` from the repository root; returns its wall time (CPU time in CPU)."""
    print("+ nettrim", " ".join(args), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "nettrim_cli", *args], check=True, cwd=ROOT, env=env)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["last"] = round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 1)
    return time.perf_counter() - t0


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.as_tensor(x[a:a + 1000])).argmax(1)
                          for a in range(0, len(x), 1000)]).numpy()
    return float(100 * (pred == y).mean())


def load(path: Path, factory, whole: bool) -> nn.Module:
    if whole:
        return torch.load(path, weights_only=False)
    model = factory()
    obj = torch.load(path)
    model.load_state_dict(obj)
    return model.eval()


def one_net(name: str, data: dict) -> dict:
    factory, n_train, epochs, eps, whole = NETS[name]
    eps = float(dict(kv.split("=") for kv in os.environ.get("CONV_EPS", "").split(",")
                     if "=" in kv).get(name, eps))
    d = EXP / name
    d.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    xtr, ytr = xtr[:n_train], ytr[:n_train]
    summary_path = d / "summary.json"
    s = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    model = d / "model.pt"
    arch = [] if whole else ["--arch", ARCH]
    if not model.exists():
        torch.manual_seed(0)
        net = factory()
        t0 = time.perf_counter()
        train(net, xtr, ytr, TrainConfig(epochs=epochs, seed=0))  # Adam, lr 1e-3, batch 128
        s["train_seconds"] = round(time.perf_counter() - t0, 1)
        torch.save(net.eval() if whole else net.eval().state_dict(), model)
    calib = d / "calib.npy"
    np.save(calib, xtr[:CALIB])
    with h5py.File(d / "train.h5", "w") as f:
        f.create_dataset("inputs", data=xtr)
        f.create_dataset("labels", data=ytr)
    acts, report, pruned = d / "acts.h5", d / "netrim.json", d / "netrim.pt"
    s["dump_seconds"] = round(nettrim("dump", str(model), *arch, "--inputs", str(calib),
                                      "-o", str(acts), "--force"), 1)
    s["epsilon"] = eps
    s["prune_seconds"] = round(nettrim(
        "prune", str(model), *arch, "--acts", str(acts), "--mode", "parallel", "--config",
        "fast", "--dtype", "float32", "--epsilon", str(eps), "-o", str(pruned), "--report",
        str(report), "--force", "-q"), 1)
    s["prune_cpu_seconds"] = CPU["last"]
    s["accuracy"] = {"original": accuracy(load(model, factory, whole), xte, yte)}
    s["ft_accuracy"] = {}
    for method in ("netrim", *BASELINES):
        out = d / f"{method}.pt"
        if method != "netrim":
            s[f"{method}_seconds"] = round(nettrim(
                "prune", str(model), *arch, "--acts", str(acts), "--method", method,
                "--match", str(report), "-o", str(out), "--report", str(d / f"{method}.json"),
                "--force", "-q"), 1)
        s["accuracy"][method] = accuracy(load(out, factory, whole), xte, yte)
        if method != "netrim" and not BASELINE_FT:
            continue
        ft = d / f"{method}-ft.pt"
        s[f"{method}_ft_seconds"] = round(nettrim(
            "finetune", str(out), *arch, "--data", str(d / "train.h5"), "--epochs",
            str(FT_EPOCHS), "--lr", "1e-4", "-o", str(ft), "--force", "-q"), 1)
        s["ft_accuracy"][method] = accuracy(load(ft, factory, whole), xte, yte)
    s.update(n_train=n_train, epochs=epochs, calib=CALIB, ft_epochs=FT_EPOCHS)
    summary_path.write_text(json.dumps(s, indent=1))
    return s


def main() -> int:
    nets = [n for n in os.environ.get("CONV_NETS", ",".join(NETS)).split(",") if n]
    x, y = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    data = {"train": (x, y), "test": (xt, yt)}
    for name in nets:
        one_net(name, data)
    from experiments.conv_results import write_section

    write_section(EXP, ROOT / "docs" / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
