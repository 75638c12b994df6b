"""The checkpoint forms users bring (issue 14), end to end: the PyTorch tutorials'
``{"epoch", "model_state_dict", "optimizer_state_dict"}``, a state_dict under another common key
or as the only dict of tensors, ``.safetensors``, a ``torch.compile`` key prefix; each goes
through dump -> prune -> eval (and finetune / export for the tutorial and safetensors forms),
prunes to the same weights as the plain module, and is written back in its own form. Also
``--arch`` found from the current directory, the optimizer state a pruned checkpoint keeps, and
``nettrim eval --sparse`` (issue 17). The bad forms are refused in test_bad_input.py and fuzzed
in test_fuzz.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nettrim_test_archs as archs
import numpy as np
import pytest
import torch
from conftest import TESTS_DIR, invoke
from safetensors import safe_open
from safetensors.torch import save as st_save
from test_export import pruned_mlp, same_state

from nettrim_cli.checkpoint import load_checkpoint, module_damage, read_state_dict
from nettrim_cli.ckpt_forms import clear_optimizer_state, find_state_dict, fit_prefix
from nettrim_cli.errors import BadInput
from nettrim_cli.export import sparse_model
from nettrim_cli.export.formats import SafetensorsFormat

ARCH = "nettrim_test_archs:tiny"


def _adam_state(model: torch.nn.Module) -> dict:
    """An Adam state_dict after one step (per-weight moments present)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model(torch.ones(2, archs.N_IN)).sum().backward()
    opt.step()
    model.zero_grad()
    return opt.state_dict()


def _forms(model: torch.nn.Module) -> dict:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return {
        "tutorial": {"epoch": 3, "model_state_dict": sd,
                     "optimizer_state_dict": _adam_state(archs.tiny()), "loss": 0.25},
        "net_key": {"net": sd, "step": 1200},
        "only_tensor_dict": {"my_weights": sd, "config": {"width": 6}},
        "compile_prefix": {f"_orig_mod.{k}": v for k, v in sd.items()},
        "safetensors": sd,
    }


