"""A unit's calibration data as the layer program sees it: design rows, the folded
pre-activation and the residual term, for Linear units (every sample) and conv units (a
sampled budget of (image, position) pairs, or all of them).

A conv layer of a real network has far more patches than a solver can hold (10,000 images x
24 x 24 positions), so the program uses a budget of them, drawn uniformly without replacement
over all images and positions with a seeded generator; the discrepancy the report gives next
to eps is then also measured on every patch of the calibration set (``full_discrepancy``),
through the convolution itself, never a materialised patch matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nettrim_cli.layers.conv import padded, patches, positions
from nettrim_cli.layers.fold import bn_affine

# Default patch budget: at most this many, and a design of at most DESIGN_BYTES (float64).
MAX_PATCHES = 20000
DESIGN_BYTES = 1 << 27


def default_patches(n_in: int) -> int:
    """Patches for a conv unit whose matrix has ``n_in`` columns when none are asked for:
    MAX_PATCHES, fewer when the design would pass DESIGN_BYTES, but never under 2 n_in."""
    return int(min(MAX_PATCHES, max(2 * n_in, DESIGN_BYTES // (8 * max(n_in, 1)))))


def sample_rows(n_samples: int, out_shape: tuple[int, ...], budget: int | None,
                seed: tuple[int, ...]) -> np.ndarray | None:
    """Flat (image * positions + position) indices of the sampled patches, sorted; None when
    the unit uses every row (a Linear unit, or fewer patches than the budget)."""
    total = n_samples * positions(out_shape)
    if len(out_shape) <= 1 or budget is None or total <= budget:
        return None
    rng = np.random.default_rng(list(seed))
    return np.sort(rng.choice(total, size=budget, replace=False))


def at_rows(arr: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """(n, C) values of a (P, C, *spatial) array at the flat rows (all rows when None); a
    (P, C) array is returned as it is (rows must be None for it)."""
    if arr.ndim == 2:
        return arr
    P, C = arr.shape[:2]
    flat = arr.reshape(P, C, -1)
    if rows is None:
        return flat.transpose(0, 2, 1).reshape(-1, C)
    L = flat.shape[2]
    return flat[rows // L, :, rows % L]


def design_rows(module: nn.Module, x: np.ndarray, rows: np.ndarray | None,
                batch: int = 256) -> np.ndarray:
    """The unit's design at ``rows``: the input itself for a Linear, else the patches of the
    sampled (image, position) pairs (all of them when rows is None), float64.

    Sampled rows are gathered from the padded input directly (``sampled_patches``): the
    im2col of every image would cost a full unfold of the calibration set (3.9M patches for
    LeNet-5's first layer on 5,000 images) to keep 20,000 of them."""
    if x.ndim == 2:
        return np.asarray(x, dtype=np.float64)
    out = []
    if rows is None:
        for a in range(0, x.shape[0], batch):
            cols = patches(module, torch.as_tensor(x[a:a + batch], dtype=torch.float64))
            out.append(cols.permute(0, 2, 1).reshape(-1, cols.shape[1]).numpy())
        return np.concatenate(out, axis=0)
    spatial = _out_shape(module, x)[1:]
    img, pos = rows // positions((0, *spatial)), rows % positions((0, *spatial))
    for a in range(0, x.shape[0], batch):
        sel = (img >= a) & (img < a + batch)
        if sel.any():
            xb = torch.as_tensor(x[a:a + batch], dtype=torch.float64)
            out.append(sampled_patches(module, xb, img[sel] - a, pos[sel], spatial))
    return np.concatenate(out, axis=0)


def sampled_patches(module: nn.Module, x: torch.Tensor, img: np.ndarray, pos: np.ndarray,
                    spatial: tuple[int, ...]) -> np.ndarray:
    """Rows of ``patches(module, x)`` at (image, flat output position) pairs, (n, C_in * K)
    channel major as im2col orders them: input pixel (o * stride + k * dilation) of output
    position o and kernel offset k, read from the input padded as the layer pads it."""
    xp = padded(module, x)
    xp = xp.unsqueeze(2) if xp.ndim == 3 else xp  # Conv1d: one row of height 1
    kernel, stride, dilation = (_pair(module.kernel_size), _pair(module.stride),
                                _pair(module.dilation))
    out_w = spatial[-1]
    oh, ow = pos // out_w, pos % out_w
    kh, kw = np.divmod(np.arange(kernel[0] * kernel[1]), kernel[1])  # kernel offsets, row major
    r = torch.as_tensor(oh[:, None] * stride[0] + kh[None, :] * dilation[0])
    c = torch.as_tensor(ow[:, None] * stride[1] + kw[None, :] * dilation[1])
    i = torch.as_tensor(img)[:, None].expand_as(r)
    got = xp.permute(0, 2, 3, 1)[i, r, c]  # (n, K, C_in)
    return got.permute(0, 2, 1).reshape(len(img), -1).numpy()


def _pair(v: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's (h, w) setting, or (1, v) for a Conv1d's."""
    return (int(v[0]), int(v[1])) if len(v) == 2 else (1, int(v[0]))


def _out_shape(module: nn.Module, x: np.ndarray) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(module(torch.as_tensor(x[:1], dtype=module.weight.dtype)).shape[1:])


@dataclass
class UnitView:
    """One unit's data for its program: X (n, N) design rows, Z (n, M) its folded
    pre-activation, S (n, M) the residual term (None without one); ``used`` of ``total``
    rows (patches for a conv)."""

    X: np.ndarray
    Z: np.ndarray
    S: np.ndarray | None
    used: int
    total: int


def folded_preact(preact: np.ndarray, bn: nn.Module | None) -> np.ndarray:
    """BN(preact) in eval mode, float64 (the unit's folded pre-activation z')."""
    if bn is None:
        return np.asarray(preact, dtype=np.float64)
    a, c = bn_affine(bn)
    shape = (1, -1) + (1,) * (preact.ndim - 2)
    return a.reshape(shape) * preact + c.reshape(shape)


def unit_view(module: nn.Module, bn: nn.Module | None, x: np.ndarray, preact: np.ndarray,
              shortcut: np.ndarray | None, rows: np.ndarray | None) -> UnitView:
    """The unit's program data at ``rows`` (see ``sample_rows``)."""
    Z = at_rows(folded_preact(preact, bn), rows)
    S = None if shortcut is None else at_rows(np.asarray(shortcut, dtype=np.float64), rows)
    total = preact.shape[0] * (positions(preact.shape[1:]) if preact.ndim > 2 else 1)
    return UnitView(X=design_rows(module, x, rows), Z=Z, S=S, used=Z.shape[0], total=total)


def unit_output(Z: np.ndarray, S: np.ndarray | None, activation: str) -> np.ndarray:
    """What the unit's activation gives: relu(z' + s), or z' for no activation."""
    R = Z if S is None or activation != "relu" else Z + S
    return np.maximum(R, 0.0) if activation == "relu" else R


def full_discrepancy(module: nn.Module, x: np.ndarray, W: np.ndarray, b: np.ndarray | None,
                     Z_all: np.ndarray, S_all: np.ndarray | None, activation: str,
                     batch: int = 512) -> tuple[float, float]:
    """||act(W'x + b' + s) - act(z' + s)||_F and ||act(z' + s)||_F over every patch of the
    calibration set, computed through the convolution with the folded pruned weights."""
    weight = torch.as_tensor(W, dtype=torch.float64).reshape(module.weight.shape)
    bias = None if b is None else torch.as_tensor(b, dtype=torch.float64)
    diff2 = ref2 = 0.0
    with torch.no_grad():
        for a in range(0, x.shape[0], batch):
            xb = torch.as_tensor(x[a:a + batch], dtype=torch.float64)
            zhat = module._conv_forward(xb, weight, bias).numpy()
            s = None if S_all is None else S_all[a:a + batch]
            y = unit_output(Z_all[a:a + batch], s, activation)
            yhat = unit_output(zhat, s, activation)
            diff2 += float(np.sum((yhat - y) ** 2))
            ref2 += float(np.sum(y ** 2))
    return float(np.sqrt(diff2)), float(np.sqrt(ref2))
