"""`nettrim export`'s core: the bitmask encoding, the round trip of every checkpoint form in
every format, conv weights, the plain-torch recipe of the README, and sparse inference."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import nettrim_test_archs as archs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nettrim_cli.checkpoint import load_checkpoint
from nettrim_cli.errors import BadInput
from nettrim_cli.export import (
    SparseChain,
    SparseLinear,
    SparseWeight,
    export_file,
    pack,
    read_export,
    sparse_model,
    unpack,
)

ROOT = Path(__file__).resolve().parent.parent
ARCH = "nettrim_test_archs:tiny"
FORMATS = ("torch", "safetensors")


def bits(t: torch.Tensor) -> bytes:
    """The tensor's dtype, shape and bytes: equal only when equal bit for bit."""
    return repr((t.dtype, tuple(t.shape))).encode() + \
        t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def same_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(bits(a[k]) == bits(b[k]) for k in a)


def pruned_tiny(seed: int = 0) -> nn.Module:
    """``archs.tiny`` with its small weights zeroed and one signed zero."""
    torch.manual_seed(seed)
    model = archs.tiny()
    with torch.no_grad():
        for lin in (model[1], model[3]):
            lin.weight[lin.weight.abs() < 0.25] = 0.0
        model[1].weight[0, 0] = -0.0
    return model.eval()


def pruned_mlp(widths=(784, 300, 100, 10), sparsity: float = 0.9, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for lin in model:
            if isinstance(lin, nn.Linear):
                w = lin.weight.view(-1)
                w[w.abs().argsort()[: round(sparsity * w.numel())]] = 0.0
    return model


def forms(model: nn.Module) -> dict[str, object]:
    sd = model.state_dict()
    return {"module": model,
            "state_dict": sd,
            "wrapped_state_dict": {"epoch": 3, "state_dict": sd, "best": 0.9},
            "wrapped_model": {"model": sd, "optimizer": {"lr": 0.1, "m": torch.arange(3.0)}},
            "dataparallel_prefix": {f"module.{k}": v for k, v in sd.items()},
            "tutorial": {"epoch": 3, "model_state_dict": sd, "optimizer_state_dict": {
                "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.ones(6, 4)}},
                "param_groups": [{"lr": 0.001, "params": [0, 1, 2, 3]}]}},
            "only_tensor_dict": {"weights_ema": sd, "config": {"width": 6}},
            "module_under_key": {"epoch": 3, "model": model}}


# ----------------------------------------------------------------------------------------------
# The encoding


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 6), (8, 8), (4, 3, 5, 5), (2, 3, 7)])
def test_pack_unpack_gives_the_tensor_back_bit_for_bit(dtype, shape):
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    w = torch.randn(shape, generator=g).to(dtype)
    w[torch.rand(shape, generator=g) < 0.7] = 0.0
    if w.numel():
        w.view(-1)[0] = -0.0  # a signed zero is kept, not dropped
    sw = pack(w)
    assert bits(unpack(sw)) == bits(w)
    assert sw.mask.dtype == torch.uint8 and sw.mask.numel() == (w.numel() + 7) // 8
    assert sw.values.numel() == int((w != 0).sum()) + (1 if w.numel() else 0)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from([0.0, -0.0, 1.5, -2.25, 1e-30, 3e38]), max_size=70),
       st.sampled_from(["float32", "float64", "float16"]))
def test_pack_round_trip_any_pattern(entries, dtype):
    w = torch.tensor(entries, dtype=getattr(torch, dtype))
    assert bits(unpack(pack(w))) == bits(w)


def test_bitmask_is_smaller_than_dense_at_ninety_percent():
    w = pruned_mlp((784, 300), 0.9)[0].weight
    assert pack(w).nbytes < 0.2 * w.numel() * w.element_size()


# ----------------------------------------------------------------------------------------------
# Round trip of every form, in every format


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("form", ["module", "state_dict", "wrapped_state_dict", "wrapped_model",
                                  "dataparallel_prefix", "tutorial", "only_tensor_dict",
                                  "module_under_key"])
def test_export_then_densify_gives_the_checkpoint_bit_for_bit(form, fmt, tmp_path):
    obj = forms(pruned_tiny())[form]
    src, out = tmp_path / "pruned.pt", tmp_path / f"pruned.{fmt}"
    torch.save(obj, src)
    arch = None if form.startswith("module") else ARCH
    export_file(str(src), str(out), fmt, arch=arch)

    prefix = "module." if form == "dataparallel_prefix" else ""
    assert sorted(read_export(str(out)).sparse) == [f"{prefix}1.weight", f"{prefix}3.weight"]
    original = load_checkpoint(str(src), arch=arch)
    got = load_checkpoint(str(out), arch=arch)
    assert got.form == original.form
    assert same_state(got.model.state_dict(), original.model.state_dict())
    densified, _ = read_export(str(out)).densify(str(out))
    if form == "module":
        assert repr(densified) == repr(obj)
        assert [p.requires_grad for p in densified.parameters()] == \
            [p.requires_grad for p in obj.parameters()]
        return
    assert list(densified) == list(obj)  # the container's keys, in order
    sd_key = {"wrapped_state_dict": "state_dict", "wrapped_model": "model",
              "tutorial": "model_state_dict", "only_tensor_dict": "weights_ema",
              "module_under_key": "model"}.get(form)
    if form == "module_under_key":  # the module, refilled, under its key
        assert repr(densified["model"]) == repr(obj["model"]) and densified["epoch"] == 3
        assert same_state(densified["model"].state_dict(), obj["model"].state_dict())
        return
    assert same_state(densified[sd_key] if sd_key else densified, obj[sd_key] if sd_key else obj)
    for k in obj:
        if k != sd_key and sd_key:
            assert repr(densified[k]) == repr(obj[k])


