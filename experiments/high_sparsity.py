"""`make experiments-hs`: 90% and 95% of the weights pruned, every method side by side.

The network is the one of `make experiments-lc` (a LeNet300-style MLP, 784-300-100-10, trained
dense on the first 10,000 Fashion-MNIST training images; its run is reused when it is on disk,
made otherwise). At each level:
- Net-Trim: `nettrim prune --sparsity S` (the eps search, cascade mode, the default solver) on
  CALIB calibration images, without fine-tuning; then + `nettrim finetune` with the default
  recipe (10 epochs) and with FT_SHORT epochs (a fifth of LC's 20 training epochs);
- the one-shot baselines (magnitude, Wanda-style, SparseGPT-style) at Net-Trim's per-layer
  counts (`--match`), without and with the default fine-tune;
- LC (l0 constraint) and iterative HPTD from `make experiments-lc`, with their 20 epochs;
- Net-Trim with `--allocation discrepancy` (per-layer eps, ALLOC_MODE, default parallel),
  without and with the fine-tunes (also FT_LONG epochs), and the one-shot baselines at its
  per-layer counts (without fine-tuning);
- per prune: the per-layer sparsities and the output discrepancy on the calibration set.
Every model is evaluated on the 10,000 test images; the table goes to docs/high-sparsity.md.
Each step is cached (EXP_DIR/hs); a rerun resumes.

Environment: EXP_DIR (default exp_out), HS_CALIB (default 5000), HS_MODE (default cascade),
HS_ALLOC_MODE (default parallel).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np

from experiments import lc_run
from experiments.run import ROOT, Timings, calibration_dump, load_json, run

EXP = Path(os.environ.get("EXP_DIR", ROOT / "exp_out"))
LC = EXP / "lc"
HS = EXP / "hs"
DOC = ROOT / "docs" / "high-sparsity.md"
CALIB = int(os.environ.get("HS_CALIB", "5000"))
MODE = os.environ.get("HS_MODE", "cascade")
ALLOC_MODE = os.environ.get("HS_ALLOC_MODE", "parallel")
ALLOC = "allocated"  # the rows of --allocation discrepancy
LEVELS = (0.90, 0.95)
BASELINES = ("magnitude", "wanda", "sparsegpt")
FT_SHORT = 4  # a fifth of the 20 training epochs LC and HPTD get
LC_EPOCHS = 20
FT_LONG = 20  # the default recipe's schedule stretched to LC's epochs


def accuracy(path: Path) -> float:
    return load_json(path)["results"][0]["accuracy"]


def evaluate(model: Path, test_h5: Path) -> float:
    out = model.with_name(f"eval-{model.stem}.json")
    run("eval", str(model), "--data", str(test_h5), "--format", "json", stdout=out)
    return accuracy(out)


def finetuned(pruned: Path, train_h5: Path, epochs: int | None, timed) -> Path:
    tag = "ft" if epochs is None else f"ft{epochs}"
    out = pruned.with_name(f"{pruned.stem}-{tag}.pt")
    extra = [] if epochs is None else ["--epochs", str(epochs)]
    timed(out.stem, run("finetune", str(pruned), "--data", str(train_h5), *extra, "-o",
                        str(out), "--summary", str(out.with_suffix(".json")), "-q", out=out))
    return out


def netrim(s: float, model: Path, acts: Path, train_h5: Path, test_h5: Path, timed,
           allocated: bool) -> tuple[dict, Path]:
    """Net-Trim at sparsity s (uniform eps in MODE, or --allocation discrepancy in ALLOC_MODE),
    without and with the fine-tunes; the baselines at its per-layer counts."""
    pct = round(100 * s)
    stem = f"netrim-{ALLOC}-{pct}" if allocated else f"netrim-{pct}"
    nt, report = HS / f"{stem}.pt", HS / f"{stem}.json"
    how = (["--mode", ALLOC_MODE, "--allocation", "discrepancy"] if allocated
           else ["--mode", MODE, "--allocation", "uniform"])
    resume = ["--resume"] if Path(f"{nt}.nettrim-work").exists() else []
    timed(nt.stem, run("prune", str(model), "--acts", str(acts), *how, "--sparsity", str(s),
                       "-o", str(nt), "--report", str(report), "-q", *resume, out=report))
    tag = ", allocation" if allocated else ""
    rows = {f"Net-Trim{tag}": (evaluate(nt, test_h5), 0)}
    rows[f"Net-Trim{tag} + FT"] = (evaluate(finetuned(nt, train_h5, None, timed), test_h5), 10)
    rows[f"Net-Trim{tag} + FT ({FT_SHORT} epochs)"] = (
        evaluate(finetuned(nt, train_h5, FT_SHORT, timed), test_h5), FT_SHORT)
    if allocated:  # the epochs the default recipe would need here (measured)
        rows[f"Net-Trim{tag} + FT ({FT_LONG} epochs)"] = (
            evaluate(finetuned(nt, train_h5, FT_LONG, timed), test_h5), FT_LONG)
    for method in BASELINES:
        b = HS / f"{method}-{ALLOC}-{pct}.pt" if allocated else HS / f"{method}-{pct}.pt"
        timed(b.stem, run("prune", str(model), "--acts", str(acts), "--method", method,
                          "--match", str(report), "-o", str(b), "-q", out=b))
        where = " (allocation's counts)" if allocated else ""
        rows[f"{method}{where}"] = (evaluate(b, test_h5), 0)
        if not allocated:  # at the allocation's counts: without fine-tuning only (time)
            rows[f"{method}{where} + FT"] = (
                evaluate(finetuned(b, train_h5, None, timed), test_h5), 10)
    return rows, report


def shape(report: Path) -> dict:
    """Per-layer sparsities, pruned fraction, output discrepancy and the search's eps."""
    r = load_json(report)
    search = r["settings"]["sparsity_search"]
    return {"layers": {la["name"]: la["sparsity"] for la in r["layers"]},
            "pruned": r["network"]["pruned_fraction"],
            "discrepancy": r["network"]["relative_discrepancy"],
            "epsilon": search["epsilon"], "epsilons": search.get("epsilons"),
            "trials": len(search["trials"]) + len(search.get("curve_trials", [])),
            "seconds": r["seconds"]}


