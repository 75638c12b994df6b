"""The section "Whole conv networks" of docs/results.md, written from the files
`experiments/convnets.py` left on disk (summary.json, the prune reports); the rest of
docs/results.md is kept as it is."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

START, END = "<!-- conv-experiments:start -->", "<!-- conv-experiments:end -->"
TITLES = {"lenet5": "LeNet-5", "resnet": "small ResNet", "cnn10k": "CNN-10K",
          "cnn30k": "CNN-30K", "cnn60k": "CNN-60K"}
ORDER = tuple(TITLES)
METHODS = (("netrim", "Net-Trim"), ("magnitude", "magnitude (HPTD)"),
           ("wanda", "Wanda-style"), ("sparsegpt", "SparseGPT-style"))


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else str(v)


def _acc(v) -> str:
    return "not run" if v is None else f"{v:.2f}"


def _load(v) -> str:
    return "?" if v is None else f"{v:.1f}"


def _ratio(a, b):
    return a / b if a is not None and b else None


def _levels(d: Path, s: dict) -> list[tuple[str, dict, dict]]:
    """(level, its summary entry, its Net-Trim report) for every level with a report."""
    out = []
    for tag, r in sorted(s.get("levels", {}).items(), key=lambda kv: float(kv[0])):
        rep = d / f"netrim-{tag}.json"
        if rep.exists():
            out.append((tag, r, json.loads(rep.read_text())))
    return out


def _secs(r: dict, key: str) -> str:
    v = r["seconds"].get(key)
    resumed = " (resumed: the part before the stop is not counted)" if r["seconds"].get(
        f"{key}_resumed") else ""
    return "-" if v is None else f"{v:g}{resumed}"


def overview_row(name: str, s: dict, tag: str, r: dict, rep: dict) -> str:
    """One line of the overview table: a network at one --sparsity level."""
    n, m = rep["network"], rep["network"]["model"]
    search = rep["settings"].get("sparsity_search") or {}
    acc, ft = r["accuracy"].get("netrim"), r["ft_accuracy"].get("netrim")
    drop = "-" if acc is None else f"{acc - s['accuracy_original']:+.2f}"
    load = r["seconds"].get("netrim_load") or [None, None]
    return (f"| {TITLES.get(name, name)} | {m['params']} | {tag} | "
            f"{search.get('epsilon', 0):.4g} ({len(search.get('trials', []))}) | "
            f"{_pct(n['pruned_fraction'])} / {_pct(m['zero_fraction'])} | "
            f"{s['accuracy_original']:.2f} -> {_acc(acc)} ({drop}) | {_acc(ft)} "
            f"({_acc(s.get('accuracy_original_ft'))}) | "
            f"{_num(n['flops_dense'])} -> {_num(n['flops_pruned'])} | "
            f"{_secs(r, 'netrim')} ({_secs(r, 'netrim_cpu')} CPU; load {_load(load[0])} -> "
            f"{_load(load[1])}) |")


def layer_lines(tag: str, rep: dict) -> list[str]:
    """The per-layer table of one Net-Trim prune."""
    out = [f"Net-Trim at --sparsity {tag}, per layer:", "",
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


# issue 14's figures: (min. fraction of all params pruned, max. points lost, max. prune seconds)
FIGURES = {"lenet5": (0.60, 1.0, 60.0), "resnet": (None, 2.0, None)}


def verdict(name: str, s: dict, tag: str, r: dict, rep: dict) -> str | None:
    """Whether this level meets issue 14's figure for the network (None: it names none);
    every part is checked against the measured numbers, and a miss says which part."""
    if name not in FIGURES or r["accuracy"].get("netrim") is None:
        return None
    least, points, seconds = FIGURES[name]
    m = rep["network"]["model"]
    lost = s["accuracy_original"] - r["accuracy"]["netrim"]
    convs = [la for la in rep["layers"] if la.get("kind") == "conv"]
    misses = []
    if least is not None and m["zero_fraction"] < least:
        misses.append(f"{_pct(m['zero_fraction'])} of all params pruned < {_pct(least)}")
    if lost > points:
        misses.append(f"{lost:.2f} points lost > {points:g}")
    if seconds is not None and r["seconds"].get("netrim_resumed"):
        misses.append("the prune was resumed, its whole time is not known")
    elif seconds is not None and r["seconds"].get("netrim", 0) > seconds:
        misses.append(f"prune {r['seconds']['netrim']:g} s > {seconds:g} s at load "
                      f"{_load((r['seconds'].get('netrim_load') or [None])[0])}")
    if not convs or any(not la.get("sparsity") for la in convs):
        misses.append("a conv layer is not pruned")
    head = f"--sparsity {tag}: {lost:.2f} points lost, {_pct(m['zero_fraction'])} of all params"
    return head + (" zero: meets issue 14's figure." if not misses else
                   f" zero: misses issue 14's figure ({'; '.join(misses)}).")


def net_lines(name: str, d: Path) -> list[str]:
    s = json.loads((d / "summary.json").read_text())
    levels = _levels(d, s)
    if not levels:
        work = sorted(d.glob("netrim-*.pt.nettrim-work"))
        stopped = [f"{w.name[len('netrim-'):-len('.pt.nettrim-work')]} "
                   f"({len(list(w.glob('trial-*')))} trials begun)" for w in work]
        return [f"### {TITLES.get(name, name)}", "",
                f"Trained on {s.get('n_train')} images for {s.get('epochs')} epochs (train "
                f"{s.get('train_seconds', 'not recorded')} s, test accuracy "
                f"{_acc(s.get('accuracy_original'))}%); no --sparsity level finished yet"
                + (f"; stopped searches at --sparsity {', '.join(stopped)}, which a rerun "
                   "resumes." if stopped else "."), ""]
    m = levels[0][2]["network"]["model"]
    out = [f"### {TITLES.get(name, name)}", "",
           f"Trained on {s['n_train']} images for {s['epochs']} epochs (train "
           f"{s.get('train_seconds', 'not recorded')} s); calibration: the first {s['calib']} "
           f"training images (dump {s.get('dump_seconds', 'not recorded')} s). Pruned layers: "
           f"{', '.join(m['pruned_layers'])}; kept as modules: "
           + (f"{', '.join(m['kept_layers'])} (BatchNorm, folded for the programs)."
              if m["kept_layers"] else "none.")
           + f" FT: `nettrim finetune --epochs {s['ft_epochs']} --lr 1e-4` on the training "
           "images, the dense model fine-tuned alike for comparison (FT is more training, "
           "so it can pass the dense accuracy). Test accuracy (%) without / with FT:", "",
           "| | " + " | ".join(f"--sparsity {t} | + FT" for t, _, _ in levels) + " |",
           "|---|" + "---|---|" * len(levels),
           "| original (dense) | " + " | ".join(
               f"{s['accuracy_original']:.2f} | {_acc(s.get('accuracy_original_ft'))}"
               for _ in levels) + " |"]
    for key, title in METHODS:
        out.append(f"| {title} | " + " | ".join(
            f"{_acc(r['accuracy'].get(key))} | {_acc(r['ft_accuracy'].get(key))}"
            for _, r, _ in levels) + " |")
    out += ["", "Wall time (s) per level: " + "; ".join(
        f"{t}: Net-Trim {_secs(r, 'netrim')}, magnitude {_secs(r, 'magnitude')}, Wanda "
        f"{_secs(r, 'wanda')}, SparseGPT {_secs(r, 'sparsegpt')}, FT of the Net-Trim model "
        f"{_secs(r, 'netrim_ft')}" for t, r, _ in levels) + ".", ""]
    checks = [v for v in (verdict(name, s, *lv) for lv in levels) if v]
    if checks:
        out += ["Issue 14's figure for this network: " + " ".join(checks), ""]
    for tag, _r, rep in levels:
        trials = rep["settings"]["sparsity_search"]["trials"]
        out += [f"Search at --sparsity {tag}: " + ", ".join(
            f"eps {t['epsilon']:.4g} -> {100 * t['pruned']:.1f}% ({t['seconds']:.0f} s)"
            for t in trials) + ".", ""]
        out += layer_lines(tag, rep)
    return out


def section(exp: Path) -> str:
    names = [p.parent.name for p in exp.glob("*/summary.json")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    lines = [START, "## Whole conv networks: every layer pruned (issue 14)", "",
             "Made by `make conv-experiments` (experiments/convnets.py); every number is read "
             "from a file that run wrote. Each network is pruned with `nettrim prune MODEL "
             "--acts acts.h5 --sparsity S` (the default solver and cascade mode, no other "
             "flags): the command searches eps until the pruned layers lose S of their "
             "weights (within half a point), and its wall time below is the whole search. "
             "The baselines keep Net-Trim's per-layer counts (`--match`). Machine: "
             f"{platform.machine()}, torch {torch.__version__}, 2 CPU cores shared with other "
             "jobs (the 1-minute load average before and after each prune is shown; wall "
             "times are inflated by that contention; CPU time is user + system of the "
             "command's processes). Conv layers are pruned on a seeded sample of patches "
             "(image x position); the discrepancy on all patches of the calibration set is "
             "measured through the convolution and shown next to the program's. A residual "
             "unit's relative discrepancy is relative to the norm of its whole output "
             "relu(bn(conv(x)) + s) on all patches, and to the norm of its own target in the "
             "program. CNN-10K/30K/60K are the paper's networks (experiments/run.py), here "
             "with their conv layers pruned too.", "",
             "| network | params | --sparsity | eps found (trials) | pruned: the pruned "
             "layers' weights / all params | test acc. original -> Net-Trim (change) | + FT "
             "(dense + FT) "
             "| MACs/image dense -> pruned | prune wall s (CPU s; load) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        d = exp / name
        s = json.loads((d / "summary.json").read_text())
        lines += [overview_row(name, s, t, r, rep) for t, r, rep in _levels(d, s)]
    missing = [TITLES[n] for n in ORDER if n not in names]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)} (`CONV_NETS` picks networks; a "
                  "rerun resumes from what is on disk)."]
    lines.append("")
    for name in names:
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
