"""`make conv-experiments`: whole conv networks pruned with Net-Trim through the `nettrim` CLI
(issue 14): LeNet-5, a small ResNet (Conv-BN blocks with residual adds) and the paper's
CNN-10K/30K/60K on Fashion-MNIST, every conv and Linear layer pruned, BatchNorm folded,
residual units with eq. 3's y - s / V = -s.

For each network: train (seeded), dump the calibration set, and for each of its sparsity
levels: prune with `nettrim prune --sparsity S` (the default solver and mode; the eps search
is part of the timed command), prune with the baselines at the same per-layer counts
(--match), evaluate on the 10,000 test images, fine-tune each pruned model with its mask
fixed, evaluate again; then the section "Whole conv networks" of docs/results.md is rewritten
from the files on disk (the rest of the file is kept). Every step whose output exists is
skipped, so a rerun resumes (delete EXP_DIR/conv/<net> to redo a network, or one level's
netrim-<S>.json to redo that level).

Environment: EXP_DIR (default exp_out), CONV_NETS (default lenet5,resnet,cnn10k,cnn30k,cnn60k),
CONV_SPARSITY (levels per network, e.g. resnet=0.2/0.3), CALIB (calibration images, default
5000), FT_EPOCHS (default 2), TRAIN_THREADS (torch threads of training and fine-tuning,
default 1), BASELINE_FT (0: fine-tune the Net-Trim models only; else the
baselines too, at each network's first level).
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

from experiments.run import NETWORKS, cnn
from nettrim_cli.datasets import load_fashion_mnist
from nettrim_cli.execution.threads import fixed_threads
from nettrim_cli.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
EXP = Path(os.environ.get("EXP_DIR", ROOT / "exp_out")) / "conv"
CALIB = int(os.environ.get("CALIB", "5000"))
FT_EPOCHS = int(os.environ.get("FT_EPOCHS", "2"))
BASELINE_FT = os.environ.get("BASELINE_FT", "1") != "0"  # fine-tune the baselines' models too
BASELINES = ("magnitude", "wanda", "sparsegpt")
# torch threads of training and fine-tuning: on the shared 2 cores two threads thrash when
# other jobs run (an im2col of 256 LeNet inputs measured 2.27 s with two threads and 0.075 s
# with one, load average 10); the prunes keep nettrim's defaults (their times are the figure).
TRAIN_THREADS = int(os.environ.get("TRAIN_THREADS", "1"))
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


# name: (factory, training images, epochs, whole-module checkpoint, --sparsity levels). The
# CNNs are the paper's CNN-10K/30K/60K (experiments/run.py NETWORKS), here with their conv
# layers pruned too. The baselines are fine-tuned at a network's first level only (BASELINE_FT).
NETS = {
    "lenet5": (lenet5, 30_000, 5, True, (0.65,)),
    "resnet": (small_resnet, 30_000, 5, False, (0.1, 0.2, 0.3)),
    "cnn10k": (cnn, *NETWORKS["CNN-10K"][1:], True, (0.8,)),
    "cnn30k": (cnn, *NETWORKS["CNN-30K"][1:], True, (0.8,)),
    "cnn60k": (cnn, *NETWORKS["CNN-60K"][1:], True, (0.8,)),
}
CPU = {}  # the last command's CPU seconds (user + system, its processes together)


UNIFORM = ("--allocation", "uniform")  # one eps for every layer, as docs/results.md says


def nettrim(*args: str, threads: int | None = None) -> float:
    """Run `nettrim ARGS` from the repository root (with ``threads`` torch/BLAS threads, else
    their defaults); returns its wall time (its CPU time in CPU)."""
    print("+ nettrim", " ".join(args), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "nettrim_cli", *args], check=True, cwd=ROOT, env=env)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["last"] = round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 1)
    return round(time.perf_counter() - t0, 1)


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
    model.load_state_dict(torch.load(path))
    return model.eval()


def levels(name: str) -> tuple[float, ...]:
    """The network's --sparsity levels: CONV_SPARSITY's (name=a/b/...) or NETS'."""
    given = dict(kv.split("=", 1) for kv in os.environ.get("CONV_SPARSITY", "").split(",")
                 if "=" in kv)
    if name in given:
        return tuple(float(v) for v in given[name].split("/"))
    return NETS[name][4]


