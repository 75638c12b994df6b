"""Conv units: the patch design is the im2col of the layer input (stride, padding, dilation,
groups), a conv program gives the weights the Linear program gives on the same patches, a
grouped conv is its groups' programs, Proposition 1 holds per conv layer on every patch, and a
sampled patch budget is seeded."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import invoke
from torch import nn

from nettrim_cli.graph import trace_layers
from nettrim_cli.layers.fold import unit_matrix
from nettrim_cli.methods.netrim.unit import build
from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers import make_solver
from nettrim_cli.solvers.base import SolverSettings
from nettrim_cli.unitdata import sample_rows, unit_view
from tests.conv_test_archs import lenet_tiny, randomise_bn, res_tiny


def manual_patches(x: np.ndarray, k: tuple, stride: tuple, pad: tuple, dil: tuple
                   ) -> np.ndarray:
    """im2col written out with loops: rows (image, out_row, out_col), columns (c, ki, kj)."""
    P, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    Ho = (H + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1
    rows = []
    for p in range(P):
        for i in range(Ho):
            for j in range(Wo):
                r0, c0 = i * stride[0], j * stride[1]
                rows.append(xp[p, :, r0:r0 + dil[0] * k[0]:dil[0],
                               c0:c0 + dil[1] * k[1]:dil[1]].reshape(-1))
    return np.array(rows)


def conv_unit(conv: nn.Module, x: torch.Tensor, epsilon: float = 0.1):
    """The conv's unit info, view (every patch) and programs, as the prune builds them."""
    model = nn.Sequential(conv, nn.ReLU()).eval()
    info = trace_layers(model, x)[0]
    with torch.no_grad():
        pre = conv(x).double().numpy()
    view = unit_view(conv, None, x.double().numpy(), pre, None, None)
    W0, b0 = unit_matrix(model, "0")
    return info, view, build(info, conv, view, W0, b0, False, epsilon, 1.0, None)


def solve(program: LayerProgram) -> np.ndarray:
    return make_solver("osqp").solve(program, SolverSettings(workers=1)).Wa


@pytest.mark.parametrize("geometry", [dict(stride=2, padding=1), dict(dilation=2),
                                      dict(stride=(1, 2), padding=(2, 0))])
def test_conv_program_gives_the_linear_programs_weights_on_the_same_patches(geometry):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, **geometry).double()
    x = torch.randn(5, 2, 9, 9, dtype=torch.float64)
    info, view, unit = conv_unit(conv, x)
    X = manual_patches(x.numpy(), conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    np.testing.assert_allclose(view.X, X, atol=1e-12)
    (_, program), = unit.parts
    with torch.no_grad():
        Y = np.maximum(X @ conv.weight.reshape(3, -1).numpy().T + conv.bias.numpy(), 0.0)
    linear = LayerProgram(X=X, Y=Y, W0=program.W0, b0=program.b0, activation="relu",
                          epsilon=0.1 * float(np.linalg.norm(Y)), name="linear")
    np.testing.assert_allclose(program.Y, Y, atol=1e-10)
    Wa_conv, Wa_lin = solve(program), solve(linear)
    np.testing.assert_allclose(Wa_conv, Wa_lin, atol=1e-9)
    assert np.count_nonzero(Wa_conv[:, :-1]) < conv.weight.numel()  # something was pruned


def test_conv1d_patches_are_the_im2col_of_its_input():
    torch.manual_seed(1)
    conv = nn.Conv1d(3, 2, 4, stride=3, padding=2, dilation=2).double()
    x = torch.randn(4, 3, 17, dtype=torch.float64)
    _, view, _ = conv_unit(conv, x)
    X = manual_patches(x.numpy()[:, :, None, :], (1, 4), (1, 3), (0, 2), (1, 2))
    np.testing.assert_allclose(view.X, X, atol=1e-12)


@pytest.mark.parametrize("channels,groups", [((4, 4), 4), ((4, 6), 2)])
def test_grouped_conv_is_solved_as_one_program_per_group(channels, groups):
    torch.manual_seed(2)
    c_in, c_out = channels
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups).double()
    x = torch.randn(4, c_in, 6, 6, dtype=torch.float64)
    _, _, unit = conv_unit(conv, x)
    assert len(unit.parts) == groups
    ci, co = c_in // groups, c_out // groups
    for g, (rows, program) in enumerate(unit.parts):
        # the group as a conv of its own: its channels in, its channels out
        alone = nn.Conv2d(ci, co, 3, padding=1).double()
        with torch.no_grad():
            alone.weight.copy_(conv.weight[g * co:(g + 1) * co])
            alone.bias.copy_(conv.bias[g * co:(g + 1) * co])
        _, _, own = conv_unit(alone, x[:, g * ci:(g + 1) * ci])
        (_, expected), = own.parts
        assert rows == slice(g * co, (g + 1) * co)
        np.testing.assert_allclose(program.X, expected.X, atol=1e-12)
        np.testing.assert_allclose(program.Y, expected.Y, atol=1e-12)
        np.testing.assert_allclose(solve(program), solve(expected), atol=1e-9)