def _write(form: str, obj, path: Path) -> Path:
    if form == "safetensors":
        path = path.with_suffix(".safetensors")
        path.write_bytes(st_save({k: v.contiguous() for k, v in obj.items()},
                                 metadata={"made_by": "a training script"}))
    else:
        torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
    """The plain module's prune (the weights every form must prune to) and labelled data."""
    d = tmp_path_factory.mktemp("forms_ref")
    out = d / "ref.pt"
    r = invoke("prune", assets.model, "--acts", assets.acts, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    data = d / "data.npz"
    np.savez(data, inputs=np.load(assets.calib), labels=np.load(assets.labels))
    return torch.load(out, weights_only=False).state_dict(), data  # our own file


def _ok(*args) -> object:
    r = invoke(*args)
    assert r.exit_code == 0, r.stderr
    return r


@pytest.mark.parametrize("form", ["tutorial", "net_key", "only_tensor_dict", "compile_prefix",
                                  "safetensors"])
def test_each_form_dump_prune_eval(form, assets, reference, tmp_path):
    ref_sd, data = reference
    model = torch.load(assets.model, weights_only=False)
    obj = _forms(model)[form]
    src = _write(form, obj, tmp_path / "in.pt")
    acts, out = tmp_path / "acts.h5", tmp_path / f"pruned{src.suffix}"
    _ok("dump", src, "--arch", ARCH, "--inputs", assets.calib, "-o", acts)
    _ok("prune", src, "--arch", ARCH, "--acts", acts, "-o", out, "-q")
    doc = json.loads(_ok("eval", out, "--arch", ARCH, "--data", data, "--format", "json").stdout)
    ref_doc = json.loads(_ok("eval", assets.model, "--data", data, "--format", "json").stdout)
    assert doc["samples"] == ref_doc["samples"] and doc["results"][0]["accuracy"] >= 0

    ckpt = load_checkpoint(str(out), arch=ARCH)
    assert same_state(ckpt.model.state_dict(), ref_sd)  # the same prune as the plain module
    if form == "safetensors":
        assert ckpt.file_format == "safetensors"
        with safe_open(str(out), "pt") as f:
            assert f.metadata() == {"made_by": "a training script"}
            assert sorted(f.keys()) == sorted(obj)
        return
    written = torch.load(out, weights_only=True)
    assert list(written) == list(obj)  # the container's keys, in order
    key = find_state_dict(obj, "x")[1]
    inner = written[key] if key else written
    assert list(inner) == list(obj[key] if key else obj)  # the keys, prefix included
    for k, v in obj.items():
        if k != key and k != "optimizer_state_dict" and key is not None:
            assert written[k] == v  # epoch, step, config: as they were


def test_tutorial_form_finetune_and_export(assets, reference, tmp_path):
    """finetune and export take the tutorial's dict and keep its form; eval reads the export."""
    _, data = reference
    model = torch.load(assets.model, weights_only=False)
    src = _write("tutorial", _forms(model)["tutorial"], tmp_path / "in.pt")
    acts, pruned = tmp_path / "acts.h5", tmp_path / "pruned.pt"
    _ok("dump", src, "--arch", ARCH, "--inputs", assets.calib, "-o", acts)
    _ok("prune", src, "--arch", ARCH, "--acts", acts, "-o", pruned, "-q")
    tuned = tmp_path / "tuned.pt"
    _ok("finetune", pruned, "--arch", ARCH, "--data", data, "--epochs", "1", "-o", tuned, "-q")
    t = torch.load(tuned, weights_only=True)
    assert list(t) == ["epoch", "model_state_dict", "optimizer_state_dict", "loss"]
    before = torch.load(pruned, weights_only=True)["model_state_dict"]
    for name in ("1.weight", "3.weight"):  # finetune keeps the zeros
        assert bool((t["model_state_dict"][name][before[name] == 0] == 0).all())
    exported = tmp_path / "pruned.sparse.pt"
    _ok("export", pruned, "--arch", ARCH, "-o", exported)
    a = json.loads(_ok("eval", pruned, "--arch", ARCH, "--data", data, "--format",
                       "json").stdout)
    b = json.loads(_ok("eval", exported, "--arch", ARCH, "--data", data, "--format",
                       "json").stdout)
    assert a["results"] == b["results"]
    back = load_checkpoint(str(exported), arch=ARCH)
    assert back.sd_key == "model_state_dict" and back.container["epoch"] == 3


def test_safetensors_finetune_and_export_keep_the_form(assets, reference, tmp_path):
    _, data = reference
    sd = torch.load(assets.model, weights_only=False).state_dict()
    src = _write("safetensors", sd, tmp_path / "in.pt")
    acts, pruned = tmp_path / "acts.h5", tmp_path / "pruned.safetensors"
    _ok("dump", src, "--arch", ARCH, "--inputs", assets.calib, "-o", acts)
    _ok("prune", src, "--arch", ARCH, "--acts", acts, "-o", pruned, "-q")
    tuned = tmp_path / "tuned.safetensors"
    _ok("finetune", pruned, "--arch", ARCH, "--data", data, "--epochs", "1", "-o", tuned, "-q")
    with safe_open(str(tuned), "pt") as f:
        assert f.metadata() == {"made_by": "a training script"}
    default = tmp_path / "export.out"  # no --format: a safetensors input exports as one
    r = _ok("export", pruned, "--arch", ARCH, "-o", default)
    assert "(safetensors)" in r.stderr and SafetensorsFormat.sniff(default.read_bytes())
    for fmt in ("torch", "safetensors"):
        out = tmp_path / f"export.{fmt}"
        _ok("export", pruned, "--arch", ARCH, "-o", out, "--format", fmt)
        got = load_checkpoint(str(out), arch=ARCH).model.state_dict()
        assert same_state(got, load_checkpoint(str(pruned), arch=ARCH).model.state_dict())


def test_optimizer_state_is_cleared_and_still_loads(assets, tmp_path):
    """The decision for a pruned tutorial checkpoint: the optimizer's per-weight state
    (moments for the old weights) is emptied, its param_groups kept, one note says so; the
    entry still loads into a fresh optimizer, which then steps."""
    model = torch.load(assets.model, weights_only=False)
    obj = _forms(model)["tutorial"]
    src = _write("tutorial", obj, tmp_path / "in.pt")
    acts, out = tmp_path / "acts.h5", tmp_path / "pruned.pt"
    _ok("dump", src, "--arch", ARCH, "--inputs", assets.calib, "-o", acts)
    r = _ok("prune", src, "--arch", ARCH, "--acts", acts, "-o", out, "-q")
    notes = [ln for ln in r.stderr.splitlines() if "optimizer_state_dict" in ln]
    assert len(notes) == 1 and "cleared" in notes[0] and notes[0].startswith("nettrim: note:")
    written = torch.load(out, weights_only=True)
    opt_sd = written["optimizer_state_dict"]
    assert obj["optimizer_state_dict"]["state"] and opt_sd["state"] == {}
    assert opt_sd["param_groups"] == obj["optimizer_state_dict"]["param_groups"]
    net = archs.tiny()
    net.load_state_dict(written["model_state_dict"])
    opt = torch.optim.Adam(net.parameters())
    opt.load_state_dict(opt_sd)
    assert opt.param_groups[0]["lr"] == 3e-3
    net(torch.ones(1, archs.N_IN)).sum().backward()
    opt.step()
    assert len(opt.state) == 4  # fresh moments, one per parameter


def test_clear_optimizer_state_lists_and_untouched_entries():
    opt = {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"params": [0]}]}
    sd = {"w": torch.ones(2)}
    out, keys = clear_optimizer_state({"sd": sd, "optimizer_states": [opt, opt], "epoch": 2,
                                       "sched": {"last_epoch": 4}}, "sd")
    assert keys == ["optimizer_states"] and out["optimizer_states"][1]["state"] == {}
    assert out["epoch"] == 2 and out["sched"] == {"last_epoch": 4} and out["sd"] is sd
    assert opt["state"]  # the input is not modified
    assert clear_optimizer_state({"sd": sd, "o": {"state": {}, "param_groups": []}}, "sd")[1] == []


