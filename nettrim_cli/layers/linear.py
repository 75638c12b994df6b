"""``nn.Linear``: the weight is already the (out, in) matrix; the design is the input."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nettrim_cli.program import DenseDesign


class LinearKind:
    name = "linear"
    module_types = (nn.Linear,)

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def matrix(self, module: nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
        W = module.weight.detach().cpu().double().numpy()
        b = module.bias.detach().cpu().double().numpy() if module.bias is not None else None
        return W, b

    def write(self, module: nn.Module, W: np.ndarray, b: np.ndarray | None) -> None:
        with torch.no_grad():
            module.weight.copy_(torch.as_tensor(W, dtype=module.weight.dtype))
            if b is not None and module.bias is not None:
                module.bias.copy_(torch.as_tensor(b, dtype=module.bias.dtype))

    def design(self, layer_input: np.ndarray) -> DenseDesign:
        return DenseDesign(layer_input)

    def sizes(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def flops(self, module: nn.Module, out_shape: tuple[int, ...]) -> int:  # noqa: ARG002
        """Multiply-adds of one sample."""
        return int(module.weight.numel())
