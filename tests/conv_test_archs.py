"""Small conv networks for the conv tests' --arch option (importable from tests/)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lenet_tiny() -> nn.Module:
    """Conv-ReLU-pool twice, then Linear layers (LeNet-5 in miniature, 1x10x10 inputs)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 5 * 5, 12), nn.ReLU(), nn.Linear(12, 3))


class ResTiny(nn.Module):
    """Conv-BN-ReLU, a residual block relu(bn(conv(h)) + h), a depthwise conv, a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, stride=2, groups=4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        h = torch.relu(self.bn(self.conv(h)) + h)
        h = self.dw(h).clamp(min=0)
        return self.fc(torch.flatten(h, 1))


def res_tiny() -> nn.Module:
    return ResTiny()


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters away from the defaults (as after training)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            if m.affine:
                m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.data.copy_(0.2 * torch.randn(n, generator=g))
    return model.eval()
