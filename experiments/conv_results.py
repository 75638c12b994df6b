"""The section "Whole conv networks" of docs/results.md, written from the files
`experiments/convnets.py` left on disk (summary.json, the prune reports); the rest of
docs/results.md is kept as it is."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

START, END = "<!-- conv-experiments:start -->", "<!-- conv-experiments:end -->"
TITLES = {"lenet5": "LeNet-5", "resnet": "small ResNet"}
METHODS = (("netrim", "Net-Trim (parallel)"), ("magnitude", "magnitude (HPTD)"),
           ("wanda", "Wanda-style"), ("sparsegpt", "SparseGPT-style"))


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else str(v)


def _secs(v) -> str:
    return "not recorded" if v is None else f"{v} s"


def _ratio(a, b):
    return a / b if a is not None and b else None


def net_lines(name: str, d: Path) -> list[str]:
    s = json.loads((d / "summary.json").read_text())
    rep = json.loads((d / "netrim.json").read_text())
    n, m = rep["network"], rep["network"]["model"]
    acc, ft = s["accuracy"], s["ft_accuracy"]
    out = [f"### {TITLES.get(name, name)}", "",
           f"Trained on {s['n_train']} images for {s['epochs']} epochs; calibration: the first "
           f"{s['calib']} training images; `nettrim prune --config fast --dtype float32 --mode "
           f"parallel --epsilon {s['epsilon']}` (default patch budget); FT: `nettrim finetune "
           f"--epochs {s['ft_epochs']} --lr 1e-4` on the training images. Accuracies on the "
           "10,000 test images.", "",
           "| | accuracy no FT (%) | + FT (%) |", "|---|---|---|",
           f"| original | {acc['original']:.2f} | - |"]
    for key, title in METHODS:
        if key not in acc:
            out.append(f"| {title} | not run | not run |")
            continue
        tuned = f"{ft[key]:.2f}" if key in ft else "not run"
        out.append(f"| {title} | {acc[key]:.2f} | {tuned} |")
    for pt in s.get("more_eps", []):  # further Net-Trim runs at other eps (no FT)
        out.append(f"| Net-Trim at eps {pt['epsilon']} ({_pct(pt['pruned_fraction'])} of the "
                   f"pruned layers' weights, {_pct(pt['zero_fraction'])} of all parameters "
                   f"zero; prune {pt['prune_seconds']} s wall, {pt['prune_cpu_seconds']} s CPU) "
                   f"| {pt['accuracy']:.2f} | not run |")
    out += ["",
            f"- Pruned layers: {', '.join(m['pruned_layers'])}; kept as modules: "
            + (f"{', '.join(m['kept_layers'])} (BatchNorm, folded for the programs)."
               if m["kept_layers"] else "none."),
            f"- Weights of the pruned layers: {n['nonzeros_before']} -> {n['nonzeros_after']} "
            f"({_pct(n['pruned_fraction'])} pruned); whole model, every parameter (biases and "
            f"BatchNorm included): {m['nonzeros_before']} -> {m['nonzeros_after']} nonzero of "
            f"{m['params']} ({_pct(m['zero_fraction'])} zero).",
            f"- Multiply-adds per image (pruned units): {_num(n['flops_dense'])} dense -> "
            f"{_num(n['flops_pruned'])} with the nonzero weights.",
            f"- Wall time (s, 2 shared cores, other jobs running): train {s.get('train_seconds')}"
            f", dump {s['dump_seconds']}, Net-Trim prune {s['prune_seconds']} (the whole "
            f"command; CPU time {_secs(s.get('prune_cpu_seconds'))}), magnitude "
            f"{s.get('magnitude_seconds')}, Wanda {s.get('wanda_seconds')}, "
            f"SparseGPT {s.get('sparsegpt_seconds')}, FT of the Net-Trim model "
            f"{s.get('netrim_ft_seconds')}.".replace("None", "not recorded"), "",
            "| layer | kind | program | shape | sparsity | patches used / all | rel. disc. "
            "(program) | rel. disc. (all patches) | MACs dense -> pruned |",
            "|---|---|---|---|---|---|---|---|---|"]
    for la in rep["layers"]:
        if la.get("nonzeros_after") is None:
            continue
        prog = la["activation"] + (" + BN" if "folded" in la["program"] else "") + \
            (" + residual" if "residual" in la["program"] else "")
        rows = f"{la.get('rows')} / {la.get('rows_total')}" if la["kind"] == "conv" else "all"
        out.append(
            f"| {la['name']} | {la['kind']} | {prog} | {'x'.join(map(str, la['shape']))} | "
            f"{_pct(la['sparsity'])} | {rows} | {_pct(la['relative_discrepancy'])} | "
            f"{_pct(_ratio(la.get('discrepancy_all'), la.get('output_norm_all')))} | "
            f"{_num(la['flops_dense'])} -> {_num(la['flops_pruned'])} |")
    return out + [""]


def section(exp: Path) -> str:
    nets = [p.parent.name for p in sorted(exp.glob("*/summary.json"))]
    lines = [START, "## Whole conv networks: every layer pruned (issue 14)", "",
             "Made by `make conv-experiments` (experiments/convnets.py); every number is read "
             "from a file that run wrote. Machine: "
             f"{platform.machine()}, torch {torch.__version__}, 2 CPU cores shared with other "
             "jobs (wall times are inflated by that contention). Conv layers are pruned on a "
             "seeded sample of patches (image x position); the discrepancy on all patches of "
             "the calibration set is measured through the convolution and shown next to the "
             "program's. A residual unit's relative discrepancy is relative to the norm of its "
             "whole output relu(bn(conv(x)) + s) on all patches, and to the norm of its own "
             "target (z on the active set) in the program.", ""]
    for name in nets:
        lines += net_lines(name, exp / name)
    return "\n".join(lines + [END]) + "\n"


def write_section(exp: Path, results: Path) -> None:
    """Replace (or append) the section between the markers in ``results``."""
    text = results.read_text() if results.exists() else ""
    block = section(exp)
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    results.write_text(text)


def keep_section(old: str, new: str) -> str:
    """``new`` (a regenerated results.md) with the conv section of ``old`` kept."""
    if START not in old or END not in old:
        return new
    block = START + old.split(START, 1)[1].split(END, 1)[0] + END
    return new.rstrip("\n") + "\n\n" + block + "\n"
