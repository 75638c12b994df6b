"""`make experiments-hs`: 90% and 95% of the weights pruned, every method side by side.

The network is the one of `make experiments-lc` (a LeNet300-style MLP, 784-300-100-10, trained
dense on the first 10,000 Fashion-MNIST training images; its run is reused when it is on disk,
made otherwise). At each level:
- Net-Trim: `nettrim prune --sparsity S` (the eps search, cascade mode, the default solver) on
  CALIB calibration images, without fine-tuning; then + `nettrim finetune` with the default
  recipe (10 epochs) and with FT_SHORT epochs (a fifth of LC's 20 training epochs);
- the one-shot baselines (magnitude, Wanda-style, SparseGPT-style) at Net-Trim's per-layer
  counts (`--match`), without and with the default fine-tune;
- LC (l0 constraint) and iterative HPTD from `make experiments-lc`, with their 20 epochs.
Every model is evaluated on the 10,000 test images; the table goes to docs/high-sparsity.md.
Each step is cached (EXP_DIR/hs); a rerun resumes.

Environment: EXP_DIR (default exp_out), HS_CALIB (default 5000), HS_MODE (default cascade).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np

from experiments import lc_run
from experiments.run import ROOT, Timings, load_json, run
from nettrim_cli.datasets import load_fashion_mnist

EXP = Path(os.environ.get("EXP_DIR", ROOT / "exp_out"))
LC = EXP / "lc"
HS = EXP / "hs"
DOC = ROOT / "docs" / "high-sparsity.md"
CALIB = int(os.environ.get("HS_CALIB", "5000"))
MODE = os.environ.get("HS_MODE", "cascade")
LEVELS = (0.90, 0.95)
BASELINES = ("magnitude", "wanda", "sparsegpt")
FT_SHORT = 4  # a fifth of the 20 training epochs LC and HPTD get
LC_EPOCHS = 20


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


def level(s: float, model: Path, acts: Path, train_h5: Path, test_h5: Path, timed) -> dict:
    pct = round(100 * s)
    nt = HS / f"netrim-{pct}.pt"
    report = HS / f"netrim-{pct}.json"
    resume = ["--resume"] if Path(f"{nt}.nettrim-work").exists() else []
    timed(nt.stem, run("prune", str(model), "--acts", str(acts), "--mode", MODE, "--sparsity",
                       str(s), "-o", str(nt), "--report", str(report), "-q", *resume,
                       out=report))
    rows = {"Net-Trim": (evaluate(nt, test_h5), 0)}
    rows["Net-Trim + FT"] = (evaluate(finetuned(nt, train_h5, None, timed), test_h5), 10)
    rows[f"Net-Trim + FT ({FT_SHORT} epochs)"] = (
        evaluate(finetuned(nt, train_h5, FT_SHORT, timed), test_h5), FT_SHORT)
    for method in BASELINES:
        b = HS / f"{method}-{pct}.pt"
        timed(b.stem, run("prune", str(model), "--acts", str(acts), "--method", method,
                          "--match", str(report), "-o", str(b), "-q", out=b))
        rows[method] = (evaluate(b, test_h5), 0)
        rows[f"{method} + FT"] = (evaluate(finetuned(b, train_h5, None, timed), test_h5), 10)
    lc = LC / f"eval-lc-{lc_run._tag(lc_run.chosen(LC))}-{pct}.json"
    if lc.exists():
        rows["LC (l0 constraint)"] = (accuracy(lc), LC_EPOCHS)
    hptd = LC / f"eval-hptd-{pct}.json"
    if hptd.exists():
        rows["iterative HPTD"] = (accuracy(hptd), LC_EPOCHS)
    net = load_json(report)["network"]
    search = load_json(report)["settings"]["sparsity_search"]
    return {"rows": rows, "pruned": net["pruned_fraction"], "epsilon": search["epsilon"],
            "trials": len(search["trials"])}


def main() -> int:
    if not (LC / "model.pt").exists():
        lc_run.main()  # the dense network and the LC / HPTD runs it is compared with
    HS.mkdir(parents=True, exist_ok=True)
    timed = Timings(HS / "times.json")

    model, train_h5, test_h5 = LC / "model.pt", LC / "train.h5", LC / "test.h5"
    acts = HS / "acts.h5"
    if not acts.exists():
        x, _ = load_fashion_mnist("train")
        np.save(HS / "calib.npy", x[:CALIB])
        timed("dump", run("dump", str(model), "--inputs", str(HS / "calib.npy"), "-o",
                          str(acts), out=acts))
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
        f"(10,000 test images). Net-Trim: `nettrim prune --sparsity S --mode {MODE}` on {calib} "
        "calibration images (the default solver); the baselines at Net-Trim's per-layer counts "
        "(`--match`); FT: `nettrim finetune` with the default recipe (10 epochs) unless said; "
        f"LC and HPTD: `make experiments-lc` ({LC_EPOCHS} training epochs each). One seed. "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other jobs.", ""]
    for s, r in results.items():
        lines += [f"## {100 * s:.0f}% (Net-Trim pruned {100 * r['pruned']:.2f}%, eps "
                  f"{r['epsilon']:.4g} after {r['trials']} trials)", "",
                  "| method | test accuracy | vs dense | training epochs |", "|---|---|---|---|"]
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
