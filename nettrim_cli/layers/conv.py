"""``nn.Conv1d`` / ``nn.Conv2d``: the linearity of convolution (paper, section 4: "the
linearity of the convolution allows using the Net-Trim for the associated layers").

A conv layer applies the same weights to every patch of its input: output channel m at one
position is w_m^T p, p the patch (im2col) under the kernel there. So the layer is a Linear
layer whose samples are (image, position) pairs: the weight (C_out, C_in/g, *k) is viewed as
the (C_out, C_in/g * prod(k)) matrix, and the design holds the patches. With ``groups = g``
output channels of group j only see the input channels of group j: columns
[j * C_in/g * K, (j+1) * C_in/g * K) of the full patch matrix (``group_columns``).
Patches come from ``torch.nn.functional.unfold`` after the layer's own padding (any padding
mode), so stride, dilation and padding are those of the layer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nettrim_cli.program import DenseDesign


class ConvKind:
    name = "conv"
    module_types = (nn.Conv1d, nn.Conv2d)

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, self.module_types)

    def matrix(self, module: nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
        W = module.weight.detach().cpu().double().numpy().reshape(module.out_channels, -1)
        b = module.bias.detach().cpu().double().numpy() if module.bias is not None else None
        return W, b

    def write(self, module: nn.Module, W: np.ndarray, b: np.ndarray | None) -> None:
        with torch.no_grad():
            module.weight.copy_(torch.as_tensor(W, dtype=module.weight.dtype)
                                .reshape(module.weight.shape))
            if b is not None and module.bias is not None:
                module.bias.copy_(torch.as_tensor(b, dtype=module.bias.dtype))

    def design(self, layer_input: np.ndarray, module: nn.Module | None = None) -> DenseDesign:
        """Every patch of every image, (P * positions, C_in * K): for a small input only;
        large layers sample positions (``nettrim_cli.unitdata``)."""
        x = torch.as_tensor(layer_input)
        cols = patches(module, x)  # (P, C_in*K, L)
        return DenseDesign(cols.permute(0, 2, 1).reshape(-1, cols.shape[1]).double().numpy())

    def sizes(self, module: nn.Module) -> tuple[int, int]:
        return module.in_channels // module.groups * _kernel_size(module), module.out_channels

    def flops(self, module: nn.Module, out_shape: tuple[int, ...]) -> int:
        """Multiply-adds of one sample: weights times output positions."""
        return int(module.weight.numel()) * positions(out_shape)


def _kernel_size(module: nn.Module) -> int:
    return int(np.prod(module.kernel_size))


def positions(out_shape: tuple[int, ...]) -> int:
    """Output positions of one sample, from its per-sample output shape (C, *spatial)."""
    return int(np.prod(out_shape[1:])) if len(out_shape) > 1 else 1


def group_columns(module: nn.Module, group: int) -> slice:
    """The patch-matrix columns that group ``group``'s output channels multiply."""
    width = module.in_channels // module.groups * _kernel_size(module)
    return slice(group * width, (group + 1) * width)


def group_rows(module: nn.Module, group: int) -> slice:
    """The output channels (weight-matrix rows) of group ``group``."""
    per = module.out_channels // module.groups
    return slice(group * per, (group + 1) * per)


def padded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C_in, *spatial) padded as the layer pads its input (any padding mode)."""
    x = x.to(module.weight.dtype) if not x.is_floating_point() else x
    pad = module._reversed_padding_repeated_twice
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    return x


def patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """im2col of ``x`` (B, C_in, *spatial) for ``module``: (B, C_in * K, positions), channel
    major (column c * K + kernel offset), matching ``weight.reshape(C_out, -1)`` per group."""
    x = padded(module, x)
    if isinstance(module, nn.Conv1d):
        return F.unfold(x.unsqueeze(2), (1, module.kernel_size[0]),
                        dilation=(1, module.dilation[0]), stride=(1, module.stride[0]))
    return F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