class Summary(dict):
    """summary.json of a network: what was measured, saved after every step so that a
    stopped run keeps what it measured."""

    def __init__(self, path: Path) -> None:
        super().__init__(json.loads(path.read_text()) if path.exists() else {})
        self.path = path

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self, indent=1))
        tmp.replace(self.path)


def prepare(name: str, d: Path, data: dict, s: Summary, spec: tuple | None = None,
            seed: int = 0) -> tuple[Path, list[str], Path]:
    """Train the network (unless cached), write its calibration and training files, dump
    its activations (unless cached); returns (checkpoint, --arch args, dump). ``spec``: the
    network's NETS entry when it is not one of NETS (experiments/hs_nets.py); ``seed``: the
    dense training's (its initialisation and shuffling)."""
    factory, n_train, epochs, whole, _ = spec or NETS[name]
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    xtr, ytr = xtr[:n_train], ytr[:n_train]
    model, arch = d / "model.pt", ([] if whole else ["--arch", ARCH])
    if not model.exists():
        torch.manual_seed(seed)
        net = factory()
        t0 = time.perf_counter()
        with fixed_threads(TRAIN_THREADS):  # Adam, lr 1e-3, batch 128
            train(net, xtr, ytr, TrainConfig(epochs=epochs, seed=seed))
        s["train_seconds"] = round(time.perf_counter() - t0, 1)
        torch.save(net.eval() if whole else net.eval().state_dict(), d / "model.tmp")
        (d / "model.tmp").replace(model)
        s.pop("accuracy_original", None)
    if "accuracy_original" not in s:
        s["accuracy_original"] = accuracy(load(model, factory, whole), xte, yte)
    if not (d / "train.h5").exists():
        with h5py.File(d / "train.tmp", "w") as f:
            f.create_dataset("inputs", data=xtr)
            f.create_dataset("labels", data=ytr)
        (d / "train.tmp").replace(d / "train.h5")
    acts = d / "acts.h5"
    if not acts.exists():
        np.save(d / "calib.npy", xtr[:CALIB])
        s["dump_seconds"] = nettrim("dump", str(model), *arch, "--inputs", str(d / "calib.npy"),
                                    "-o", str(acts))
    s.update(n_train=n_train, epochs=epochs, calib=CALIB, ft_epochs=FT_EPOCHS)
    if not (d / "original-ft.pt").exists():  # the dense model fine-tuned alike: what FT
        s["original_ft_seconds"] = finetune(model, arch, d / "original-ft.pt")  # adds anyway
        s.pop("accuracy_original_ft", None)
    if "accuracy_original_ft" not in s:
        s["accuracy_original_ft"] = accuracy(load(d / "original-ft.pt", factory, whole), xte, yte)
    s.save()
    return model, arch, acts


def finetune(model: Path, arch: list[str], out: Path) -> float:
    """`nettrim finetune` on the network's training images (its zeros kept); wall seconds."""
    return nettrim("finetune", str(model), *arch, "--data", str(model.parent / "train.h5"),
                   "--epochs", str(FT_EPOCHS), "--lr", "1e-4", "-o", str(out), "--force", "-q",
                   threads=TRAIN_THREADS)


