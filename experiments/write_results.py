"""docs/results.md from the experiment outputs on disk: every figure in it is read from a file
that a `nettrim` command wrote (reports, eval JSON, fine-tune summaries, times.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.run import (
    BASELINES,
    CALIB_MAX,
    DTYPE,
    FT_EPOCHS,
    LEVELS,
    NETWORKS,
    SETTINGS,
    TARGET,
    TARGET_TOL,
)

LABEL = {"magnitude": "HPTD (magnitude)", "wanda": "Wanda-style", "sparsegpt": "SparseGPT-style"}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _acc(path: Path) -> float | None:
    e = _load(path)
    return None if e is None else 100.0 * e["results"][0]["accuracy"]


def _fmt(values: list[float | None], digits: int = 2) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def _seeds(exp: Path, net: str, seeds: list[int], level: str | None = None) -> list[int]:
    """The seeds of ``net`` whose run at ``level`` (default: every level) is complete on disk:
    its last outputs in both modes exist."""
    levels = LEVELS if level is None else (level,)
    return [s for s in seeds if all(
        (exp / net / f"seed{s}" / f"eval-{lv}-{BASELINES[-1]}-{m}-ft.json").exists()
        for lv in levels for m in ("parallel", "cascade"))]


def _table(exp: Path, nets: list[str], seeds: list[int], level: str) -> list[str]:
    lines = []
    for mode in ("parallel", "cascade"):
        eps_row = "eps" + (" (eps_1)" if mode == "cascade" else "")
        rows: dict[str, list[str]] = {k: [] for k in (
            "initial accuracy", eps_row,
            "total pruning (%)", "Net-Trim overall discrepancy (rel.)",
            "Net-Trim accuracy, no FT", "Net-Trim + FT")}
        for m in BASELINES:
            rows[f"{LABEL[m]} accuracy, no FT"] = []
            rows[f"{LABEL[m]} + FT"] = []
        for net in nets:
            ds = [exp / net / f"seed{s}" for s in _seeds(exp, net, seeds, level)]
            tag = f"{level}-netrim-{mode}"
            reps = [_load(d / f"{tag}.json") for d in ds]
            rows["initial accuracy"].append(_fmt([_acc(d / "eval-original.json") for d in ds]))
            rows[eps_row].append(_fmt(
                [r["settings"]["epsilon"] if r else None for r in reps], 3))
            rows["total pruning (%)"].append(_fmt(
                [100 * r["network"]["pruned_fraction"] if r else None for r in reps], 1))
            rows["Net-Trim overall discrepancy (rel.)"].append(_fmt(
                [r["network"]["relative_discrepancy"] if r else None for r in reps], 3))
            rows["Net-Trim accuracy, no FT"].append(_fmt([_acc(d / f"eval-{tag}.json")
                                                          for d in ds]))
            rows["Net-Trim + FT"].append(_fmt([_acc(d / f"eval-{tag}-ft.json") for d in ds]))
            for m in BASELINES:
                b = f"{level}-{m}-{mode}"
                rows[f"{LABEL[m]} accuracy, no FT"].append(
                    _fmt([_acc(d / f"eval-{b}.json") for d in ds]))
                rows[f"{LABEL[m]} + FT"].append(_fmt([_acc(d / f"eval-{b}-ft.json")
                                                      for d in ds]))
        how = (f"eps = {SETTINGS[level][mode]}" if level in SETTINGS else
               f"eps searched per network and seed for {100 * TARGET:.0f} +- "
               f"{100 * TARGET_TOL:.0f}% total pruning")
        lines += [f"**{mode} Net-Trim** ({how}"
                  + (f", gamma = {SETTINGS['base']['gamma']}" if mode == "cascade" else "")
                  + "); accuracies in % on the 10,000 test images", "",
                  "| | " + " | ".join(nets) + " |", "|---|" + "---|" * len(nets)]
        lines += [f"| {k} | " + " | ".join(v) + " |" for k, v in rows.items()]
        lines.append("")
    return lines


def _times(exp: Path, nets: list[str], seeds: list[int]) -> list[str]:
    keys: list[str] = []
    per: dict[str, dict[str, float]] = {}
    for net in nets:
        for s in _seeds(exp, net, seeds, "base"):
            t = _load(exp / net / f"seed{s}" / "times.json") or {}
            per[f"{net} seed {s}"] = t
            keys += [k for k in t if k not in keys and k.startswith(("prune", "train", "dump"))]
    keys.sort(key=lambda k: (not k.startswith("train"), not k.startswith("dump"), k))
    lines = ["| step | " + " | ".join(per) + " |", "|---|" + "---|" * len(per)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(
            f"{t[k]:.1f}" if k in t else "–" for t in per.values()) + " |")
    return lines


def _search(exp: Path, nets: list[str], seeds: list[int]) -> list[str]:
    """Every Net-Trim run of the 90% search: eps -> total pruning, and which one was kept."""
    lines = ["| network | seed | mode | runs: eps -> total pruning (the kept one in bold) |",
             "|---|---|---|---|"]
    for net in nets:
        for s in _seeds(exp, net, seeds, "p90"):
            for mode in ("parallel", "cascade"):
                r = _load(exp / net / f"seed{s}" / f"p90-netrim-{mode}.json") or {}
                srch = r.get("search", {})
                cells = []
                for pt in srch.get("points", []):
                    c = f"{pt['epsilon']:.3g} -> {100 * pt['pruned_fraction']:.1f}%"
                    cells.append(f"**{c}**" if pt["report"] == srch.get("chosen") else c)
                lines.append(f"| {net} | {s} | {mode} | {', '.join(cells)} |")
    return lines


def _layers(exp: Path, net: str, seed: int, level: str) -> list[str]:
    lines = ["| layer | shape | parallel sparsity | parallel rel. discrepancy | cascade sparsity "
             "| cascade rel. discrepancy |", "|---|---|---|---|---|---|"]
    reps = {m: _load(exp / net / f"seed{seed}" / f"{level}-netrim-{m}.json")
            for m in ("parallel", "cascade")}
    if not all(reps.values()):
        return []
    for lp, lc in zip(reps["parallel"]["layers"], reps["cascade"]["layers"], strict=True):
        if lp.get("sparsity") is None:
            continue
        lines.append(f"| {lp['name']} | {lp.get('shape')} | {100 * lp['sparsity']:.1f}% | "
                     f"{lp['relative_discrepancy']:.4f} | {100 * lc['sparsity']:.1f}% | "
                     f"{lc['relative_discrepancy']:.4f} |")
    return lines


def _cnn_scope(exp: Path, done: list[str]) -> str:
    """What the CNN runs pruned, read from a CNN's Net-Trim report (conv layers are pruned
    since issue 14; runs made before kept them)."""
    for rep in sorted(exp.glob("CNN-*/seed*/base-netrim-parallel.json")):
        kinds = {la.get("kind") for la in _load(rep)["layers"]
                 if la.get("nonzeros_after") is not None}
        if "conv" in kinds:
            return "The CNNs prune every layer, the conv layers included."
        return ("The CNNs prune their two fully connected layers only, as the paper does (the "
                "conv layers are kept; this run predates conv pruning).")
    return ""


def main(exp: Path, docs: Path, nets: list[str], seeds: list[int]) -> Path:
    done = [n for n in nets if _seeds(exp, n, seeds, "base")]
    machine = _load(exp / "machine.json") or {}
    spiral = _load(exp / "fig1-spiral.json")
    nets_text = ", ".join(f"{n} ({NETWORKS[n][0]}, {NETWORKS[n][1]:,} training images, "
                          f"{NETWORKS[n][2]} epochs)" for n in done)
    out = [
        "# Experiments: the paper's section 6 on Fashion-MNIST",
        "",
        "Made by `make experiments` (experiments/run.py); every number below is read from a "
        "file a `nettrim` command wrote in that run. MNIST cannot be had on these machines; "
        "Fashion-MNIST (Debian package `dataset-fashion-mnist`) has the same shapes and is "
        "harder, so accuracies are lower than the paper's throughout.",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"Python {machine.get('python', '?')}, torch {machine.get('torch', '?')}.",
        "",
        "## What was run",
        "",
        f"- Networks: {nets_text}; seeds: "
        + "; ".join(f"{n} {', '.join(map(str, _seeds(exp, n, seeds, 'base')))}" for n in done)
        + " (values are mean ± standard deviation, numpy's ddof 0, over the seeds where "
        "there are several). "
        "Trained with Adam (lr 1e-3, batch 128), cross-entropy, "
        "no augmentation. " + _cnn_scope(exp, done),
        (f"- Not in this run: {', '.join(n for n in NETWORKS if n not in done)} (time: each "
         "network's Net-Trim runs take tens of minutes on 2 cores; `make experiments` picks "
         "up where it stopped). " if len(done) < len(NETWORKS) else "- ")
        + "The issue asks for three seeds per network where the compute allows; the 2-core "
        "machine allowed the seeds listed above in the time given (a rerun adds the rest).",
        f"- Calibration data (the X of every layer program): the first {CALIB_MAX:,} images "
        "of each network's training set (the paper uses the whole training set; this keeps "
        "the 30K/60K runs within the machine's time).",
        f"- Net-Trim: `nettrim prune --config configs/fast.toml --dtype {DTYPE}` (the "
        "whole-layer ADMM solver stopped on its residuals at relative tolerance 1e-3, no "
        "polish, support refit onto eps) in parallel and "
        "cascade mode at the eps below. Baselines: `nettrim prune --method "
        "magnitude|wanda|sparsegpt --match <the Net-Trim report>`, so every baseline has "
        "exactly the Net-Trim model's per-layer "
        "nonzero counts. HPTD is the paper's name for magnitude pruning.",
        f"- FT: `nettrim finetune --epochs {FT_EPOCHS} --lr 1e-4` on the network's training "
        "set with the pruned weights held at zero.",
        "",
        "## Table 1 (Fashion-MNIST), about the paper's pruning level",
        "",
    ]
    if done:
        out += _table(exp, done, seeds, "base")
        p90 = [n for n in done if _seeds(exp, n, seeds, "p90")]
        out += ["## Beyond the paper: 90% pruning", "",
                "The reviewers found 80% low. Here eps is searched for each network, seed and "
                "mode until Net-Trim prunes 90% of the weights (within one point): log(1 - "
                "pruning) is taken as linear in log eps through the two nearest runs "
                "(experiments/run.py `search`). The baselines again match the kept run's "
                "per-layer counts.", ""]
        out += _table(exp, p90, seeds, "p90")
        out += ["Every Net-Trim run of the search (the paper-level run and, where it exists, "
                "an earlier fixed-eps run at 0.3 / 0.2 count as points):", ""]
        out += _search(exp, p90, seeds) + [""]
        for net in done:
            first = _seeds(exp, net, seeds, "base")[0]
            lines = _layers(exp, net, first, "base")
            if lines:
                out += [f"### Per layer: {net}, seed {first}, first setting", ""] + lines + [""]
        out += ["## Wall time of every step (seconds)", ""] + _times(exp, done, seeds) + [""]
    out += ["## Figures", ""]
    if spiral:
        out += ["### Figure 1: the spiral", "", "![Figure 1](fig1-spiral.png)", "",
                f"Hidden-to-hidden links: {spiral['links_before']} before, "
                f"{spiral['links_after']} after cascade Net-Trim (configs/demo.toml); "
                f"{100 * spiral['grid_changed_fraction']:.1f}% of a 300x300 grid of the "
                "plane changes class.", ""]
    for name, title in (("fig3-first-layer.png", "Figure 3: the first layer's weights"),
                        ("fig4-noise.png", "Figure 4: accuracy against input noise")):
        if (exp / name).exists():
            out += [f"### {title}", "", f"![{title}]({name})", ""]
    out += ["READING", ""]
    docs.mkdir(exist_ok=True)
    path = docs / "results.md"
    text = "\n".join(out)
    reading = docs / "results-reading.md"
    text = text.replace("READING", reading.read_text() if reading.exists() else
                        "(no reading written yet)")
    from experiments.conv_results import keep_section
    from experiments.lc_results import carry

    # the sections of `make experiments-lc` and `make conv-experiments` are kept as they are
    old = path.read_text() if path.exists() else ""
    path.write_text(keep_section(old, carry(old, text)))
    return path
