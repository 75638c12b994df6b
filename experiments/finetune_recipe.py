"""`make finetune-recipe`: how the default of `nettrim finetune` was chosen.

NN2-10K of the experiments (784-300-300-10, trained on the first 10,000 Fashion-MNIST training
images for 30 epochs, seed 0) is pruned to 90% and to 95% of its weights two ways each:
Net-Trim (`nettrim prune --sparsity S`, cascade, the default solver, 2,000 calibration
samples) and the SparseGPT-style baseline at the same per-layer counts (`--match`). Each
pruned network is then fine-tuned on the same 10,000 images with every recipe of a grid (Adam;
constant rate or cosine decay; lr x epochs) and evaluated on the 10,000 test images. The
recipe with the best mean test accuracy over the four starts at DEFAULT_EPOCHS epochs or fewer
is the one to make the default (the doc says whether it is). The networks the other
experiments report on (LeNet300, LeNet-5, NN3-60K, CNN-60K) play no part in the choice. The
table goes to docs/finetune-recipe.md; every step is cached in EXP_DIR/recipe (default
exp_out/recipe).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nettrim_cli.datasets import load_fashion_mnist, mlp
from nettrim_cli.evaluate import evaluate
from nettrim_cli.finetune import finetune
from nettrim_cli.recipe import DEFAULT_EPOCHS, DEFAULT_LR, Recipe
from nettrim_cli.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("EXP_DIR", ROOT / "exp_out")) / "recipe"
DOC = ROOT / "docs" / "finetune-recipe.md"
NETTRIM = [sys.executable, "-m", "nettrim_cli"]
N_TRAIN, N_CALIB, TRAIN_EPOCHS, TARGETS = 10_000, 2_000, 30, (0.9, 0.95)
GRID = [("constant", 1e-4, 3)] + [("cosine", lr, e) for lr in (1e-3, 3e-3, 1e-2, 3e-2)
                                  for e in (5, 10, 20)]


def cli(*args: str) -> None:
    print("+ nettrim", " ".join(args), flush=True)
    subprocess.run(NETTRIM + list(args), check=True)


def prepare(xtr: np.ndarray, ytr: np.ndarray) -> dict[str, Path]:
    """The trained network and its two 90% prunes (cached)."""
    OUT.mkdir(parents=True, exist_ok=True)
    model = OUT / "model.pt"
    if not model.exists():
        net = mlp((784, 300, 300, 10))
        train(net, xtr, ytr, TrainConfig(epochs=TRAIN_EPOCHS, seed=0))
        torch.save(net, model)
    acts = OUT / "acts.h5"
    if not acts.exists():
        np.save(OUT / "calib.npy", xtr[:N_CALIB])
        cli("dump", str(model), "--inputs", str(OUT / "calib.npy"), "-o", str(acts))
    pruned = {}
    for target in TARGETS:
        pct = round(100 * target)
        nt, sg = OUT / f"netrim-{pct}.pt", OUT / f"sparsegpt-{pct}.pt"
        if not nt.exists():
            work = Path(f"{nt}.nettrim-work")
            cli("prune", str(model), "--acts", str(acts), "--mode", "cascade", "--sparsity",
                str(target), "--allocation", "uniform", "-o", str(nt), "--report",
                str(OUT / f"netrim-{pct}.json"), "-q",
                *(["--resume"] if work.exists() else []))
        if not sg.exists():
            cli("prune", str(model), "--acts", str(acts), "--method", "sparsegpt", "--match",
                str(OUT / f"netrim-{pct}.json"), "-o", str(sg), "-q")
        pruned.update({f"netrim-{pct}": nt, f"sparsegpt-{pct}": sg})
    return {"dense": model, **pruned}


def main() -> None:
    xtr, ytr = load_fashion_mnist("train")
    xtr, ytr = xtr[:N_TRAIN], ytr[:N_TRAIN]
    xte, yte = load_fashion_mnist("test")
    paths = prepare(xtr, ytr)
    cache = OUT / "grid.json"
    rows = json.loads(cache.read_text()) if cache.exists() else {}
    dense = evaluate(torch.load(paths["dense"], weights_only=False), xte, yte)[0]["accuracy"]
    for start in [k for k in paths if k != "dense"]:
        key = f"{start} none 0 0"
        if key not in rows:
            m = torch.load(paths[start], weights_only=False)
            rows[key] = {"test": evaluate(m, xte, yte)[0]["accuracy"], "seconds": 0.0}
        for schedule, lr, epochs in GRID:
            key = f"{start} {schedule} {lr:g} {epochs}"
            if key in rows:
                continue
            m = torch.load(paths[start], weights_only=False)
            t0 = time.perf_counter()
            finetune(m, xtr, ytr, Recipe(epochs=epochs, lr=lr, schedule=schedule))
            rows[key] = {"test": evaluate(m, xte, yte)[0]["accuracy"],
                         "seconds": time.perf_counter() - t0}
            print(key, rows[key], flush=True)
            cache.write_text(json.dumps(rows, indent=1))
    write_doc(rows, dense)


def write_doc(rows: dict, dense: float) -> None:
    starts = sorted({key.split()[0] for key in rows})
    recipes = list(dict.fromkeys(" ".join(key.split()[1:]) for key in rows))
    mean = {r: float(np.mean([rows[f"{s} {r}"]["test"] for s in starts])) for r in recipes
            if all(f"{s} {r}" in rows for s in starts)}
    short = [r for r in mean if r != "none 0 0" and int(r.split()[2]) <= DEFAULT_EPOCHS]
    best = max(short, key=mean.get)
    default = f"cosine {DEFAULT_LR:g} {DEFAULT_EPOCHS}"
    lines = [
        "# The default fine-tune (`make finetune-recipe`)", "",
        f"NN2-10K (784-300-300-10, {N_TRAIN} Fashion-MNIST training images, {TRAIN_EPOCHS} "
        f"epochs, seed 0), dense test accuracy **{100 * dense:.2f}%**, pruned to 90% and 95% "
        "of its weights by Net-Trim (`--sparsity S --mode cascade`) and by the SparseGPT-style "
        "baseline at the same per-layer counts, then fine-tuned (Adam, batch 128, seed 0, "
        f"zeros frozen) on the same {N_TRAIN} images. Test accuracy (%) on the 10,000 test "
        f"images; machine: {platform.machine()}, {os.cpu_count()} cores.", "",
        "| schedule | lr | epochs | " + " | ".join(starts) + " | mean | FT seconds (mean) |",
        "|---" * (len(starts) + 5) + "|"]
    for r in recipes:
        schedule, lr, epochs = r.split()
        mark = " (default)" if r == default else ""
        cells = [f"{100 * rows[f'{s} {r}']['test']:.2f}" if f"{s} {r}" in rows else "-"
                 for s in starts]
        secs = np.mean([rows[f"{s} {r}"]["seconds"] for s in starts if f"{s} {r}" in rows])
        lines.append(f"| {schedule}{mark} | {lr} | {epochs} | " + " | ".join(cells)
                     + (f" | {100 * mean[r]:.2f} | {secs:.1f} |" if r in mean else " | - | |"))
    verdict = ("it is the default" if best == default else
               f"the default ({default}) is NOT it: change nettrim_cli/recipe.py")
    lines += ["", f"Best mean at {DEFAULT_EPOCHS} epochs or fewer: {best} "
              f"({100 * mean[best]:.2f}%); {verdict}. The cost to compare is epochs x samples "
              "(FT seconds are wall times on a shared machine)."]
    DOC.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
