"""The protocol a prunable layer kind follows."""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np
from torch import nn

from nettrim_cli.program import DenseDesign


class LayerKind(Protocol):
    """A kind of prunable unit.

    name: recorded in dumps and reports ("linear"); module_types: the torch modules it prunes.
    """

    name: ClassVar[str]
    module_types: ClassVar[tuple[type, ...]]

    def matches(self, module: nn.Module) -> bool: ...

    def matrix(self, module: nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
        """The weight as an (out, in) float64 matrix and the bias (or None)."""
        ...

    def write(self, module: nn.Module, W: np.ndarray, b: np.ndarray | None) -> None:
        """Put an (out, in) matrix (and bias) back into the module's own tensors."""
        ...

    def design(self, layer_input: np.ndarray) -> DenseDesign:
        """The design the weight matrix multiplies, from the layer's input (P, ...)."""
        ...

    def sizes(self, module: nn.Module) -> tuple[int, int]:
        """(in, out) sizes of the matrix view."""
        ...

    def flops(self, module: nn.Module, out_shape: tuple[int, ...]) -> int:
        """Multiply-adds of one sample through the layer (``out_shape``: per-sample output)."""
        ...
