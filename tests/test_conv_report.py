"""Whole conv networks: the report counts every weight the model has and says which layers
were pruned, gives kept layers' kind, shape and params and each unit's multiply-adds dense and
after pruning; the baselines prune conv layers to a Net-Trim report's counts; finetune keeps
conv zeros."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import invoke
from torch import nn

from nettrim_cli.checkpoint import load_checkpoint
from tests.conv_test_archs import lenet_tiny, randomise_bn, res_tiny


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    d = tmp_path_factory.mktemp("convnet")
    torch.manual_seed(5)
    torch.save(lenet_tiny().eval(), d / "model.pt")
    torch.save(randomise_bn(res_tiny()).state_dict(), d / "res.pt")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((24, 1, 10, 10)).astype(np.float32)
    np.savez(d / "data.npz", x=x, y=rng.integers(0, 3, 24))
    np.save(d / "x.npy", x)
    arch = ("--arch", "tests.conv_test_archs:res_tiny")
    for model, extra in (("model", ()), ("res", arch)):
        r = invoke("dump", d / f"{model}.pt", *extra, "--inputs", d / "x.npy",
                   "-o", d / f"{model}.h5")
        assert r.exit_code == 0, r.stderr
        r = invoke("prune", d / f"{model}.pt", *extra, "--acts", d / f"{model}.h5",
                   "--mode", "parallel", "--epsilon", "0.1", "--patches", "400",
                   "-o", d / f"{model}-p.pt", "--report", d / f"{model}.json", "-q")
        assert r.exit_code == 0, r.stderr
    return SimpleNamespace(d=d, report=json.loads((d / "model.json").read_text()),
                           res=json.loads((d / "res.json").read_text()))


def test_whole_model_counts_every_parameter_and_names_the_pruned_layers(pruned):
    original = torch.load(pruned.d / "model.pt", weights_only=False)
    written = torch.load(pruned.d / "model-p.pt", weights_only=False)
    m = pruned.report["network"]["model"]
    assert m["params"] == sum(p.numel() for p in original.parameters())
    assert m["nonzeros_after"] == sum(int(torch.count_nonzero(p)) for p in written.parameters())
    assert m["pruned_layers"] == ["0", "3", "6", "8"] and m["kept_layers"] == []
    convs = [la for la in pruned.report["layers"] if la["kind"] == "conv"]
    assert sum(la["nonzeros_after"] for la in convs) == sum(
        int(torch.count_nonzero(written[i].weight)) for i in (0, 3))


def test_flops_per_layer_and_model_dense_and_pruned(pruned):
    written = torch.load(pruned.d / "model-p.pt", weights_only=False)
    positions = {"0": 8 * 8, "3": 5 * 5, "6": 1, "8": 1}  # output positions per sample
    net = lenet_tiny()
    by = {la["name"]: la for la in pruned.report["layers"]}
    for name, pos in positions.items():
        mod = dict(net.named_modules())[name]
        assert by[name]["flops_dense"] == mod.weight.numel() * pos
        nnz = int(torch.count_nonzero(dict(written.named_modules())[name].weight))
        assert by[name]["flops_pruned"] == nnz * pos
    n = pruned.report["network"]
    assert n["flops_dense"] == sum(by[k]["flops_dense"] for k in positions)
    assert n["flops_pruned"] == sum(by[k]["flops_pruned"] for k in positions)
    assert n["flops_pruned"] < n["flops_dense"]


def test_kept_layers_show_kind_shape_and_params(pruned):
    by = {la["name"]: la for la in pruned.res["layers"]}
    assert by["bn"]["kind"] == "batchnorm2d" and by["bn"]["weight_shape"] == [4]
    assert by["bn"]["kept_params"] == 8 and "folded into conv" in by["bn"]["note"]
    assert "bn folded" in by["conv"]["program"] and "residual" in by["conv"]["program"]
    assert pruned.res["network"]["model"]["kept_layers"] == ["bn0", "bn"]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("model", ["model", "res"])
def test_baselines_prune_conv_layers_to_the_matched_counts(pruned, tmp_path, method, model):
    extra = ("--arch", "tests.conv_test_archs:res_tiny") if model == "res" else ()
    r = invoke("prune", pruned.d / f"{model}.pt", *extra, "--acts", pruned.d / f"{model}.h5",
               "--method", method, "--match", pruned.d / f"{model}.json",
               "-o", tmp_path / "b.pt", "--report", tmp_path / "b.json", "-q")
    assert r.exit_code == 0, r.stderr
    ours = json.loads((tmp_path / "b.json").read_text())["layers"]
    theirs = json.loads((pruned.d / f"{model}.json").read_text())["layers"]
    got = {la["name"]: la["nonzeros_after"] for la in ours if la.get("nonzeros_after")}
    want = {la["name"]: la["nonzeros_after"] for la in theirs if la.get("nonzeros_after")}
    assert got == want and any(la["kind"] == "conv" for la in ours)


def test_finetune_keeps_conv_zeros(pruned, tmp_path):
    out, summ = tmp_path / "ft.pt", tmp_path / "ft.json"
    r = invoke("finetune", pruned.d / "model-p.pt", "--data", pruned.d / "data.npz",
               "--epochs", "2", "--batch-size", "8", "--lr", "0.05", "-o", out,
               "--summary", summ, "-q")
    assert r.exit_code == 0, r.stderr
    before = load_checkpoint(str(pruned.d / "model-p.pt")).model
    after = load_checkpoint(str(out)).model
    for i in (0, 3):
        w0, w = before[i].weight.detach(), after[i].weight.detach()
        assert isinstance(before[i], nn.Conv2d) and bool((w0 == 0).any())
        assert torch.equal(w[w0 == 0], torch.zeros_like(w[w0 == 0]))
        # the kept conv weights were trained (those feeding a channel that is never positive
        # on these data get no gradient)
        assert float((w[w0 != 0] != w0[w0 != 0]).float().mean()) > 0.5
    s = json.loads(summ.read_text())
    assert {"0", "3"} <= {la["name"] for la in s["masked_layers"]} and s["zeros_kept"]
