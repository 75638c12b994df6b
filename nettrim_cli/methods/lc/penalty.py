"""The L step's term of LC as a penalty hook for the shared training loop.

An LC L step trains the network on its loss plus (mu/2) sum_l ||w_l - targets_l||^2, with
``targets = theta + lambda/mu`` from ``LearningCompression.step``. The training loop adds
``penalty(model)`` to each mini-batch's loss; ``lc_penalty`` builds that callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


def lc_penalty(names: Sequence[str], targets: Sequence[np.ndarray],
               mu: float) -> Callable[[nn.Module], torch.Tensor]:
    """``penalty(model) = (mu/2) sum_l ||model.<names[l]> - targets[l]||^2``.

    Args:
        names: the pruned parameters' names in the model (``"fc1.weight"``), in the order of
            the LC weights and targets.
        targets: theta + lambda/mu per parameter, of the parameters' shapes.
        mu: the LC step's penalty parameter.

    Returns:
        A callable for the training loop's penalty hook. The targets are moved to each
        parameter's device and dtype once, on the first call, not per mini-batch.
    """
    if len(names) != len(targets):
        raise ValueError(f"{len(names)} parameter names for {len(targets)} targets")
    cache: dict[str, torch.Tensor] = {}

    def penalty(model: nn.Module) -> torch.Tensor:
        total = None
        for name, target in zip(names, targets, strict=True):
            w = model.get_parameter(name)
            t = cache.get(name)
            if t is None or t.device != w.device or t.dtype != w.dtype:
                if tuple(np.shape(target)) != tuple(w.shape):
                    raise ValueError(f"target for {name} has shape {np.shape(target)}, "
                                     f"the parameter {tuple(w.shape)}")
                t = cache[name] = torch.as_tensor(target, dtype=w.dtype, device=w.device)
            term = torch.sum((w - t) ** 2)
            total = term if total is None else total + term
        if total is None:
            raise ValueError("no parameters to penalise")
        return 0.5 * mu * total

    return penalty
