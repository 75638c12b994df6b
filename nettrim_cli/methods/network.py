"""Network-level figures every method reports: weight counts over the pruned units and over
the whole model, multiply-adds (FLOPs) dense and after pruning, and the output discrepancy
measured on the calibration set."""

from __future__ import annotations

import numpy as np
import torch

from nettrim_cli.checkpoint import Checkpoint, pruned_copy
from nettrim_cli.dump import forward_collect


def outputs(model: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    """The model's output on the calibration inputs, float64."""
    return np.concatenate([out.astype(np.float64)
                           for _, _, out in forward_collect(model, [], inputs)], axis=0)


def network_summary(ckpt: Checkpoint, inputs: np.ndarray,
                    pruned: dict[str, tuple[np.ndarray, np.ndarray | None]],
                    weights: list[tuple[np.ndarray, np.ndarray]],
                    base: torch.nn.Module | None = None) -> dict:
    """The report's network figures every method shares: weight counts over the pruned layers
    (``weights``: (W, W0) pairs) and the measured output discrepancy on the calibration set
    (of the original network against the pruned one: ``base``, a trained copy, when given,
    with the ``pruned`` layers' weights)."""
    y = outputs(ckpt.model, inputs)
    pruned_model = pruned_copy(ckpt, pruned, base)
    yhat = outputs(pruned_model, inputs)
    disc = float(np.linalg.norm(yhat - y))
    ynorm = float(np.linalg.norm(y))
    params = sum(W.size for W, _ in weights)
    nnz = sum(int(np.count_nonzero(W)) for W, _ in weights)
    return {
        "params": params,
        "nonzeros_before": sum(int(np.count_nonzero(W0)) for _, W0 in weights),
        "nonzeros_after": nnz,
        "pruned_fraction": 1.0 - nnz / params if params else 0.0,
        "discrepancy": disc,
        "relative_discrepancy": disc / ynorm if ynorm > 0 else 0.0,
        "output_norm": ynorm,
        "model": whole_model(ckpt, pruned_model, list(pruned)),
        **flops(ckpt.layers, pruned),
    }


def whole_model(ckpt: Checkpoint, pruned_model: torch.nn.Module, names: list[str]) -> dict:
    """Every parameter the model has (weights, biases, BatchNorm, layers not pruned), zero
    or not, before and after; which layers were pruned and which were not."""
    def count(model):
        tensors = [t.detach() for t in model.parameters()]
        return sum(t.numel() for t in tensors), sum(int(torch.count_nonzero(t)) for t in tensors)

    total, before = count(ckpt.model)
    _, after = count(pruned_model)
    return {"params": total, "nonzeros_before": before, "nonzeros_after": after,
            "zero_fraction": 1.0 - after / total if total else 0.0, "pruned_layers": names,
            "kept_layers": [la.name for la in ckpt.layers if la.name not in set(names)]}


def flops(layers: list, pruned: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> dict:
    """Multiply-adds per sample of the prunable units, dense and counting only the nonzero
    weights after pruning (a conv weight is applied at each output position)."""
    dense = after = 0
    for la in layers:
        if not la.prunable:
            continue
        dense += la.flops
        W = pruned.get(la.name, (None,))[0]
        after += la.flops if W is None else unit_flops(la.flops, W)
    return {"flops_dense": dense, "flops_pruned": after}


def unit_flops(dense: int, W: np.ndarray) -> int:
    """A unit's multiply-adds with only its nonzero weights (``dense`` with all of them)."""
    return int(round(dense * np.count_nonzero(W) / W.size)) if W.size else 0
