"""The section of docs/results.md on the training-based methods, from what experiments/lc_run.py
left on disk (reports, `nettrim eval` JSON, times.json): every figure is read from a file."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.lc_run import (
    ARCH,
    BEGIN,
    DENSE_EPOCHS,
    END,
    HPTD,
    LC_BASE,
    N_TRAIN,
    SEED,
    SPARSITIES,
    SWEEP,
    _tag,
    chosen,
)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _acc(exp: Path, name: str) -> str:
    e = _load(exp / f"eval-{name}.json")
    return "–" if e is None else f"{100 * e['results'][0]['accuracy']:.2f}"


def _row(exp: Path, label: str, name: str) -> str | None:
    r = _load(exp / f"{name}.json")
    if r is None:
        return None
    net, steps = r["network"], r["network"]["training"]["steps"]
    train_acc = steps[-1].get("theta_train_accuracy", steps[-1].get("train_accuracy"))
    return (f"| {label} | {100 * net['pruned_fraction']:.2f} | {net['nonzeros_after']:,} | "
            f"{_acc(exp, name)} | {100 * train_acc:.2f} | {net['training']['epochs']} | "
            f"{r['seconds']:.0f} |")


def _main_table(exp: Path, times: dict) -> list[str]:
    best = chosen(exp)
    dense = _load(exp / "eval-dense.json")
    lines = ["| method | pruned (%) | nonzero weights | test accuracy (%) | training accuracy "
             "(%) | training epochs | wall time (s) |", "|---|---|---|---|---|---|---|"]
    if dense is not None:
        weights = sum(a * b for a, b in zip(ARCH[:-1], ARCH[1:], strict=True))
        lines.append(f"| dense | 0 | {weights:,} | "
                     f"{_acc(exp, 'dense')} | {_acc(exp, 'dense-train')} | "
                     f"{DENSE_EPOCHS} (Adam) | "
                     f"{times.get('dense', '–')} |")
    for s in SPARSITIES:
        pct = round(100 * s)
        for label, name in ((f"LC, l0 constraint, {pct}%", f"lc-{_tag(best)}-{pct}"),
                            (f"iterative magnitude (HPTD), {pct}%", f"hptd-{pct}")):
            row = _row(exp, label, name)
            if row:
                lines.append(row)
    return lines


def _reading(exp: Path) -> list[str]:
    """The test accuracies side by side, read from the eval files (one seed: no ranking is
    claimed beyond what they show)."""
    best = chosen(exp)
    lines = []
    for s in SPARSITIES:
        pct = round(100 * s)
        lc, hptd = _acc(exp, f"lc-{_tag(best)}-{pct}"), _acc(exp, f"hptd-{pct}")
        lines.append(f"- {pct}%: LC {lc}%, HPTD {hptd}% test accuracy (dense "
                     f"{_acc(exp, 'dense')}%).")
    return lines + [
        "- One network, one seed, the same 20 epochs for both methods: no seed-to-seed spread "
        "was measured, so differences of a few tenths of a point are no evidence of a ranking.",
    ]


def _sweep_table(exp: Path) -> list[str]:
    lines = ["| mu schedule | mu0 | a | mu of the last step | ‖w − θ‖ first -> last | "
             "training acc. of θ: direct compression -> last step (%) | training loss of "
             "the pruned network | test accuracy (%) | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, (mu0, a) in SWEEP.items():
        name = f"lc-{_tag(key)}-95"
        r = _load(exp / f"{name}.json")
        if r is None:
            continue
        steps = r["network"]["training"]["steps"]
        mark = " (chosen)" if key == chosen(exp) else ""
        lines.append(
            f"| {key}{mark} | {mu0} | {a} | {steps[-1]['mu']:.3g} | "
            f"{steps[0]['distance']:.3g} -> {steps[-1]['distance']:.3g} | "
            f"{100 * steps[0]['theta_train_accuracy']:.2f} -> "
            f"{100 * steps[-1]['theta_train_accuracy']:.2f} | {steps[-1]['theta_loss']:.4f} | "
            f"{_acc(exp, name)} | "
            f"{r['seconds']:.0f} |")
    return lines


def section(exp: Path) -> str:
    times = _load(exp / "times.json") or {}
    out = [
        BEGIN,
        "## Training-based pruning: LC and iterative magnitude (HPTD)",
        "",
        "Made by `make experiments-lc` (experiments/lc_run.py, experiments/lc_results.py); "
        "every number is read from a file a `nettrim` command wrote.",
        "",
        f"- Network: LeNet300-style MLP {'-'.join(map(str, ARCH))}, trained dense with Adam "
        f"(lr 1e-3, batch 128) for {DENSE_EPOCHS} epochs on the first {N_TRAIN:,} "
        f"Fashion-MNIST training images (seed {SEED}); accuracies on the 10,000 test images. "
        "The training accuracy of a pruned model is that of its final (exactly sparse) "
        "weights on those training images.",
        "- LC: `nettrim prune model.pt --method lc --data train.h5 --sparsity S "
        f"{' '.join(LC_BASE)} --mu0 M --mu-growth A` (l0 constraint, per-layer kappa; "
        "augmented Lagrangian). HPTD: `nettrim prune model.pt --method magnitude-iterative "
        f"--data train.h5 --sparsity S {' '.join(HPTD)}`. The same 20 training epochs for both "
        "(LC: 20 L steps of 1 epoch; HPTD: 10 rounds of 2), no further fine-tuning.",
        "- The paper's anchor (LC keeps 5% of LeNet300's weights on MNIST at 2.18% test error "
        "against 2.13% dense) is on MNIST with the whole training set and a longer schedule "
        "(40 LC steps); it cannot be reproduced here: MNIST is not on these machines and the "
        "CPU is shared, so this is a smaller budget on the harder Fashion-MNIST.",
        "- Net-Trim and Net-Trim + fine-tuning at 90% are in the section above on other "
        "networks (NN2/NN3, CNN); Net-Trim was not run on this LeNet300 in this run.",
        "- Wall times: the dense training as measured by experiments/lc_run.py, a prune's "
        "the report's `seconds` (the whole `nettrim prune` run, evaluation per step included); "
        "2 shared cores with other jobs running, so they are inflated and only roughly "
        "comparable between rows.",
        "",
        "### At 90% and 95% of the weights pruned",
        "",
        *_main_table(exp, times),
        "",
        *_reading(exp),
        "",
        "### LC's mu schedule at 95% (how the defaults were chosen)",
        "",
        "Each row: the LC run above with only mu0 and a changed (20 steps). \"toolkit\" is the "
        "LC toolkit's LeNet300 schedule (mu0 9e-5, a 1.1), here over 20 steps instead of 40. "
        "Chosen: the schedule whose final theta has the lowest *training* loss (the test set "
        "plays no part in the choice); it is the schedule of the LC rows above and of `nettrim "
        "prune --method lc`'s defaults.",
        "",
        *_sweep_table(exp),
        "",
        END,
    ]
    return "\n".join(out)


def carry(old: str, new: str) -> str:
    """``new`` with the LC section of ``old`` (if any) kept: before ``## Figures`` when
    ``new`` has that heading and no LC section, else appended."""
    if BEGIN not in old or BEGIN in new:
        return new
    block = old[old.index(BEGIN):old.index(END) + len(END)]
    return insert(new, block)


def insert(text: str, block: str) -> str:
    if BEGIN in text:
        return text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    if "\n## Figures" in text:
        i = text.index("\n## Figures") + 1
        return text[:i] + block + "\n\n" + text[i:]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_section(exp: Path, path: Path) -> Path:
    """Put (or replace) the section in ``path``, leaving every other section as it is."""
    text = path.read_text() if path.exists() else "# Experiments\n"
    path.write_text(insert(text, section(exp)))
    return path