def test_find_state_dict_order_and_prefix():
    a, b = {"x": torch.zeros(1)}, {"y": torch.zeros(1)}
    assert find_state_dict({"model": a, "model_state_dict": b}, "p")[1] == "model_state_dict"
    assert find_state_dict({"ema": a, "epoch": 1}, "p")[1] == "ema"
    with pytest.raises(BadInput, match="2 state_dicts"):
        find_state_dict({"g": a, "d": b}, "p")
    assert fit_prefix(["module.x"], {"x"}) == "module."
    assert fit_prefix(["_orig_mod.a.x"], {"a.x"}) == "_orig_mod."
    assert fit_prefix(["x"], {"x"}) == "" and fit_prefix(["p.x", "q.y"], {"x", "y"}) is None


def test_damaged_module_is_named_and_a_sound_one_passes():
    m = archs.tiny()
    assert module_damage(m) is None
    del m[3].__dict__["_forward_hooks"]
    assert "module '3'" in module_damage(m) and "_forward_hooks" in module_damage(m)


def test_module_under_a_key_dump_prune_eval_export(assets, reference, tmp_path):
    """``torch.save({"model": model, "epoch": 3, "optimizer": ...})``: no --arch needed; the
    output holds the pruned module under the same key, the other entries as they were (the
    optimizer's per-weight state cleared)."""
    ref_sd, data = reference
    model = torch.load(assets.model, weights_only=False)
    src = tmp_path / "in.pt"
    torch.save({"epoch": 3, "model": model, "optimizer": _adam_state(archs.tiny())}, src)
    acts, out = tmp_path / "acts.h5", tmp_path / "pruned.pt"
    _ok("dump", src, "--inputs", assets.calib, "-o", acts)
    r = _ok("prune", src, "--acts", acts, "-o", out, "-q")
    assert "'optimizer' written to the output" in r.stderr
    _ok("eval", out, "--data", data)
    written = torch.load(out, weights_only=False)  # our own file
    assert list(written) == ["epoch", "model", "optimizer"] and written["epoch"] == 3
    assert isinstance(written["model"], torch.nn.Sequential)
    assert same_state(written["model"].state_dict(), ref_sd)
    exported = tmp_path / "pruned.sparse.pt"
    _ok("export", out, "-o", exported)
    back = load_checkpoint(str(exported))
    assert back.form == "module" and back.sd_key == "model" and back.container["epoch"] == 3
    assert same_state(back.model.state_dict(), ref_sd)


# ----------------------------------------------------------------------------------------------
# --arch from the current directory, as `python -m` finds modules


MODELS_PY = "from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Flatten(), " \
    f"nn.Linear({archs.N_IN}, {archs.N_HID}), nn.ReLU(), nn.Linear({archs.N_HID}, " \
    f"{archs.N_OUT}))\n"


