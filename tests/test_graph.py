"""The graph description: each spelling of ReLU after a unit is seen (torch.fx), a BatchNorm
right after a unit is folded into it and a residual add before its ReLU is its shortcut, a unit
that gets the least-squares program (an unfoldable BatchNorm, an untraceable model) carries a
note, and presets resolve by name."""

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


def test_batchnorm_is_folded_and_a_residual_add_is_the_units_shortcut():
    units = {la.name: la for la in trace_layers(Residual().eval(), torch.randn(5, 4))
             if la.prunable}
    assert (units["fc1"].activation, units["fc1"].bn, units["fc1"].shortcut) == ("relu", "", "")
    assert (units["fc2"].activation, units["fc2"].bn, units["fc2"].note) == ("relu", "bn", "")
    assert units["fc2"].bias  # the folded BN gives the program a bias
    # h + fc3(h): the shortcut is the node holding h (the second ReLU's output)
    assert units["fc3"].activation == "relu" and units["fc3"].shortcut == "relu_1"
    assert units["out"].note == "" and units["out"].shortcut == ""


def test_a_batchnorm_in_training_mode_is_not_folded_and_says_why():
    model = Residual().eval()
    model.bn.train()
    fc2 = next(la for la in trace_layers(model, torch.randn(5, 4)) if la.name == "fc2")
    assert fc2.activation == "none" and fc2.bn == ""
    assert "training mode" in fc2.note and "least-squares" in fc2.note


class TwoAdds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x) + x + 1.0))


def test_a_second_add_before_the_relu_falls_back_with_a_note():
    fc1 = trace_layers(TwoAdds().eval(), torch.randn(5, 4))[0]
    assert fc1.activation == "none" and "second add" in fc1.note


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
