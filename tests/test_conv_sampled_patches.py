"""Sampled conv patches (unitdata.design_rows with a patch budget) are gathered from the
padded input directly instead of unfolding every image; they must be exactly the rows the
full im2col gives at the same (image, position) pairs, for every layout the conv units take."""

import numpy as np
import pytest
import torch
from torch import nn

from nettrim_cli.unitdata import design_rows, sample_rows

LAYERS = {
    "conv2d": lambda: nn.Conv2d(3, 4, 3),
    "stride-pad": lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2)),
    "dilation": lambda: nn.Conv2d(3, 4, 3, dilation=2, padding=1),
    "reflect": lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
    "circular": lambda: nn.Conv2d(3, 4, 3, padding=2, padding_mode="circular"),
    "groups": lambda: nn.Conv2d(4, 6, 3, groups=2, stride=2),
    "depthwise": lambda: nn.Conv2d(4, 4, 3, groups=4, padding=1),
    "same": lambda: nn.Conv2d(3, 4, 3, padding="same"),
    "conv1d": lambda: nn.Conv1d(3, 5, 4, stride=2, padding=1, dilation=2),
    "conv1d-replicate": lambda: nn.Conv1d(3, 5, 3, padding=1, padding_mode="replicate"),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_sampled_patches_equal_im2col_rows(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    c_in = layer.in_channels
    shape = (7, c_in, 9, 11) if isinstance(layer, nn.Conv2d) else (7, c_in, 13)
    x = np.random.default_rng(1).standard_normal(shape)
    full = design_rows(layer, x, None)
    with torch.no_grad():
        out_shape = tuple(layer(torch.as_tensor(x[:1])).shape[1:])
    rows = sample_rows(x.shape[0], out_shape, full.shape[0] // 3, (0, 1))
    assert rows is not None and len(rows) == full.shape[0] // 3
    got = design_rows(layer, x, rows, batch=3)  # several image batches
    np.testing.assert_array_equal(got, full[rows])
    # the design reproduces the layer's output at the sampled positions
    with torch.no_grad():
        y = layer(torch.as_tensor(x)).numpy().reshape(shape[0], layer.out_channels, -1)
    L = y.shape[2]
    W = layer.weight.detach().numpy().reshape(layer.out_channels, -1)
    per_in, per_out = W.shape[1], layer.out_channels // layer.groups
    for g in range(layer.groups):
        cols = slice(g * per_in, (g + 1) * per_in)
        outs = slice(g * per_out, (g + 1) * per_out)
        pred = got[:, cols] @ W[outs].T + layer.bias.detach().numpy()[outs]
        np.testing.assert_allclose(pred, y[rows // L][:, outs][np.arange(len(rows)), :,
                                                             rows % L], atol=1e-10)