def _console_script(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """Run nettrim as the installed console script runs it: sys.path[0] is not the cwd."""
    code = "import sys; sys.path.pop(0); from nettrim_cli.cli import main; sys.argv[0] = " \
        "'nettrim'; main()"
    pypath = os.pathsep.join(p for p in [str(TESTS_DIR.parent)] if p)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": pypath, "NETTRIM_DEBUG": ""})


def test_arch_is_found_in_the_current_directory(assets, tmp_path):
    """Without the module in the current directory: one line naming the module, the factory
    and the directory, nothing written; with it there (no PYTHONPATH for it): the dump runs."""
    sd = tmp_path / "sd.pt"
    torch.save(torch.load(assets.model, weights_only=False).state_dict(), sd)
    args = ["dump", sd, "--arch", "usermodels:make", "--inputs", assets.calib, "-o",
            tmp_path / "acts.h5"]
    p = _console_script(args, tmp_path)
    assert p.returncode == 2
    [line] = p.stderr.splitlines()
    assert "usermodels:make" in line and "'usermodels'" in line and str(tmp_path) in line
    assert not (tmp_path / "acts.h5").exists()
    (tmp_path / "usermodels.py").write_text(MODELS_PY)
    p = _console_script(args, tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "acts.h5").exists()


# ----------------------------------------------------------------------------------------------
# nettrim eval --sparse


@pytest.fixture(scope="module")
def sparse_files(tmp_path_factory):
    """A 90%-sparse 20-64-32-5 MLP as a module checkpoint and its export, with data."""
    d = tmp_path_factory.mktemp("sparse_eval")
    model = pruned_mlp((20, 64, 32, 5), 0.9, seed=3)
    torch.save(model, d / "m.pt")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 20)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.as_tensor(x)).argmax(1).numpy()
    y[::7] = (y[::7] + 1) % 5  # some wrong, so accuracy and loss say something
    np.savez(d / "data.npz", inputs=x, labels=y)
    _ok("export", d / "m.pt", "-o", d / "m.sparse.pt")
    return d, model, x


@pytest.mark.parametrize("name", ["m.pt", "m.sparse.pt"])
def test_eval_sparse_gives_the_dense_figures(name, sparse_files):
    d, _, _ = sparse_files
    args = ("eval", d / name, "--data", d / "data.npz", "--format", "json", "--noise", "0,0.3")
    dense = json.loads(_ok(*args).stdout)
    r = _ok(*args, "--sparse")
    sparse = json.loads(r.stdout)
    assert sparse["inference"]["sparse_layers"] == ["0", "2", "4"]
    assert "inference" not in dense
    for a, b in zip(dense["results"], sparse["results"], strict=True):
        assert a["accuracy"] == b["accuracy"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)  # float additions reordered
    [note] = r.stderr.splitlines()
    assert note.startswith("nettrim: note: --sparse: 3 of 3 Linear layers")


def test_eval_sparse_says_when_no_layer_qualifies(assets, reference):
    _, data = reference
    r = _ok("eval", assets.model, "--data", data, "--sparse")
    assert "no Linear layer" in r.stderr and "every layer runs dense" in r.stderr


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_sparse_model_predicts_what_the_dense_one_does(batch, sparse_files):
    _, model, x = sparse_files
    fast = sparse_model(model)
    xt = torch.as_tensor(x)
    with torch.inference_mode():
        dense = model(xt)
        got = torch.cat([fast(xt[i:i + batch]) for i in range(0, len(xt), batch)])
    assert torch.equal(dense.argmax(1), got.argmax(1))
    assert torch.allclose(dense, got, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Reading the tensors without --arch (nettrim report --checkpoint)


@pytest.mark.parametrize("form", ["tutorial", "net_key", "only_tensor_dict", "compile_prefix",
                                  "safetensors"])
def test_read_state_dict_without_arch(form, assets, tmp_path):
    model = torch.load(assets.model, weights_only=False)
    src = _write(form, _forms(model)[form], tmp_path / "in.pt")
    assert same_state(dict(sorted(read_state_dict(str(src)).items())),
                      dict(sorted(model.state_dict().items())))


def test_report_plots_the_pattern_of_a_safetensors_prune(assets, tmp_path):
    pytest.importorskip("matplotlib")
    sd = torch.load(assets.model, weights_only=False).state_dict()
    src = _write("safetensors", sd, tmp_path / "in.pt")
    out, rep, figs = tmp_path / "p.safetensors", tmp_path / "r.json", tmp_path / "figs"
    _ok("prune", src, "--arch", ARCH, "--acts", assets.acts, "-o", out, "--report", rep, "-q")
    _ok("report", rep, "--plot", figs, "--checkpoint", out)
    assert sorted(p.name for p in figs.iterdir()) == ["discrepancy.png", "pattern_1.png",
                                                       "pattern_3.png", "sparsity.png"]
