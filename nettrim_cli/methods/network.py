"""Network-level figures every method reports: weight counts over the pruned units and the
output discrepancy measured on the calibration set."""

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
    yhat = outputs(pruned_copy(ckpt, pruned, base), inputs)
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
    }
