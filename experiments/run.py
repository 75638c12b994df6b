"""`make experiments`: the paper's section 6 on Fashion-MNIST, through the `nettrim` CLI.

For each network (NN2-10K, NN3-30K, NN3-60K, CNN-10K/30K/60K, see NETWORKS) and seed: train it,
dump its activations on the calibration set, prune it with Net-Trim in parallel and cascade
mode, prune it with the baselines (magnitude = the paper's HPTD, Wanda-style,
SparseGPT-style) at the same per-layer counts (`--match`), fine-tune every pruned model with
its mask fixed, evaluate everything on the 10,000 test images, and draw the figures. The same
again at 90% pruning: eps is searched (secant on log eps, see `search`) until the total
pruning is within one point of 90%. Then docs/results.md is written from what is on disk.

Every step writes its output atomically and is skipped when the output exists, so a rerun
resumes where the last one stopped (delete EXP_DIR/<net> to redo a network). Wall times are
measured here and kept in EXP_DIR/<net>/times.json.

Environment: EXP_DIR (default exp_out), NETS (comma list, default all six), SEEDS (default
0,1,2: every network's seed 0 first, then seed 1, then 2),
CALIB_MAX (calibration samples, default 10000: the first samples of the network's training
set), FT_EPOCHS (default 3), DTYPE (of the ADMM solver, default float32). The Net-Trim settings are
configs/fast.toml (the whole-layer ADMM solver, the project's fastest; mode and eps from flags).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from nettrim_cli.datasets import load_fashion_mnist, mlp
from nettrim_cli.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
EXP = Path(os.environ.get("EXP_DIR", ROOT / "exp_out"))
DOCS = ROOT / "docs"
SEEDS = [int(s) for s in os.environ.get("SEEDS", "0,1,2").split(",")]
CALIB_MAX = int(os.environ.get("CALIB_MAX", "10000"))
FT_EPOCHS = int(os.environ.get("FT_EPOCHS", "3"))
CONFIG = ROOT / "configs" / "fast.toml"
DTYPE = os.environ.get("DTYPE", "float32")
NETTRIM = [sys.executable, "-m", "nettrim_cli"]

# name: (architecture, training samples, training epochs)
NETWORKS = {  # in the order they are run (cheapest first)
    "NN2-10K": ("784-300-300-10", 10_000, 30),
    "CNN-10K": ("cnn", 10_000, 15),
    "NN3-30K": ("784-300-500-300-10", 30_000, 15),
    "CNN-30K": ("cnn", 30_000, 8),
    "CNN-60K": ("cnn", 60_000, 5),
    "NN3-60K": ("784-300-1000-300-10", 60_000, 10),
}
# eps of the paper-level setting (relative, section 3.1); gamma for cascade
SETTINGS = {"base": {"parallel": 0.1, "cascade": 0.06, "gamma": 1.1}}
# Beyond the paper: eps (eps_1 in cascade, gamma kept) searched per network and seed until the
# total pruning is TARGET +- TARGET_TOL; at most SEARCH_TRIES new Net-Trim runs per mode.
TARGET, TARGET_TOL, SEARCH_TRIES = 0.90, 0.01, 4
# First guess of d log(1 - pruning) / d log(eps) when only one point is known: about what
# the base and eps 0.3/0.2 runs of NN2-10K, CNN-10K, NN3-30K and CNN-30K gave (-0.6 to -0.7).
GUESS_SLOPE = -0.65
LEVELS = ("base", "p90")
BASELINES = ["magnitude", "wanda", "sparsegpt"]
NOISE = "0,0.2,0.4,0.6,0.8,1.0,1.2,1.4,1.6"


def cnn() -> nn.Sequential:
    """Two 5x5 conv layers of 32 filters, each followed by 2x2 max pooling, a fully connected
    layer of 512 and the output layer (section 6). Inputs are flat 784-vectors."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, 10))


def build(arch: str) -> nn.Sequential:
    return cnn() if arch == "cnn" else mlp(tuple(int(w) for w in arch.split("-")))


def run(*args: str, out: Path | None = None, stdout: Path | None = None) -> float:
    """Run `nettrim ARGS` unless ``out`` (or ``stdout``) exists; returns its wall time."""
    target = out or stdout
    if target is not None and target.exists():
        return 0.0
    t0 = time.perf_counter()
    print("+ nettrim", " ".join(args), flush=True)
    if stdout is not None:
        text = subprocess.run(NETTRIM + list(args), check=True, capture_output=True,
                              text=True).stdout
        tmp = stdout.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(stdout)
    else:
        subprocess.run(NETTRIM + list(args), check=True)
    return time.perf_counter() - t0


