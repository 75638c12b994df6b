"""The bitmask encoding of a pruned weight: its kept entries in order plus one bit per entry.

A weight ``W`` of any shape is read flat (row-major, as ``W.flatten()``); entry ``i`` is kept
when its bit pattern is not all zero, so ``-0.0`` is kept and densifying gives ``W`` back bit
for bit. ``mask`` packs the keep bits eight to a byte, least significant bit first (numpy's
``packbits(bitorder="little")``); the bits past the last entry are zero. Densifying needs only
torch:

    bits = (mask.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
    keep = bits.flatten()[:numel].bool()
    W = torch.zeros(numel, dtype=values.dtype); W[keep] = values; W = W.reshape(shape)

At sparsity s a float32 weight takes (1 - s) * 4 + 1/8 bytes per entry instead of 4: 13.1% of
the dense size at s = 0.9, 8.1% at s = 0.95.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MAX_DIMS = 8  # a weight of more dimensions than this is refused as damaged


class DamagedEntry(ValueError):
    """An encoded weight whose parts disagree (the caller names the file)."""


@dataclass(frozen=True)
class SparseWeight:
    """A weight stored as its kept entries (``values``, 1-D) and packed keep bits (``mask``)."""

    values: torch.Tensor
    mask: torch.Tensor  # uint8, ceil(numel / 8) bytes
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.mask.numel()

    @property
    def sparsity(self) -> float:
        """The fraction of entries that are zero (not stored)."""
        return 1.0 - self.values.numel() / self.numel if self.numel else 0.0


def kept(weight: torch.Tensor) -> torch.Tensor:
    """A bool tensor, one per entry of ``weight`` (flat): the bit pattern is not all zero."""
    flat = weight.detach().reshape(-1).contiguous()
    return flat.view(torch.uint8).view(flat.numel(), flat.element_size()).ne(0).any(dim=1)


def pack(weight: torch.Tensor) -> SparseWeight:
    """Encode ``weight`` (any shape and dtype) as kept values and packed keep bits.

    Args:
        weight: the dense tensor.
    Returns:
        the SparseWeight whose ``unpack`` is ``weight`` bit for bit.
    Example:
        >>> sw = pack(torch.tensor([[0.0, 1.5], [-0.0, 0.0]]))
        >>> sw.values.tolist(), sw.mask.tolist(), sw.shape
        ([1.5, -0.0], [6], (2, 2))
    """
    keep = kept(weight)
    flat = weight.detach().reshape(-1)
    mask = np.packbits(keep.numpy(), bitorder="little")
    return SparseWeight(values=flat[keep].clone(), mask=torch.from_numpy(mask),
                        shape=tuple(int(n) for n in weight.shape))


def unpack(sw: SparseWeight) -> torch.Tensor:
    """The dense tensor ``sw`` encodes, after checking its parts agree (DamagedEntry if not).

    The checks bound the memory a damaged entry can ask for: the shape must account for the
    mask's bits, so a dense tensor is never larger than eight entries per stored mask byte.
    """
    check(sw)
    keep = _unpacked_bits(sw.mask, sw.numel)
    out = torch.zeros(sw.numel, dtype=sw.values.dtype)
    out[keep] = sw.values
    return out.reshape(sw.shape)


def check(sw: SparseWeight) -> None:
    """Raise DamagedEntry unless ``sw``'s values, mask and shape fit together."""
    shape, values, mask = sw.shape, sw.values, sw.mask
    if not isinstance(values, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise DamagedEntry("values and mask must be tensors")
    if values.layout != torch.strided or mask.layout != torch.strided:
        raise DamagedEntry("values and mask must be dense tensors")
    if values.dim() != 1 or mask.dim() != 1:
        raise DamagedEntry(f"values and mask must be 1-D, found {values.dim()}-D and "
                           f"{mask.dim()}-D")
    if mask.dtype != torch.uint8:
        raise DamagedEntry(f"mask must be uint8, found {mask.dtype}")
    if values.dtype in (torch.bool,) or values.is_complex() or values.is_quantized:
        raise DamagedEntry(f"values have an unsupported dtype {values.dtype}")
    if not isinstance(shape, tuple) or len(shape) > MAX_DIMS or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise DamagedEntry(f"shape must be at most {MAX_DIMS} sizes >= 0, found {shape!r}")
    numel = math.prod(shape)
    if mask.numel() != (numel + 7) // 8:
        raise DamagedEntry(f"mask holds {mask.numel()} bytes but shape {list(shape)} needs "
                           f"{(numel + 7) // 8}")
    keep = _unpacked_bits(mask, 8 * mask.numel())
    if keep[numel:].any():
        raise DamagedEntry("mask has bits set past the last entry")
    n_kept = int(keep.sum())
    if n_kept != values.numel():
        raise DamagedEntry(f"mask keeps {n_kept} entries but {values.numel()} values are "
                           "stored")


def _unpacked_bits(mask: torch.Tensor, numel: int) -> torch.Tensor:
    bits = (mask.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[:numel].bool()