class ConvNet(nn.Module):
    """Conv1d, Conv2d, BatchNorm, a non-persistent buffer and a frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3)
        self.c2 = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)


def test_conv_weights_are_stored_sparse_and_come_back(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 6, 5)).eval()
    conv2 = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        for m in (model[0], model[2], conv2[0]):
            m.weight[m.weight.abs() < 0.2] = 0.0
        conv2[1].running_mean.uniform_()
    conv2[1].weight.requires_grad_(False)
    for net, names in ((model, ["0.weight", "2.weight"]), (conv2, ["0.weight"])):
        src, out = tmp_path / "c.pt", tmp_path / "c.sparse.pt"
        torch.save(net, src)
        export_file(str(src), str(out), "torch")
        export = read_export(str(out))
        assert sorted(export.sparse) == names
        assert export.sparse[names[0]].shape == tuple(net[0].weight.shape)
        back, _ = export.densify(str(out))
        assert same_state(back.state_dict(), net.state_dict())
        assert [p.requires_grad for p in back.parameters()] == \
            [p.requires_grad for p in net.parameters()]


def test_non_persistent_buffers_survive_the_module_form(tmp_path):
    net = pruned_tiny()
    net.register_buffer("scale", torch.tensor([2.0, -0.0]), persistent=False)
    src, out = tmp_path / "m.pt", tmp_path / "m.sparse.pt"
    torch.save(net, src)
    export_file(str(src), str(out), "torch")
    back, _ = read_export(str(out)).densify(str(out))
    assert bits(back.scale) == bits(net.scale)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_is_smaller_than_the_dense_file(fmt, tmp_path):
    src, out = tmp_path / "mlp.pt", tmp_path / "mlp.out"
    torch.save(pruned_mlp(sparsity=0.9), src)
    summary = export_file(str(src), str(out), fmt)
    assert out.stat().st_size == summary.output_bytes < src.stat().st_size
    assert summary.sparse_weights == 3 and abs(summary.sparsity - 0.9) < 1e-3


def test_unpruned_checkpoint_is_refused_and_nothing_written(tmp_path):
    torch.manual_seed(0)
    src, out = tmp_path / "dense.pt", tmp_path / "dense.sparse.pt"
    torch.save(archs.tiny(), src)
    with pytest.raises(BadInput, match="not pruned") as e:
        export_file(str(src), str(out))
    assert str(src) in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_zeros_only_in_biases_do_not_count_as_pruned(tmp_path):
    torch.manual_seed(0)
    model = archs.tiny()
    with torch.no_grad():
        model[1].bias.zero_()
    src = tmp_path / "bias.pt"
    torch.save(model, src)
    with pytest.raises(BadInput, match="not pruned"):
        export_file(str(src), str(tmp_path / "o.pt"))


# ----------------------------------------------------------------------------------------------
# Plain torch, without nettrim (the README's recipe)


def readme_recipe() -> str:
    section = (ROOT / "README.md").read_text().split("\n## Export", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_default_export_loads_with_plain_torch_and_the_readme_recipe(tmp_path):
    model = pruned_tiny()
    torch.save(model, tmp_path / "pruned.pt")
    export_file(str(tmp_path / "pruned.pt"), str(tmp_path / "pruned.sparse.pt"))
    recipe = readme_recipe()
    assert "weights_only=True" in recipe and "nettrim" not in recipe.replace("nettrim export", "")
    script = "\n".join([
        "from torch import nn",
        "def MyModel():",
        "    return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))",
        recipe,
        "import sys",
        "assert not [m for m in sys.modules if m.startswith('nettrim')], 'nettrim imported'",
        "torch.save(model.state_dict(), 'densified.pt')",
    ])
    r = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    densified = torch.load(tmp_path / "densified.pt", weights_only=True)
    assert same_state(densified, model.state_dict())


def test_default_export_holds_only_weights_only_types(tmp_path):
    torch.save(forms(pruned_tiny())["wrapped_state_dict"], tmp_path / "w.pt")
    export_file(str(tmp_path / "w.pt"), str(tmp_path / "w.sparse.pt"), arch=ARCH)
    doc = torch.load(tmp_path / "w.sparse.pt", weights_only=True)
    assert doc["extra"] == {"epoch": 3, "best": 0.9}
    entry = doc["state_dict"]["1.weight"]
    assert set(entry) == {"values", "mask", "shape"} and entry["shape"] == [6, 4]


# ----------------------------------------------------------------------------------------------
# Sparse inference


@pytest.mark.parametrize("sparsity", [0.8, 0.9, 0.95])
def test_sparse_model_gives_the_dense_predictions(sparsity):
    dense = pruned_mlp(sparsity=sparsity)
    fast = sparse_model(dense, min_sparsity=0.0)
    assert sum(isinstance(m, SparseLinear) for m in fast.modules()) == 3
    assert all(type(m) is not SparseLinear for m in dense.modules())  # a copy
    x = torch.randn(300, 784, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = dense(x)
        for got in (fast(x), torch.cat([fast(x[i:i + 1]) for i in range(len(x))]),
                    fast(x.reshape(3, 100, 784)).reshape(300, 10)):
            assert torch.equal(got.argmax(1), ref.argmax(1))
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_runs_of_a_sequential_become_one_chain_that_computes_the_same():
    dense = pruned_mlp((60, 40, 30, 20, 5), 0.9)
    dense.insert(4, nn.Dropout(0.5))  # ends the first run: Linear, ReLU, Linear, ReLU | Dropout
    dense.eval()
    fast = sparse_model(dense)
    kinds = [type(m).__name__ for m in fast]
    assert kinds == ["SparseChain", "Dropout", "SparseChain"], kinds
    assert [c.relu for c in (fast[0], fast[2])] == [[True, True], [True, False]]
    x = torch.randn(20, 60, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = dense(x)
        one = torch.cat([fast(x[i:i + 1]) for i in range(len(x))])
        torch.testing.assert_close(one, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x), ref, rtol=1e-5, atol=1e-5)


class TwoLayers(nn.Module):
    """Not a Sequential: its Linear layers are swapped one by one, not chained."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(30, 20), nn.Linear(20, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_a_custom_module_gets_sparse_linear_layers():
    model = TwoLayers().eval()
    with torch.no_grad():
        for lin in (model.fc1, model.fc2):
            lin.weight[lin.weight.abs() < 0.15] = 0
    fast = sparse_model(model, min_sparsity=0.3)
    assert isinstance(fast.fc1, SparseLinear) and isinstance(fast.fc2, SparseLinear)
    assert not any(isinstance(m, SparseChain) for m in fast.modules())
    x = torch.randn(5, 30)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x[:1]), model(x[:1]))
        torch.testing.assert_close(fast(x), model(x))


