"""`make experiments-hs-nets`: issue 16's networks at 90% and 95% of their weights pruned.

NN2-10K (784-300-300-10 on 10,000 training images), LeNet-5 (conv, 30,000), NN3-60K
(784-300-1000-300-10, 60,000) and CNN-60K (the paper's CNN, conv layers pruned too, 60,000),
trained dense once (seeded; LeNet-5's and CNN-60K's networks, calibration sets and dumps are
those of `make conv-experiments` when they are on disk). At each level:
- Net-Trim: `nettrim prune --sparsity S` (HSN_HOW: the mode flags, default cascade with one
  eps for every layer, `--allocation uniform`; experiments/hs_alloc.py adds the default
  per-layer allocation; the eps search is part of the timed command), evaluated without
  fine-tuning;
- the one-shot baselines (magnitude, Wanda-style, SparseGPT-style) at its per-layer counts
  (`--match`), without fine-tuning;
- `nettrim finetune` with the default recipe (no flags: 10 epochs, Adam, lr 1e-2, cosine) on
  the network's training images for Net-Trim and for the baselines in HSN_FT_BASELINES
  (default all three);
- LC (l0 constraint) and iterative HPTD (`nettrim prune --method lc / magnitude-iterative`,
  make experiments-lc's 20-epoch settings) on the networks in HSN_LC (default all four).
Every model is evaluated on the 10,000 test images; docs/high-sparsity-nets.md is written from
the files on disk. Each step is cached (EXP_DIR/hsnets/<net>); a rerun resumes.

Environment: EXP_DIR (default exp_out), HSN_NETS (default nn2-10k,lenet5,cnn60k,nn3-60k),
HSN_LEVELS (default 0.9,0.95), HSN_HOW, HSN_FT_BASELINES, HSN_LC, HSN_TRAINED (default
lc,hptd), HSN_SEED (default 0; seed k works in EXP_DIR/hsnets-seedk), CALIB (default 5000),
HSN_START (default `trained`: the dense network as trained above; `tuned`: that network after
the default fine-tune, dense-ft.pt, as the network to prune, in EXP_DIR/hsnets[-seedk]-tuned,
with its own dump, fine-tunes and LC / HPTD runs: a dense network that more training no
longer improves, so that LC's 20 epochs are not also training the dense network further).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from experiments import convnets, lc_run
from experiments.convnets import BASELINES, Summary, accuracy, load, nettrim
from experiments.run import cnn
from nettrim_cli.datasets import load_fashion_mnist, mlp
from nettrim_cli.recipe import DEFAULT_LR

ROOT = Path(__file__).resolve().parent.parent
EXP = Path(os.environ.get("EXP_DIR", ROOT / "exp_out"))
SEED = int(os.environ.get("HSN_SEED", "0"))  # the dense training's and the fine-tunes' seed
STARTS = ("trained", "tuned")  # the dense network pruned: as trained, or + the default FT
START = os.environ.get("HSN_START", STARTS[0])


def seed_dir(seed: int, start: str = STARTS[0]) -> Path:
    """Where a seed's networks and results live (seed 0: EXP_DIR/hsnets; the tuned start:
    EXP_DIR/hsnets-tuned, hsnets-seedk-tuned)."""
    base = "hsnets" if seed == 0 else f"hsnets-seed{seed}"
    return EXP / (base if start == STARTS[0] else f"{base}-{start}")


HSN = seed_dir(SEED, START)
OWN_TRAINING = SEED != 0 or START != STARTS[0]  # hs_alloc runs LC / HPTD (else hs_nets)
DOC = ROOT / "docs" / "high-sparsity-nets.md"
NETS = {  # name: (label, factory, training images, epochs, whole-module checkpoint)
    "nn2-10k": ("NN2-10K", lambda: mlp((784, 300, 300, 10)), 10_000, 30, True),
    "lenet5": ("LeNet-5", convnets.lenet5, 30_000, 5, True),
    "cnn60k": ("CNN-60K", cnn, 60_000, 5, True),
    "nn3-60k": ("NN3-60K", lambda: mlp((784, 300, 1000, 300, 10)), 60_000, 10, True),
}
SHARED = ("model.pt", "train.h5", "calib.npy", "acts.h5", "original-ft.pt")


def _env_list(name: str, default: str) -> list[str]:
    return [v for v in os.environ.get(name, default).split(",") if v]


LEVELS = tuple(float(v) for v in _env_list("HSN_LEVELS", "0.9,0.95"))
HOW = os.environ.get("HSN_HOW", "--mode cascade --allocation uniform").split()
FT_BASELINES = _env_list("HSN_FT_BASELINES", "magnitude,wanda,sparsegpt")
LC_NETS = _env_list("HSN_LC", "nn2-10k,lenet5,cnn60k,nn3-60k")
TRAINED = _env_list("HSN_TRAINED", "lc,hptd")  # the training-based methods run
LC_EPOCHS = 20  # make experiments-lc's budget (lc_run.LC_BASE / HPTD): 20 epochs each
FT_SHORT = 4  # Net-Trim is also fine-tuned for a fifth of them
ALLOCATION = "allocation"  # experiments/hs_alloc.py's variant: its record and files' prefix


def reuse_conv_run(name: str, d: Path) -> None:
    """Copy `make conv-experiments`' trained network, calibration set and dump when present
    (the same seeded network: both experiments then prune the same weights)."""
    src = EXP / "conv" / name
    if (d / "model.pt").exists() or not (src / "model.pt").exists():
        return
    for f in SHARED:
        if (src / f).exists():
            shutil.copy2(src / f, d / f)


def finetune(model: Path, arch: list[str], out: Path, epochs: int | None = None) -> float:
    """`nettrim finetune` with the default recipe (no recipe flags; ``epochs`` passes instead
    of its 10 when given); wall seconds."""
    extra = ([] if epochs is None else ["--epochs", str(epochs)]) + (
        ["--seed", str(SEED)] if SEED else [])
    return nettrim("finetune", str(model), *arch, "--data", str(model.parent / "train.h5"),
                   *extra, "-o", str(out), "--summary", str(out.with_suffix(".json")),
                   "--force", "-q", threads=convnets.TRAIN_THREADS)


def one_level(name: str, level: float, d: Path, files: tuple, data: dict, s: Summary,
              flags: tuple[str, ...] | None = None, variant: str = "") -> None:
    """Net-Trim at ``level`` with ``flags`` (default HOW's), the baselines at its counts, the
    default fine-tunes (`make conv-experiments`' steps, convnets.one_level) and the short
    one; then LC and HPTD, which do not depend on Net-Trim's flags, for the level itself (no
    ``variant``: experiments/hs_alloc.py's files and record)."""
    convnets.one_level(name, level, d, files, data, s, spec=NETS[name][1:] + (LEVELS,),
                       netrim_flags=tuple(HOW if flags is None else flags),
                       finetune_fn=finetune, ft_methods=tuple(FT_BASELINES), variant=variant)
    tag = f"{level:g}"
    r = convnets.level_record(s, tag, variant)
    pre = convnets.file_prefix(variant)
    short = d / f"{pre}netrim-{tag}-ft{FT_SHORT}.pt"  # a fifth of LC's 20 training epochs
    pruned = d / f"{pre}netrim-{tag}.pt"
    if not short.exists() or short.stat().st_mtime < pruned.stat().st_mtime:  # or re-pruned
        r["seconds"][f"netrim_ft{FT_SHORT}"] = finetune(pruned, files[1], short, FT_SHORT)
        r.pop("ft_short_accuracy", None)
    if "ft_short_accuracy" not in r:
        r["ft_short_accuracy"] = accuracy(load(short, NETS[name][1], True), *data["test"])
    s.save()
    if name in LC_NETS and not variant:
        training(name, level, d, files, data["test"], r, s)


def training(name: str, level: float, d: Path, files: tuple, test, r: dict,
             s: Summary) -> None:
    """LC (the schedule `make experiments-lc` chose) and HPTD, 20 training epochs each."""
    _, factory, *_, whole = NETS[name]
    model, arch, _ = files
    tag = f"{level:g}"
    lc_flags = lc_run.lc_run(lc_run.chosen(EXP / "lc"), level)[2]
    hptd = ["--method", "magnitude-iterative", *lc_run.HPTD]
    seeded = ["--seed", str(SEED)] if SEED else []
    for method, flags in (("lc", [*lc_flags, *seeded]), ("hptd", [*hptd, *seeded])):
        if method not in TRAINED:
            continue
        out, rep = d / f"{method}-{tag}.pt", d / f"{method}-{tag}.json"
        if not rep.exists():
            if Path(f"{out}.nettrim-work").exists():
                flags = [*flags, "--resume"]
            try:
                r["seconds"][method] = nettrim("prune", str(model), *arch, "--data",
                                               str(d / "train.h5"), "--sparsity", tag, *flags,
                                               "-o", str(out), "--report", str(rep),
                                               "--force", "-q", threads=convnets.TRAIN_THREADS)
            except subprocess.CalledProcessError as e:  # recorded; the other networks go on
                r.setdefault("failed", {})[method] = f"exit {e.returncode}"
                s.save()
                continue
            r["accuracy"].pop(method, None)
        if method not in r["accuracy"]:
            r["accuracy"][method] = accuracy(load(out, factory, whole), *test)
        s.save()


def main() -> int:
    nets = convnets.chosen_nets("HSN_NETS", NETS)
    if nets is None:
        return 2
    data = {"train": load_fashion_mnist("train"), "test": load_fashion_mnist("test")}
    for name in nets:
        d = HSN / name
        d.mkdir(parents=True, exist_ok=True)
        s, files = prepared(name, d, data)
        for level in LEVELS:
            one_level(name, level, d, files, data, s)
        dense_finetuned(name, d, files, data["test"], s)
        write_doc()
    return 0


def prepared(name: str, d: Path, data: dict) -> tuple[Summary, tuple]:
    """The network trained with SEED (HSN_START tuned: it after the default fine-tune), its
    calibration dump and training file (cached)."""
    if START != STARTS[0]:
        tuned_start(name, d)
    elif SEED == 0:
        reuse_conv_run(name, d)
    s = Summary(d / "summary.json")
    files = convnets.prepare(name, d, data, s, spec=NETS[name][1:] + (LEVELS,), seed=SEED)
    s["seed"] = SEED
    s.save()
    return s, files


def tuned_start(name: str, d: Path) -> None:
    """The tuned start's dense network: the trained start's dense-ft.pt (that network after
    the default fine-tune), and its training file."""
    src = seed_dir(SEED) / name
    if (d / "model.pt").exists():
        return
    if not (src / "dense-ft.pt").exists():
        raise SystemExit(f"{src / 'dense-ft.pt'}: missing; run make experiments-hs-nets "
                         f"(HSN_SEED={SEED}) for {name} first")
    shutil.copy2(src / "dense-ft.pt", d / "model.pt")


def dense_finetuned(name: str, d: Path, files: tuple, test, s: Summary) -> None:
    """The dense network with the same fine-tune: what the fine-tune adds anyway."""
    dense_ft = d / "dense-ft.pt"
    if not dense_ft.exists():
        s["dense_ft_seconds"] = finetune(files[0], files[1], dense_ft)
        s.pop("accuracy_dense_ft", None)
    if "accuracy_dense_ft" not in s:
        s["accuracy_dense_ft"] = accuracy(load(dense_ft, NETS[name][1], True), *test)
    s.save()


GOAL = {"0.9": 0.5, "0.95": 1.0}  # issue 16: points from dense after the default FT
ROWS = (("netrim", "Net-Trim"), ("magnitude", "magnitude"), ("wanda", "Wanda-style"),
        ("sparsegpt", "SparseGPT-style"), ("lc", f"LC (l0 constraint), {LC_EPOCHS} epochs"),
        ("hptd", f"iterative HPTD, {LC_EPOCHS} epochs"))


def _eps_text(search: dict) -> str:
    """The eps the search kept: one, or one per layer (``--allocation discrepancy``)."""
    per_layer = search.get("epsilons")
    if per_layer:
        return "eps per layer " + ", ".join(f"{k} {v:.3g}" for k, v in per_layer.items())
    return f"eps {search.get('epsilon', float('nan')):.4g}"


def _level_rows(d: Path, tag: str, r: dict, dense: float, dense_ft: float | None,
                prefix: str = "", title: str = "Net-Trim") -> list[str]:
    rep = convnets.json.loads((d / f"{prefix}netrim-{tag}.json").read_text())
    search = rep["settings"].get("sparsity_search", {})
    seconds = r["seconds"].get("netrim")
    lines = [f"{title}: {100 * rep['network']['pruned_fraction']:.2f}% of the pruned layers' "
             f"weights zero, {_eps_text(search)}, relative output "
             f"discrepancy {rep['network']['relative_discrepancy']:.4f}, per layer "
             + ", ".join(f"{la['name']} {100 * la['sparsity']:.1f}%" for la in rep["layers"])
             + (f"; search {seconds} s." if seconds is not None else ".")
             + (" **The search did not land within half a point of the level: every row "
                "below is at this fraction.**"
                if abs(rep["network"]["pruned_fraction"] - float(tag)) > 0.005 else ""), "",
             "| method | test accuracy | vs dense | + default FT (10 epochs) | vs dense |",
             "|---|---|---|---|---|"]
    for key, label in ROWS:
        if key not in r["accuracy"]:
            continue
        acc = r["accuracy"][key]
        ft = r["ft_accuracy"].get(key)
        ft_cells = (f"{ft:.2f}% | {ft - dense:+.2f}" if ft is not None
                    else "not run | ")
        if key in ("lc", "hptd"):
            ft_cells = "(trains itself) | "
        lines.append(f"| {label} | {acc:.2f}% | {acc - dense:+.2f} | {ft_cells} |")
        if key == "netrim" and "ft_short_accuracy" in r:
            short = r["ft_short_accuracy"]
            lines.append(f"| Net-Trim + FT, {FT_SHORT} epochs | | | {short:.2f}% | "
                         f"{short - dense:+.2f} |")
    return lines + ["", verdict(tag, r, dense, dense_ft), ""]


def _allocation_rows(d: Path, tag: str, r: dict, dense: float, dense_ft: float | None
                     ) -> list[str]:
    """The level with `--allocation discrepancy` (experiments/hs_alloc.py): Net-Trim and the
    one-shot baselines at its counts, LC and HPTD repeated from the uniform table."""
    a = r[ALLOCATION]
    merged = {"accuracy": {**a["accuracy"], **{k: r["accuracy"][k] for k in ("lc", "hptd")
                                              if k in r.get("accuracy", {})}},
              "ft_accuracy": a.get("ft_accuracy", {}), "seconds": a.get("seconds", {})}
    if "ft_short_accuracy" in a:
        merged["ft_short_accuracy"] = a["ft_short_accuracy"]
    return [f"#### {100 * float(tag):.0f}% with `--allocation discrepancy`", "",
            *_level_rows(d, tag, merged, dense, dense_ft, convnets.file_prefix(ALLOCATION),
                         "Net-Trim, allocation")]


def figures(tag: str, rec: dict, dense: float, lc: float | None
            ) -> tuple[bool | None, bool | None, bool | None]:
    """Issue 16's figures for one level's record ``rec`` (the level's, or its allocation's):
    Net-Trim + the default FT within GOAL[level] points of ``dense``; Net-Trim without FT
    ahead of every one-shot baseline at its counts; Net-Trim + FT_SHORT epochs of FT at least
    ``lc``. None for a figure not measured."""
    goal, ft = GOAL.get(tag), rec.get("ft_accuracy", {}).get("netrim")
    netrim, best = rec.get("accuracy", {}).get("netrim"), _best(rec.get("accuracy", {}))
    short = rec.get("ft_short_accuracy")
    return (None if goal is None or ft is None else ft >= dense - goal,
            None if best is None or netrim is None else netrim > best,
            None if short is None or lc is None else short >= lc)


def verdict(tag: str, r: dict, dense: float, dense_ft: float | None = None) -> str:
    """Issue 16's figures at this level (``figures``), from the numbers above."""
    lc = r["accuracy"].get("lc")
    met, ahead, reached = figures(tag, r, dense, lc)
    parts = []
    if met is not None:
        ft = r["ft_accuracy"]["netrim"]
        parts.append(f"Net-Trim + FT {ft - dense:+.2f} points from dense (goal: within "
                     f"{GOAL[tag]}): " + ("met" if met else "NOT met")
                     + (f" ({ft - dense_ft:+.2f} from the dense network with the same fine-tune)"
                        if dense_ft is not None else ""))
    if ahead is not None:
        parts.append(f"without FT {r['accuracy']['netrim'] - _best(r['accuracy']):+.2f} points "
                     "against the best one-shot baseline: " + ("ahead" if ahead else "NOT ahead"))
    if reached is not None:
        parts.append(f"Net-Trim + {FT_SHORT} epochs of FT {r['ft_short_accuracy'] - lc:+.2f} "
                     f"points against LC with {LC_EPOCHS}: "
                     + ("reached" if reached else "NOT reached"))
    return "Issue 16: " + "; ".join(parts) + "." if parts else ""


def _best(acc: dict) -> float | None:
    shots = [acc[b] for b in BASELINES if b in acc]
    return max(shots) if shots else None


def _cell(v: float | None, ref: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" + ("" if ref is None else f" ({v - ref:+.2f})")


def _runs() -> list[tuple[int, str]]:
    """The (seed, start) pairs on disk, seed 0 first, each seed's trained start first."""
    seeds = {0, *(int(p.name.removeprefix("hsnets-seed").split("-")[0])
                  for p in EXP.glob("hsnets-seed*") if p.is_dir())}
    return [(k, start) for k in sorted(seeds) for start in STARTS
            if start == STARTS[0] or seed_dir(k, start).is_dir()]


def summary_table() -> list[str]:
    """One row per network and level: the default `--sparsity` (the allocation) against
    dense, LC, the one-shot baselines at its counts and the uniform eps."""
    rows = ["## Summary: the default `--sparsity` (per-layer eps)", "",
            "Test accuracy (%); in brackets the difference from dense (Net-Trim + FT, goal: "
            "within 0.5 at 90%, 1 at 95%) or from LC (Net-Trim + 4 epochs of FT, goal: at "
            "least LC with 20 epochs).", "",
            "| network | seed | level | dense | Net-Trim | best one-shot | + FT | best one-shot "
            f"+ FT | + FT, {FT_SHORT} epochs | LC, {LC_EPOCHS} epochs | iterative HPTD, "
            f"{LC_EPOCHS} epochs | one eps: Net-Trim, + FT |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    met = {start: [[0, 0], [0, 0], [0, 0]] for start in STARTS}  # per figure: [met, rows]
    for (name, (label, *_rest)), (seed, start) in ((n, r) for n in NETS.items()
                                                    for r in _runs()):
        path = seed_dir(seed, start) / name / "summary.json"
        if not path.exists():
            continue
        s = Summary(path)
        dense = s["accuracy_original"]
        for tag, r in s.get("levels", {}).items():
            a = r.get(ALLOCATION)
            if not a or "netrim" not in a.get("accuracy", {}):
                continue
            lc = r.get("accuracy", {}).get("lc")
            ft = a.get("ft_accuracy", {})
            rows.append(
                f"| {label} | {seed}{'' if start == STARTS[0] else ', ' + start} | "
                f"{100 * float(tag):.0f}% | {dense:.2f} | "
                f"{_cell(a['accuracy']['netrim'])} | {_cell(_best(a['accuracy']))} | "
                f"{_cell(ft.get('netrim'), dense)} | {_cell(_best(ft))} | "
                f"{_cell(a.get('ft_short_accuracy'), lc)} | {_cell(lc)} | "
                f"{_cell(r.get('accuracy', {}).get('hptd'))} | "
                f"{_cell(r.get('accuracy', {}).get('netrim'))}, "
                f"{_cell(r.get('ft_accuracy', {}).get('netrim'))} |")
            for tally, ok in zip(met[start], figures(tag, a, dense, lc), strict=True):
                if ok is not None:
                    tally[0] += ok
                    tally[1] += 1
    return rows + [""] + [
        f"Start *{start}*: Net-Trim + FT within the goal of dense in {f1[0]} of {f1[1]} rows; "
        f"without FT ahead of the best one-shot baseline in {f2[0]} of {f2[1]}; + "
        f"{FT_SHORT} epochs of FT at least LC in {f3[0]} of {f3[1]}."
        for start, (f1, f2, f3) in met.items() if f1[1] or f2[1] or f3[1]] + [""]


def tuned_table() -> list[str]:
    """The tuned starts (HSN_START=tuned): the dense network as trained, after the default
    fine-tune (the tuned start), and after one more (does more training still help?)."""
    rows, more = [], []
    for (name, (label, *_rest)), (seed, start) in ((n, r) for n in NETS.items()
                                                    for r in _runs() if r[1] != STARTS[0]):
        path = seed_dir(seed, start) / name / "summary.json"
        trained = seed_dir(seed) / name / "summary.json"
        if path.exists() and trained.exists():
            s = Summary(path)
            rows.append(f"| {label} | {seed} | {Summary(trained)['accuracy_original']:.2f} | "
                        f"{s['accuracy_original']:.2f} | {_cell(s.get('accuracy_dense_ft'))} |")
            if "accuracy_dense_ft" in s:
                more.append(s["accuracy_dense_ft"] - s["accuracy_original"])
    if not rows:
        return []
    return ["Rows marked *tuned* prune the dense network after the default fine-tune "
            "(`make experiments-hs-tuned`: its per-layer eps prune, fine-tunes and one-shot "
            "baselines without FT, and LC with its 20 epochs, all from that network). Most "
            "networks as trained are short of training (the default fine-tune raises their "
            "dense test accuracy: the table below), so LC's 20 epochs on them also train the "
            "dense network further"
            + (f"; one more default fine-tune moves the tuned start's test accuracy by "
               f"{min(more):+.2f} to {max(more):+.2f} points" if more else "")
            + " (dense test accuracy, %):", "",
            "| network | seed | as trained | tuned start (+ FT) | + one more FT |",
            "|---|---|---|---|---|", *rows, ""]


def write_doc() -> None:
    """docs/high-sparsity-nets.md from the summaries on disk."""
    lines = ["# Issue 16's networks at 90% and 95% pruned (`make experiments-hs-nets`, "
             "`make experiments-hs-alloc`)", "",
             "Net-Trim: `nettrim prune --sparsity S --mode cascade` (the default solver) on the "
             "network's calibration images, with the default per-layer eps (`--allocation "
             "discrepancy`, experiments/hs_alloc.py) and with one eps for every layer "
             f"(`{' '.join(HOW)}`, experiments/hs_nets.py); the baselines at each one's "
             "per-layer counts (`--match`); FT: `nettrim finetune` with the default recipe (10 "
             f"epochs, Adam, lr {DEFAULT_LR:g}, cosine) on the network's training images. Test "
             "accuracy on the 10,000 test images. Seed 0 for everything below; the summary "
             "also shows the other seeds run (HSN_SEED: the dense training and the fine-tunes "
             "seeded alike; the default prune, its fine-tunes and the one-shot baselines without "
             f"fine-tuning). Machine: {platform.machine()}, {os.cpu_count()} cores, shared with "
             "other jobs at times (the seconds are wall times).", "", *summary_table(),
             *tuned_table()]
    for name, (label, *_rest) in NETS.items():
        d = seed_dir(0) / name
        if not (d / "summary.json").exists():
            continue
        s = Summary(d / "summary.json")
        dense = s["accuracy_original"]
        lines += [f"## {label}", "",
                  f"{s['n_train']} training images, {s['epochs']} dense epochs, "
                  f"{s['calib']} calibration images; dense test accuracy **{dense:.2f}%**"
                  + (f" ({s['accuracy_dense_ft']:.2f}% after the same default fine-tune: what "
                     "the fine-tune adds to an unpruned network)" if "accuracy_dense_ft" in s
                     else "") + ".", ""]
        for tag, r in s.get("levels", {}).items():
            if (d / f"netrim-{tag}.json").exists():
                lines += [f"### {100 * float(tag):.0f}%", "",
                          *_level_rows(d, tag, r, dense, s.get("accuracy_dense_ft"))]
            pre = convnets.file_prefix(ALLOCATION)
            if ALLOCATION in r and (d / f"{pre}netrim-{tag}.json").exists():
                lines += _allocation_rows(d, tag, r, dense, s.get("accuracy_dense_ft"))
    DOC.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