def level(s: float, model: Path, acts: Path, train_h5: Path, test_h5: Path, timed) -> dict:
    pct = round(100 * s)
    rows, report = netrim(s, model, acts, train_h5, test_h5, timed, allocated=False)
    alloc_rows, alloc_report = netrim(s, model, acts, train_h5, test_h5, timed, allocated=True)
    lc = LC / f"eval-lc-{lc_run._tag(lc_run.chosen(LC))}-{pct}.json"
    if lc.exists():
        rows["LC (l0 constraint)"] = (accuracy(lc), LC_EPOCHS)
    hptd = LC / f"eval-hptd-{pct}.json"
    if hptd.exists():
        rows["iterative HPTD"] = (accuracy(hptd), LC_EPOCHS)
    return {"rows": {**rows, **alloc_rows}, "uniform": shape(report),
            "allocated": shape(alloc_report)}


def main() -> int:
    if not (LC / "model.pt").exists():
        lc_run.main()  # the dense network and the LC / HPTD runs it is compared with
    HS.mkdir(parents=True, exist_ok=True)
    timed = Timings(HS / "times.json")

    model, train_h5, test_h5 = LC / "model.pt", LC / "train.h5", LC / "test.h5"
    acts = calibration_dump(HS, model, CALIB, timed)
    dense = evaluate(model, test_h5)
    results = {s: level(s, model, acts, train_h5, test_h5, timed) for s in LEVELS}
    # the calibration set the (cached) dump was made from, whatever HS_CALIB says now
    calib = int(np.load(HS / "calib.npy", mmap_mode="r").shape[0])
    write_doc(dense, results, timed.times, calib)
    return 0


def write_doc(dense: float, results: dict, times: dict, calib: int) -> None:
    lines = [
        "# 90% and 95% of the weights pruned (`make experiments-hs`)", "",
        f"LeNet300-style MLP (784-300-100-10) of `make experiments-lc`, trained dense on the "
        f"first 10,000 Fashion-MNIST training images; dense test accuracy **{100 * dense:.2f}%** "
        f"(10,000 test images). Net-Trim: `nettrim prune --sparsity S --mode {MODE}` (one eps "
        f"for every layer) and `--mode {ALLOC_MODE} --allocation discrepancy` (per-layer eps "
        f"that lower the output discrepancy, \"allocation\") on {calib} calibration images (the "
        "default solver); the baselines at the per-layer counts of the Net-Trim prune above "
        "them (`--match`); FT: `nettrim finetune` with the default recipe (10 epochs) unless "
        f"said; LC and HPTD: `make experiments-lc` ({LC_EPOCHS} training epochs each). One "
        f"seed. Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other jobs.",
        ""]
    for s, r in results.items():
        u, a = r["uniform"], r["allocated"]
        names = list(u["layers"])
        lines += [f"## {100 * s:.0f}%", "",
                  "| Net-Trim prune | pruned | " + " | ".join(f"layer {n}" for n in names)
                  + " | output discrepancy (relative) | eps | trials | seconds |",
                  "|---" * (len(names) + 6) + "|"]
        for label, x in ((f"uniform, {MODE}", u), (f"allocation, {ALLOC_MODE}", a)):
            eps = (", ".join(f"{v:.3g}" for v in x["epsilons"].values()) if x["epsilons"]
                   else f"{x['epsilon']:.4g}")
            lines.append(f"| {label} | {100 * x['pruned']:.2f}% | " + " | ".join(
                f"{100 * x['layers'][n]:.1f}%" for n in names)
                + f" | {x['discrepancy']:.4f} | {eps} | {x['trials']} | {x['seconds']:.0f} |")
        lines += ["", "| method | test accuracy | vs dense | training epochs |",
                  "|---|---|---|---|"]
        for name, (acc, epochs) in r["rows"].items():
            lines.append(f"| {name} | {100 * acc:.2f}% | {100 * (acc - dense):+.2f} | "
                         f"{epochs} |")
        lines.append("")
    lines += ["Wall times (s, contended): " + ", ".join(f"{k} {v}" for k, v in
                                                        sorted(times.items()))]
    DOC.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