def test_one_sample_and_batch_paths_agree():
    layer = SparseLinear.from_linear(pruned_mlp((50, 20), 0.9)[0])
    x = torch.randn(1, 50, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        fast = layer(x)
        layer._kernel = None  # torch's sparse product
        torch.testing.assert_close(fast, layer(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_linear_without_bias(dtype):
    lin = nn.Linear(30, 7, bias=False).to(dtype)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.1] = 0
    layer = SparseLinear.from_linear(lin)
    x = torch.randn(4, 30, dtype=dtype)
    with torch.inference_mode():
        for xb in (x, x[:1]):
            torch.testing.assert_close(layer(xb), lin(xb))


def test_layers_below_min_sparsity_stay_dense():
    model = pruned_mlp((40, 30, 5), 0.8)
    assert not any(isinstance(m, SparseLinear) for m in sparse_model(model).modules())
    model = pruned_mlp((40, 30, 5), 0.3)
    assert sum(isinstance(m, SparseLinear)
               for m in sparse_model(model, min_sparsity=0.25).modules()) == 2
    assert isinstance(sparse_model(pruned_mlp((40, 5), 0.9)[0]), SparseLinear)


def test_half_precision_layers_stay_dense():
    model = pruned_mlp((40, 30, 5), 0.9).to(torch.bfloat16)
    assert not any(isinstance(m, SparseLinear) for m in sparse_model(model).modules())


def test_sparse_model_of_a_densified_export(tmp_path):
    dense = pruned_mlp((784, 300, 10), 0.95)
    torch.save(dense, tmp_path / "p.pt")
    export_file(str(tmp_path / "p.pt"), str(tmp_path / "p.st"), "safetensors")
    model = load_checkpoint(str(tmp_path / "p.st")).model
    x = torch.randn(64, 784)
    with torch.inference_mode():
        assert torch.equal(sparse_model(model)(x).argmax(1), dense(x).argmax(1))


def test_sparse_weight_sizes():
    sw = pack(torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]))
    assert isinstance(sw, SparseWeight)
    assert (sw.numel, sw.nbytes, sw.sparsity) == (6, 2 * 4 + 1, pytest.approx(4 / 6))
    buf = io.BytesIO()
    torch.save({"values": sw.values, "mask": sw.mask}, buf)  # plain tensors
    mask = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["mask"]
    assert mask.tolist() == [0b100010]  # entries 1 and 5, least significant bit first
