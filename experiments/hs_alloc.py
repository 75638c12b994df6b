"""`make experiments-hs-alloc`: issue 16's networks pruned with the per-layer eps allocation.

The same networks, levels and caches as `make experiments-hs-nets` (experiments/hs_nets.py;
the networks are trained and dumped here when that has not run), with Net-Trim's eps spread
by `--allocation discrepancy` (nettrim_cli/methods/netrim/allocation.py, the default of
`--sparsity`) instead of one eps for every layer:
- Net-Trim: `nettrim prune --sparsity S HSN_HOW --allocation discrepancy`, evaluated without
  fine-tuning, with the default fine-tune (10 epochs) and with 4 epochs of it;
- the one-shot baselines at its per-layer counts (`--match`), without fine-tuning and, for
  those in HSN_FT_BASELINES, with the default fine-tune.
The steps are experiments/hs_nets.py's one_level with these flags, recorded in the network's
summary.json under levels.<S>.allocation (files allocation-*.pt/json);
docs/high-sparsity-nets.md shows them beside the uniform eps (hs_nets.write_doc).

Environment: as experiments/hs_nets.py (EXP_DIR, HSN_NETS, HSN_LEVELS, HSN_HOW,
HSN_FT_BASELINES, HSN_SEED: the dense training's and the fine-tunes' seed, default 0; seed k
works in EXP_DIR/hsnets-seedk and also runs LC and HPTD, seeded alike, on the networks of
HSN_LC, as HSN_TRAINED says; HSN_START tuned prunes the dense network after the default
fine-tune, in EXP_DIR/hsnets[-seedk]-tuned, and runs LC and HPTD there too).
"""

from __future__ import annotations

import sys

from experiments import convnets, hs_nets

FLAGS = ("--allocation", "discrepancy")
VARIANT = hs_nets.ALLOCATION  # the summary's record under each level, the files' prefix


def _mode(how: list[str]) -> list[str]:
    """HSN_HOW without its --allocation (this script sets it)."""
    out = list(how)
    while "--allocation" in out:
        i = out.index("--allocation")
        del out[i:i + 2]
    return out


def main() -> int:
    nets = convnets.chosen_nets("HSN_NETS", hs_nets.NETS)
    if nets is None:
        return 2
    data = {"train": hs_nets.load_fashion_mnist("train"),
            "test": hs_nets.load_fashion_mnist("test")}
    flags = (*_mode(hs_nets.HOW), *FLAGS)
    for name in nets:
        d = hs_nets.HSN / name
        d.mkdir(parents=True, exist_ok=True)
        s, files = hs_nets.prepared(name, d, data)
        for level in hs_nets.LEVELS:
            hs_nets.one_level(name, level, d, files, data, s, flags, VARIANT)
            if hs_nets.OWN_TRAINING and name in hs_nets.LC_NETS:  # else from hs_nets
                hs_nets.training(name, level, d, files, data["test"],
                                 convnets.level_record(s, f"{level:g}"), s)
        hs_nets.dense_finetuned(name, d, files, data["test"], s)
        hs_nets.write_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
