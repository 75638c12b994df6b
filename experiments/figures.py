"""Figures 1, 3 and 4 of the paper, redrawn from the experiment outputs (matplotlib, the
`plots` extra). Figure 1 runs the spiral demo through the CLI first (cached like the rest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
NETTRIM = [sys.executable, "-m", "nettrim_cli"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _linears(path: Path) -> list[np.ndarray]:
    model = torch.load(path, weights_only=False)  # our own files, made by run.py
    return [m.weight.detach().double().numpy() for m in model.modules()
            if isinstance(m, torch.nn.Linear)]


def spiral(exp: Path) -> Path | None:
    """Figure 1: the spiral classifier's decision regions before and after cascade Net-Trim,
    and the adjacency (nonzero pattern) of its hidden-to-hidden layer."""
    from nettrim_cli import demo

    d = exp / "spiral"
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "model.pt").exists():
        subprocess.run([sys.executable, "-m", "nettrim_cli.demo", "train", "--out", str(d)],
                       check=True)
    if not (d / "acts.h5").exists():
        subprocess.run(NETTRIM + ["dump", str(d / "model.pt"), "--inputs", str(d / "calib.npy"),
                                  "--labels", str(d / "labels.npy"), "-o", str(d / "acts.h5")],
                       check=True)
    if not (d / "report.json").exists():
        subprocess.run(NETTRIM + ["prune", str(d / "model.pt"), "--acts", str(d / "acts.h5"),
                                  "--config", str(ROOT / "configs/demo.toml"), "-o",
                                  str(d / "pruned.pt"), "--report", str(d / "report.json"),
                                  "-q"], check=True)
    plt = _plt()
    X = np.load(d / "calib.npy")
    y = np.load(d / "labels.npy")
    before, after = demo.load_module(str(d / "model.pt")), demo.load_module(str(d / "pruned.pt"))
    steps = 300
    grid = demo.grid_points(X, steps=steps)
    pa = demo.predict(before, grid).reshape(steps, steps)
    pb = demo.predict(after, grid).reshape(steps, steps)
    ext = [grid[:, 0].min(), grid[:, 0].max(), grid[:, 1].min(), grid[:, 1].max()]
    w_before, w_after = _linears(d / "model.pt"), _linears(d / "pruned.pt")
    fig, ax = plt.subplots(2, 2, figsize=(9, 9))
    for a, p, title in ((ax[0, 0], pa, "initial network"), (ax[0, 1], pb, "Net-Trim (cascade)")):
        a.imshow(p, origin="lower", extent=ext, cmap="coolwarm", alpha=0.35, aspect="auto")
        a.scatter(X[:, 0], X[:, 1], c=y, cmap="coolwarm", s=8, edgecolors="k", linewidths=0.2)
        a.set_title(title)
    for a, W, title in ((ax[1, 0], w_before[1], "hidden-to-hidden links, initial"),
                        (ax[1, 1], w_after[1], "hidden-to-hidden links, Net-Trim")):
        a.imshow(W != 0, cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        a.set_title(f"{title}: {np.count_nonzero(W)} of {W.size}")
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    out = exp / "fig1-spiral.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    changed = float((pa != pb).mean())
    (exp / "fig1-spiral.json").write_text(json.dumps({
        "links_before": int(np.count_nonzero(w_before[1])),
        "links_after": int(np.count_nonzero(w_after[1])),
        "grid_changed_fraction": changed}, indent=1))
    return out


def first_layer(exp: Path, net: str = "NN2-10K", seed: int = 0) -> Path | None:
    """Figure 3: the first layer's weights after Net-Trim and after HPTD (same count)."""
    d = exp / net / f"seed{seed}"
    files = [(d / "base-netrim-parallel.pt", "Net-Trim (parallel)"),
             (d / "base-magnitude-parallel.pt", "HPTD (magnitude), same count")]
    if not all(f.exists() for f, _ in files):
        return None
    plt = _plt()
    fig, ax = plt.subplots(2, 2, figsize=(11, 9), gridspec_kw={"height_ratios": [3, 1.4]})
    for k, (f, title) in enumerate(files):
        W1 = _linears(f)[0]  # (300, 784)
        ax[0, k].imshow(np.abs(W1.T), cmap="Greys", aspect="auto", interpolation="nearest",
                        vmax=np.percentile(np.abs(W1[W1 != 0]), 95))
        ax[0, k].set_title(f"|W1|^T, {title}")
        ax[0, k].set_xlabel("hidden unit")
        ax[0, k].set_ylabel("input pixel")
        per_pixel = (W1 != 0).sum(axis=0).reshape(28, 28)
        im = ax[1, k].imshow(per_pixel, cmap="viridis")
        ax[1, k].set_title("nonzero weights per input pixel")
        ax[1, k].set_xticks([])
        ax[1, k].set_yticks([])
        fig.colorbar(im, ax=ax[1, k], fraction=0.046)
    fig.tight_layout()
    out = exp / "fig3-first-layer.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def noise(exp: Path, nets: tuple[str, ...] = ("NN2-10K", "CNN-10K"), seed: int = 0) -> Path | None:
    """Figure 4: test accuracy against the std of Gaussian noise added to the inputs."""
    plt = _plt()
    found = [n for n in nets if (exp / n / f"seed{seed}" / "eval-original.json").exists()]
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(5.5 * len(found), 4), squeeze=False)
    for a, net in zip(axes[0], found, strict=True):
        d = exp / net / f"seed{seed}"
        for name, label in (("eval-original.json", "initial"),
                            ("eval-base-netrim-parallel.json", "Net-Trim parallel"),
                            ("eval-base-netrim-cascade.json", "Net-Trim cascade"),
                            ("eval-base-magnitude-cascade.json", "HPTD (cascade count)")):
            if not (d / name).exists():
                continue
            rows = json.loads((d / name).read_text())["results"]
            if len(rows) < 2:
                continue
            a.plot([r["noise"] for r in rows], [100 * r["accuracy"] for r in rows], "o-",
                   label=label, ms=3)
        a.set_title(net)
        a.set_xlabel("noise std (input units, pixels in [0, 1])")
        a.set_ylabel("test accuracy (%)")
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    out = exp / "fig4-noise.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(exp: Path, docs: Path) -> list[Path]:
    made = [p for p in (spiral(exp), first_layer(exp), noise(exp)) if p is not None]
    docs.mkdir(exist_ok=True)
    for p in made:
        (docs / p.name).write_bytes(p.read_bytes())
    return made
