"""BatchNorm folding: a unit (Linear or conv) whose output goes straight into an eval-mode
BatchNorm is pruned as one affine map.

BN in eval mode is per channel z -> a z + c with a = gamma / sqrt(var + eps_bn) and
c = beta - a * mean. So BN(W x + b) = (a W) x + (a b + c): the program sees the folded weights
W' = diag(a) W and bias b' = a b + c (a bias even when the unit has none). Written back, the
checkpoint keeps its modules, keys and shapes: W = W' / a, and the bias change goes into the
unit's bias, or, for a unit without one, into BN's beta (its running mean when BN has no
affine parameters). A channel with a = 0 outputs c whatever its weights: its folded row is zero
and is written as zeros.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nettrim_cli.layers import kind_of


def bn_affine(bn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) of the eval-mode BN map z -> a z + c, float64."""
    var = bn.running_var.detach().cpu().double().numpy()
    mean = bn.running_mean.detach().cpu().double().numpy()
    a = 1.0 / np.sqrt(var + bn.eps)
    if bn.affine:
        a = a * bn.weight.detach().cpu().double().numpy()
        c = bn.bias.detach().cpu().double().numpy() - a * mean
    else:
        c = -a * mean
    return a, c


def foldable(bn: nn.Module) -> str:
    """'' when ``bn`` can be folded, else why not."""
    if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"{type(bn).__name__} is not a BatchNorm"
    if bn.training:
        return "the BatchNorm is in training mode (batch statistics)"
    if not bn.track_running_stats or bn.running_mean is None:
        return "the BatchNorm keeps no running statistics"
    return ""


def unit_matrix(model: nn.Module, name: str, bn_name: str = ""
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The unit's weights as the program sees them: (out, in) and bias, BN folded in."""
    mod = model.get_submodule(name)
    W, b = kind_of(mod).matrix(mod)
    if not bn_name:
        return W, b
    a, c = bn_affine(model.get_submodule(bn_name))
    return a[:, None] * W, a * (b if b is not None else 0.0) + c


def write_unit(model: nn.Module, name: str, W: np.ndarray, b: np.ndarray | None,
               bn_name: str = "") -> None:
    """Put the program's (folded) weights back into the unit (and its BN), in place."""
    mod = model.get_submodule(name)
    kind = kind_of(mod)
    if not bn_name:
        kind.write(mod, W, b)
        return
    bn = model.get_submodule(bn_name)
    a, c = bn_affine(bn)
    live = a != 0
    safe = np.where(live, a, 1.0)
    W_unit = np.where(live[:, None], W / safe[:, None], 0.0)
    if mod.bias is not None:
        kind.write(mod, W_unit, np.where(live, (b - c) / safe, 0.0))
        return
    kind.write(mod, W_unit, None)
    with torch.no_grad():
        shift = torch.as_tensor(b - c, dtype=bn.running_mean.dtype)
        if bn.affine:
            bn.bias.add_(shift)
        else:  # c = -a * mean: move the mean so that c becomes b
            bn.running_mean.sub_(torch.as_tensor(np.where(live, (b - c) / safe, 0.0),
                                                 dtype=bn.running_mean.dtype))
