"""The graph description: each spelling of ReLU after a unit is seen (torch.fx), a unit that
gets the least-squares program because of a BatchNorm, a residual add or an untraceable model
carries a note, and presets resolve by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nettrim_cli.config import load_config, preset_names
from nettrim_cli.graph import trace_layers

SPELLINGS = {
    "module": lambda m, h: m.act(h),
    "F.relu": lambda m, h: F.relu(h),
    "torch.relu": lambda m, h: torch.relu(h),
    "Tensor.relu": lambda m, h: h.relu(),
    "clamp(min=0)": lambda m, h: h.clamp(min=0),
    "torch.clamp(h, 0)": lambda m, h: torch.clamp(h, 0),
    "dropout then F.relu": lambda m, h: F.relu(m.drop(h)),
}


class Net(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        self.act, self.drop = nn.ReLU(), nn.Dropout(0.1)
        self.spelling = SPELLINGS[spelling]

    def forward(self, x):
        return self.fc2(self.spelling(self, self.fc1(x)))


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_each_relu_spelling_gives_the_relu_program(spelling):
    layers = trace_layers(Net(spelling).eval(), torch.randn(5, 4))
    assert [(la.name, la.activation, la.note) for la in layers] == [
        ("fc1", "relu", ""), ("fc2", "none", "")]


def test_clamp_with_another_floor_is_not_relu():
    net = Net("module")
    net.spelling = lambda m, h: h.clamp(min=0.5)
    assert trace_layers(net.eval(), torch.randn(5, 4))[0].activation == "none"


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.bn = nn.Linear(4, 8), nn.Linear(8, 8), nn.BatchNorm1d(8)
        self.fc3, self.out = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.relu(self.bn(self.fc2(h)))
        h = torch.relu(h + self.fc3(h))
        return self.out(h)


def test_batchnorm_and_residual_units_say_why_they_get_least_squares():
    units = {la.name: la for la in trace_layers(Residual().eval(), torch.randn(5, 4))
             if la.prunable}
    assert units["fc1"].activation == "relu" and units["fc1"].note == ""
    assert units["fc2"].activation == "none" and "BatchNorm1d" in units["fc2"].note
    assert units["fc3"].activation == "none" and "residual" in units["fc3"].note
    assert units["out"].note == ""


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.fc2(F.relu(self.fc1(x)))


def test_untraceable_model_falls_back_to_hooks_and_says_so():
    layers = trace_layers(Branchy().eval(), torch.randn(5, 4))
    assert layers[0].activation == "none"
    assert "does not trace with torch.fx" in layers[0].note


def test_presets_resolve_by_name_from_the_package():
    assert {"fast", "cascade", "parallel", "demo"} <= set(preset_names())
    assert load_config("fast") == load_config("configs/fast.toml")


def test_prune_with_a_preset_name_records_the_preset_file(env):
    import json

    from conftest import invoke

    out, rep = env.out / "p.pt", env.out / "r.json"
    r = invoke("prune", env.a.model, "--acts", env.a.acts, "--config", "parallel", "-o", out,
               "--report", rep, "-q")
    assert r.exit_code == 0, r.stderr
    recorded = json.loads(rep.read_text())["inputs"]["config"]["path"]
    assert recorded.endswith("presets/parallel.toml")
