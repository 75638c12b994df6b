"""Model factories and hostile pickles for tests/test_bad_input.py.

Importable as ``nettrim_test_archs`` once ``tests/`` is on sys.path, so ``--arch
nettrim_test_archs:tiny`` works in the CLI.
"""

from __future__ import annotations

import torch
from torch import nn

N_IN, N_HID, N_OUT = 4, 6, 3


def tiny() -> nn.Module:
    """The model every fixture checkpoint is made from."""
    return nn.Sequential(nn.Flatten(), nn.Linear(N_IN, N_HID), nn.ReLU(), nn.Linear(N_HID, N_OUT))


def wider() -> nn.Module:
    """Same input and output as ``tiny`` but another hidden width."""
    return nn.Sequential(nn.Flatten(), nn.Linear(N_IN, N_HID + 1), nn.ReLU(),
                         nn.Linear(N_HID + 1, N_OUT))


def five_inputs() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(N_IN + 1, N_HID), nn.ReLU(),
                         nn.Linear(N_HID, N_OUT))


def no_flatten() -> nn.Module:
    """``tiny`` without the Flatten: the state_dict keys are shifted by one ("0.weight")."""
    return nn.Sequential(nn.Linear(N_IN, N_HID), nn.ReLU(), nn.Linear(N_HID, N_OUT))


def tanh_net() -> nn.Module:
    """A Linear followed by Tanh: not a ReLU network."""
    return nn.Sequential(nn.Flatten(), nn.Linear(N_IN, N_HID), nn.Tanh(), nn.Linear(N_HID, N_OUT))


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(N_IN, N_HID)
        self.act = nn.ReLU()
        self.rnn = nn.LSTM(N_HID, N_OUT, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.act(self.fc(x)).unsqueeze(1))
        return out[:, -1]


class EmbedNet(nn.Module):
    """Takes the same float inputs as ``tiny`` but looks the first feature up in a table."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, N_IN)
        self.fc = nn.Linear(N_IN, N_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0].abs().long().clamp(0, 9)
        return self.fc(self.emb(idx))


class CustomNet(nn.Module):
    """A user-defined module class: not on the unpickling allowlist."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(N_IN, N_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def lstm_net() -> nn.Module:
    return LSTMNet()


def embed_net() -> nn.Module:
    return EmbedNet()


def not_a_module() -> int:
    return 42


def broken() -> nn.Module:
    raise RuntimeError("factory exploded")


class Exploit:
    """Unpickling this runs ``exec`` on code that creates ``marker`` (the classic attack)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class Sneaky:
    """Pickled by class reference; its ``__setstate__`` creates ``marker`` when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        with open(state["marker"], "w"):
            pass
