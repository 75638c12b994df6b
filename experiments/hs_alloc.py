"""`make experiments-hs-alloc`: issue 16's networks pruned with the per-layer eps allocation.

The same networks, levels and caches as `make experiments-hs-nets` (experiments/hs_nets.py;
the networks are trained and dumped here when that has not run), with Net-Trim's eps spread
by `--allocation discrepancy` (nettrim_cli/methods/netrim/allocation.py, the default of
`--sparsity`) instead of one eps for every layer:
- Net-Trim: `nettrim prune --sparsity S HSN_HOW --allocation discrepancy`, evaluated without
  fine-tuning, with the default fine-tune (10 epochs) and with 4 epochs of it;
- the one-shot baselines at its per-layer counts (`--match`), without fine-tuning and, for
  those in HSN_FT_BASELINES, with the default fine-tune.
Recorded in the network's summary.json under levels.<S>.allocation (files alloc-*.pt/json);
docs/high-sparsity-nets.md shows them beside the uniform eps (hs_nets.write_doc).

Environment: as experiments/hs_nets.py (EXP_DIR, HSN_NETS, HSN_LEVELS, HSN_HOW,
HSN_FT_BASELINES, HSN_SEED: the dense training's and the fine-tunes' seed, default 0; seed k
works in EXP_DIR/hsnets-seedk and also runs LC and HPTD, seeded alike, on the networks of
HSN_LC, as HSN_TRAINED says).
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments import convnets, hs_nets
from experiments.convnets import BASELINES, Summary, accuracy, load, nettrim

FLAGS = ("--allocation", "discrepancy")


def _mode(how: list[str]) -> list[str]:
    """HSN_HOW without its --allocation (this script sets it)."""
    out = list(how)
    while "--allocation" in out:
        i = out.index("--allocation")
        del out[i:i + 2]
    return out


def allocated(name: str, level: float, d: Path, test) -> None:
    """Net-Trim with the allocation at ``level``, the baselines at its counts, its fine-tunes."""
    factory = hs_nets.NETS[name][1]
    s = Summary(d / "summary.json")
    tag = f"{level:g}"
    a = s.setdefault("levels", {}).setdefault(tag, {}).setdefault(
        "allocation", {"accuracy": {}, "ft_accuracy": {}, "seconds": {}})
    report = d / f"alloc-netrim-{tag}.json"
    for method in ("netrim", *BASELINES):
        out, rep = d / f"alloc-{method}-{tag}.pt", d / f"alloc-{method}-{tag}.json"
        if not rep.exists():
            how = (["--sparsity", tag, *_mode(hs_nets.HOW), *FLAGS] if method == "netrim" else
                   ["--method", method, "--match", str(report)])
            if Path(f"{out}.nettrim-work").exists():
                how.append("--resume")
            a["seconds"][method] = nettrim("prune", str(d / "model.pt"), "--acts",
                                           str(d / "acts.h5"), *how, "-o", str(out),
                                           "--report", str(rep), "--force", "-q")
            a["accuracy"].pop(method, None)
        if method not in a["accuracy"]:
            a["accuracy"][method] = accuracy(load(out, factory, True), *test)
        s.save()
    for method in hs_nets.FT_BASELINES:  # the baselines at the allocation's counts, tuned
        ft = d / f"alloc-{method}-{tag}-ft.pt"
        if not ft.exists():
            a["seconds"][f"{method}_ft"] = hs_nets.finetune(d / f"alloc-{method}-{tag}.pt", [],
                                                            ft)
        a["ft_accuracy"][method] = accuracy(load(ft, factory, True), *test)
        s.save()
    for epochs, key in ((None, "ft_accuracy"), (hs_nets.FT_SHORT, "ft_short_accuracy")):
        ft = d / f"alloc-netrim-{tag}-ft{'' if epochs is None else epochs}.pt"
        if not ft.exists():
            a["seconds"][f"netrim_{key}"] = hs_nets.finetune(d / f"alloc-netrim-{tag}.pt", [],
                                                             ft, epochs)
            a.pop(key, None) if key == "ft_short_accuracy" else a[key].pop("netrim", None)
        acc = accuracy(load(ft, factory, True), *test)
        if key == "ft_accuracy":
            a[key]["netrim"] = acc
        else:
            a[key] = acc
        s.save()


def main() -> int:
    nets = convnets.chosen_nets("HSN_NETS", hs_nets.NETS)
    if nets is None:
        return 2
    data = {"train": hs_nets.load_fashion_mnist("train"),
            "test": hs_nets.load_fashion_mnist("test")}
    for name in nets:
        d = hs_nets.HSN / name
        d.mkdir(parents=True, exist_ok=True)
        s, files = hs_nets.prepared(name, d, data)
        for level in hs_nets.LEVELS:
            allocated(name, level, d, data["test"])
            if hs_nets.SEED and name in hs_nets.LC_NETS:  # seed 0's come from hs_nets
                s = Summary(d / "summary.json")
                r = s["levels"][f"{level:g}"]
                for key in ("accuracy", "seconds"):
                    r.setdefault(key, {})
                hs_nets.training(name, level, d, files, data["test"], r, s)
        hs_nets.dense_finetuned(name, d, files, data["test"], Summary(d / "summary.json"))
        hs_nets.write_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