def calibration_dump(folder: Path, model: Path, n: int, timed) -> Path:
    """`nettrim dump` of ``model`` on the first ``n`` Fashion-MNIST training images into
    ``folder``/acts.h5 (the images kept as calib.npy), unless it is there; ``timed`` records
    the dump's time. Returns the dump's path."""
    acts = folder / "acts.h5"
    if not acts.exists():
        x, _ = load_fashion_mnist("train")
        np.save(folder / "calib.npy", x[:n])
        timed("dump", run("dump", str(model), "--inputs", str(folder / "calib.npy"), "-o",
                          str(acts), out=acts))
    return acts


def write_h5(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("inputs", data=x.astype(np.float32))
        f.create_dataset("labels", data=y.astype(np.int64))
    tmp.replace(path)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


class Timings:
    """Wall times of an experiment's steps, kept in ``path`` (JSON) as they are measured:
    ``timed(key, seconds)`` records a step that ran (a skipped, cached step returns 0 s and
    keeps its earlier time)."""

    def __init__(self, path: Path, digits: int = 1) -> None:
        self.path, self.digits = path, digits
        self.times: dict[str, float] = load_json(path) if path.exists() else {}

    def __call__(self, key: str, seconds: float) -> None:
        if seconds > 0:
            self.times[key] = round(seconds, self.digits)
            self.path.write_text(json.dumps(self.times, indent=1, sort_keys=True))


def one_network(name: str, seed: int, data: dict) -> None:
    arch, n_train, epochs = NETWORKS[name]
    d = EXP / name / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    timed = Timings(d / "times.json", digits=2)

    xtr, ytr = data["train"][0][:n_train], data["train"][1][:n_train]
    train_h5, test_h5 = d / "train.h5", EXP / "test.h5"
    write_h5(train_h5, xtr, ytr)
    calib = d / "calib.npy"
    if not calib.exists():
        np.save(calib, xtr[:CALIB_MAX])
        np.save(d / "calib_labels.npy", ytr[:CALIB_MAX])
    model = d / "model.pt"
    if not model.exists():
        t0 = time.perf_counter()
        net = build(arch)
        train(net, xtr, ytr, TrainConfig(epochs=epochs, seed=seed))  # Adam, lr 1e-3, batch 128
        torch.save(net, d / "model.tmp")
        (d / "model.tmp").replace(model)
        timed("train", time.perf_counter() - t0)
    acts = d / "acts.h5"
    timed("dump", run("dump", str(model), "--inputs", str(calib), "--labels",
                      str(d / "calib_labels.npy"), "-o", str(acts), out=acts))
    run("eval", str(model), "--data", str(test_h5), "--noise", NOISE, "--format", "json",
        stdout=d / "eval-original.json")
    for mode in ("parallel", "cascade"):
        for level in LEVELS:
            tag = f"{level}-netrim-{mode}"
            report = d / f"{tag}.json"
            if level == "base":
                args = prune_args(model, acts, mode, SETTINGS["base"][mode], d / f"{tag}.pt",
                                  report)
                timed(f"prune {tag}", run(*args, out=report))
            else:
                search(d, mode, model, acts, timed)
            for method in BASELINES:
                btag = f"{level}-{method}-{mode}"
                timed(f"prune {btag}", run(
                    "prune", str(model), "--acts", str(acts), "--method", method, "--match",
                    str(report), "-o", str(d / f"{btag}.pt"), "--report",
                    str(d / f"{btag}.json"), "-q", out=d / f"{btag}.json"))
            for t in [tag] + [f"{level}-{m}-{mode}" for m in BASELINES]:
                noise = ["--noise", NOISE] if level == "base" and t in (
                    tag, f"base-magnitude-{mode}") else []
                run("eval", str(d / f"{t}.pt"), "--data", str(test_h5), *noise, "--format",
                    "json", stdout=d / f"eval-{t}.json")
                ft = d / f"{t}-ft.pt"
                timed(f"finetune {t}", run(
                    "finetune", str(d / f"{t}.pt"), "--data", str(train_h5), "--epochs",
                    str(FT_EPOCHS), "--lr", "1e-4", "--seed", str(seed), "-o", str(ft),
                    "--summary", str(d / f"{t}-ft.json"), "-q", out=ft))
                run("eval", str(ft), "--data", str(test_h5), "--format", "json",
                    stdout=d / f"eval-{t}-ft.json")


def prune_args(model: Path, acts: Path, mode: str, eps: float, pruned: Path,
               report: Path) -> list[str]:
    args = ["prune", str(model), "--acts", str(acts), "--config", str(CONFIG), "--mode", mode,
            "--epsilon", f"{eps:.6g}", "--dtype", DTYPE, "-o", str(pruned), "--report",
            str(report), "-q"]
    if Path(f"{pruned}.nettrim-work").exists():
        args.append("--resume")  # an earlier run of this step was stopped: go on from it
    return args + (["--gamma", str(SETTINGS["base"]["gamma"])] if mode == "cascade" else [])


def search_points(d: Path, mode: str) -> list[tuple[float, float, str]]:
    """(eps, total pruning, report name) of every Net-Trim run of ``mode`` in ``d``, read
    from the reports (their settings carry the eps; a cascade run counts only at the base
    gamma)."""
    points = []
    for rep in sorted(d.glob(f"*-netrim-{mode}.json")):
        if rep.name.startswith(("p90-netrim", "eval-")):
            continue  # the chosen copy of a try; evaluations
        r = load_json(rep)
        if mode == "cascade" and r["settings"].get("gamma") != SETTINGS["base"]["gamma"]:
            continue
        points.append((float(r["settings"]["epsilon"]), r["network"]["pruned_fraction"],
                       rep.name))
    return sorted(points)


def next_eps(points: list[tuple[float, float, str]], target: float) -> float:
    """The eps whose total pruning is predicted to be ``target``: log(1 - pruning) is taken
    as linear in log(eps) through the two known points nearest the target (one point: the
    GUESS_SLOPE), kept inside any bracket the points give."""
    near = sorted(points, key=lambda p: abs(p[1] - target))[:2]
    e1, f1 = near[0][0], near[0][1]
    slope = GUESS_SLOPE
    if len(near) == 2 and near[1][1] != f1 and near[1][0] != e1:
        e2, f2 = near[1][0], near[1][1]
        slope = (np.log(1 - f2) - np.log(1 - f1)) / (np.log(e2) - np.log(e1))
        if slope >= 0:  # pruning did not grow with eps: step out by the guess instead
            slope = GUESS_SLOPE
    eps = float(np.exp(np.log(e1) + (np.log(1 - target) - np.log(1 - f1)) / slope))
    below = [p[0] for p in points if p[1] < target]
    above = [p[0] for p in points if p[1] > target]
    lo, hi = max(below, default=0.0), min(above, default=np.inf)
    if not lo < eps < hi:  # outside the bracket: bisect it (geometrically when both ends known)
        eps = float(np.sqrt(lo * hi)) if lo > 0 and np.isfinite(hi) else (
            2 * lo if lo > 0 else hi / 2)
    return eps


def search(d: Path, mode: str, model: Path, acts: Path, timed) -> None:
    """Net-Trim at about TARGET total pruning: run ``p90-try<k>-netrim-<mode>`` at the eps
    that ``next_eps`` predicts (the first try of a later seed: the eps the other seeds kept)
    until one lands within TARGET_TOL (or SEARCH_TRIES runs), then copy the run nearest the
    target to ``p90-netrim-<mode>`` (.pt and .json)."""
    chosen_pt, chosen = d / f"p90-netrim-{mode}.pt", d / f"p90-netrim-{mode}.json"
    if chosen.exists():
        return
    others = [load_json(c)["settings"]["epsilon"] for c in sorted(
        d.parent.glob(f"seed*/p90-netrim-{mode}.json")) if c.parent != d]
    points = search_points(d, mode)
    for k in range(1, SEARCH_TRIES + 1):
        if any(abs(f - TARGET) <= TARGET_TOL for _, f, _ in points):
            break
        tag = f"p90-try{k}-netrim-{mode}"
        if (d / f"{tag}.json").exists():
            continue
        eps = next_eps(points, TARGET)
        if len(points) == 1 and others:  # another seed's answer is the better first guess
            eps = float(np.median(others))
        timed(f"prune {tag}", run(*prune_args(model, acts, mode, eps, d / f"{tag}.pt",
                                              d / f"{tag}.json"), out=d / f"{tag}.json"))
        points = search_points(d, mode)
    best = min(points, key=lambda p: abs(p[1] - TARGET))[2]
    shutil.copyfile(d / best.replace(".json", ".pt"), chosen_pt.with_suffix(".tmp"))
    chosen_pt.with_suffix(".tmp").replace(chosen_pt)
    r = load_json(d / best)
    r["search"] = {"target": TARGET, "tolerance": TARGET_TOL, "chosen": best,
                   "points": [{"epsilon": e, "pruned_fraction": f, "report": n}
                              for e, f, n in points]}
    tmp = chosen.with_suffix(".tmp")
    tmp.write_text(json.dumps(r, indent=1))
    tmp.replace(chosen)


def main() -> int:
    nets = [n for n in os.environ.get("NETS", ",".join(NETWORKS)).split(",") if n]
    EXP.mkdir(parents=True, exist_ok=True)
    data = {"train": load_fashion_mnist("train"), "test": load_fashion_mnist("test")}
    write_h5(EXP / "test.h5", *data["test"])
    (EXP / "machine.json").write_text(json.dumps({
        "cpu": _cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__}, indent=1))
    for seed in SEEDS:  # every network once before any second seed
        for name in nets:
            one_network(name, seed, data)
    from experiments import figures, write_results

    figures.main(EXP, DOCS)
    write_results.main(EXP, DOCS, nets, SEEDS)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