def one_level(name: str, level: float, d: Path, files: tuple, data: dict, s: Summary,
              spec: tuple | None = None, netrim_flags: tuple[str, ...] = (),
              finetune_fn=None, ft_methods: tuple[str, ...] | None = None,
              variant: str = "") -> None:
    """Net-Trim at --sparsity ``level`` (the search timed as one command, with the load
    average before and after), the baselines at its counts, fine-tuning, test accuracies.
    experiments/hs_nets.py passes its own network ``spec``, Net-Trim's mode flags, its
    fine-tune and the baselines to fine-tune (``ft_methods``; None: BASELINE_FT's rule), and
    for a ``variant`` of the level (experiments/hs_alloc.py) its files' prefix and its record
    under the level (``level_record``)."""
    factory, _, _, whole, _ = spec or NETS[name]
    finetune_fn = finetune_fn or finetune
    model, arch, acts = files
    xte, yte = data["test"]
    tag = f"{level:g}"
    r = level_record(s, tag, variant)
    pre = file_prefix(variant)
    report = d / f"{pre}netrim-{tag}.json"
    for method in ("netrim", *BASELINES):
        out, rep = d / f"{pre}{method}-{tag}.pt", d / f"{pre}{method}-{tag}.json"
        if not rep.exists():
            load_before = os.getloadavg()[0]
            how = (["--sparsity", tag, *(netrim_flags or UNIFORM)] if method == "netrim" else
                   ["--method", method, "--match", str(report)])
            resumed = Path(f"{out}.nettrim-work").exists()
            if resumed:  # a stopped run: go on from its finished trials (time not whole)
                how.append("--resume")
            r["seconds"][method] = nettrim("prune", str(model), *arch, "--acts", str(acts),
                                           *how, "-o", str(out), "--report", str(rep),
                                           "--force", "-q")
            r["seconds"][f"{method}_cpu"] = CPU["last"]
            r["seconds"][f"{method}_load"] = [load_before, round(os.getloadavg()[0], 2)]
            r["seconds"][f"{method}_resumed"] = resumed
            r["accuracy"].pop(method, None)
            r["ft_accuracy"].pop(method, None)
            (d / f"{pre}{method}-{tag}-ft.pt").unlink(missing_ok=True)
            if method == "netrim":  # new counts: the baselines matched the old ones
                for b in BASELINES:
                    (d / f"{pre}{b}-{tag}.json").unlink(missing_ok=True)
        if method not in r["accuracy"]:
            r["accuracy"][method] = accuracy(load(out, factory, whole), xte, yte)
        s.save()
        ft = d / f"{pre}{method}-{tag}-ft.pt"
        wanted = (method in ft_methods if ft_methods is not None
                  else BASELINE_FT and level == levels(name)[0])
        if method != "netrim" and not wanted:
            continue
        if not ft.exists():
            r["seconds"][f"{method}_ft"] = finetune_fn(out, arch, ft)
            r["ft_accuracy"].pop(method, None)
        if method not in r["ft_accuracy"]:
            r["ft_accuracy"][method] = accuracy(load(ft, factory, whole), xte, yte)
        s.save()


def file_prefix(variant: str = "") -> str:
    """The files' name prefix of a ``variant`` of a level (none for the level itself)."""
    return f"{variant}-" if variant else ""


def level_record(s: Summary, tag: str, variant: str = "") -> dict:
    """The summary's record of level ``tag`` (of its ``variant`` under it when given), with
    the accuracy, fine-tuned accuracy and seconds records it needs."""
    r = s.setdefault("levels", {}).setdefault(tag, {})
    if variant:
        r = r.setdefault(variant, {})
    for key in ("accuracy", "ft_accuracy", "seconds"):
        r.setdefault(key, {})
    return r


def chosen_nets(var: str, known: dict) -> list[str] | None:
    """The networks the environment variable ``var`` names (comma list; all of ``known``
    when unset), or None after one error line when it names an unknown one."""
    nets = [n for n in os.environ.get(var, ",".join(known)).split(",") if n]
    unknown = [n for n in nets if n not in known]
    if unknown:
        print(f"error: {var}: unknown network(s) {', '.join(unknown)} (known: "
              f"{', '.join(known)})", file=sys.stderr)
        return None
    return nets


def main() -> int:
    nets = chosen_nets("CONV_NETS", NETS)
    if nets is None:
        return 2
    data = {"train": load_fashion_mnist("train"), "test": load_fashion_mnist("test")}
    for name in nets:
        d = EXP / name
        d.mkdir(parents=True, exist_ok=True)
        s = Summary(d / "summary.json")
        files = prepare(name, d, data, s)
        for level in levels(name):
            one_level(name, level, d, files, data, s)
    from experiments.conv_results import write_section

    write_section(EXP, ROOT / "docs" / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
