"""Model factories for the end-to-end tests' --arch option (importable from tests/)."""

from torch import nn


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 3))


class Custom(nn.Module):
    """A user-defined module class: a whole-module checkpoint of it needs --trust-checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        return self.body(x)