def test_patch_sample_is_seeded_uniform_and_within_budget():
    a = sample_rows(100, (4, 10, 10), 500, (0, 1))
    assert a.shape == (500,) and len(np.unique(a)) == 500 and a.max() < 100 * 100
    np.testing.assert_array_equal(a, sample_rows(100, (4, 10, 10), 500, (0, 1)))
    assert not np.array_equal(a, sample_rows(100, (4, 10, 10), 500, (1, 1)))
    assert sample_rows(3, (4, 10, 10), 500, (0, 1)) is None  # 300 patches: all used
    assert sample_rows(100, (12,), 5, (0, 1)) is None  # a Linear unit: every sample


def _prune(tmp_path, factory, patches, mode="parallel", x_shape=(16, 1, 10, 10)):
    torch.manual_seed(3)
    model = randomise_bn(factory())
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal(x_shape)
            .astype(np.float32))
    arch = f"tests.conv_test_archs:{factory.__name__}"
    r = invoke("dump", tmp_path / "sd.pt", "--arch", arch, "--inputs", tmp_path / "x.npy",
               "-o", tmp_path / "acts.h5")
    assert r.exit_code == 0, r.stderr
    r = invoke("prune", tmp_path / "sd.pt", "--arch", arch, "--acts", tmp_path / "acts.h5",
               "--mode", mode, "--epsilon", "0.1", "--patches", patches,
               "-o", tmp_path / "p.pt", "--report", tmp_path / "r.json", "-q")
    assert r.exit_code == 0, r.stderr
    return model, json.loads((tmp_path / "r.json").read_text())


def test_proposition_1_holds_per_conv_layer_on_every_patch(tmp_path):
    """With the budget above the patch count every patch is in the program, so the measured
    discrepancy on all patches is the program's and stays within eps (Proposition 1)."""
    _, report = _prune(tmp_path, lenet_tiny, 100000)
    convs = [la for la in report["layers"] if la["kind"] == "conv"]
    assert len(convs) == 2
    for la in convs:
        assert la["rows"] == la["rows_total"]
        assert la["discrepancy_all"] == pytest.approx(la["discrepancy"], rel=1e-6)
        assert la["discrepancy_all"] <= la["epsilon"] * (1 + 1e-4)
    assert sum(la["nonzeros_after"] for la in convs) < sum(la["params"] for la in convs)


def test_sampled_conv_program_reports_patches_and_all_patch_discrepancy(tmp_path):
    model, report = _prune(tmp_path, res_tiny, 300)
    pruned = res_tiny().eval()
    pruned.load_state_dict(torch.load(tmp_path / "p.pt"))
    assert set(pruned.state_dict()) == set(model.state_dict())
    x = torch.as_tensor(np.load(tmp_path / "x.npy"))
    with h5py.File(tmp_path / "acts.h5", "r") as f:  # conv inputs in their own shape, chunked
        g = next(f["layers"][k] for k in f["layers"] if f["layers"][k].attrs["name"] == "conv")
        assert g["input"].shape == g["shortcut"].shape == (16, 4, 10, 10)
        assert g["input"].chunks[1:] == (4, 10, 10) and g.attrs["bn"] == "bn"
    by = {la["name"]: la for la in report["layers"]}
    assert by["conv"]["rows"] == 300 and by["conv"]["rows_total"] == 16 * 100
    with torch.no_grad():  # the residual unit's output on every patch, recomputed here
        h = torch.relu(model.bn0(model.stem(x))).double()
        y = torch.relu(model.bn(model.conv(h.float())).double() + h)
        yhat = torch.relu(pruned.bn(pruned.conv(h.float())).double() + h)
    assert by["conv"]["discrepancy_all"] == pytest.approx(float((y - yhat).norm()), rel=1e-4)
    assert by["conv"]["output_norm_all"] == pytest.approx(float(y.norm()), rel=1e-4)
    assert by["conv"]["discrepancy"] <= by["conv"]["epsilon"] * (1 + 1e-4)
    convs = [by[n] for n in ("stem", "conv", "dw")]
    assert all(la["kind"] == "conv" for la in convs)
    assert sum(la["nonzeros_after"] for la in convs) < sum(la["params"] for la in convs)


def test_cascade_prunes_conv_bn_and_residual_units_and_writes_what_it_reports(tmp_path):
    """Algorithm 2 on a network with folded BNs, a residual unit and a depthwise conv: the
    written checkpoint holds the reported zeros, and each unit's eps is eq. 7's."""
    _, report = _prune(tmp_path, res_tiny, 300, mode="cascade")
    pruned = res_tiny()
    pruned.load_state_dict(torch.load(tmp_path / "p.pt"))
    for la in report["layers"]:
        if la.get("nonzeros_after") is None:
            continue
        w = dict(pruned.named_modules())[la["name"]].weight
        assert int(torch.count_nonzero(w)) == la["nonzeros_after"]
        assert la["constraint"] <= la["epsilon"] * (1 + 1e-3)
