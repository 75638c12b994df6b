"""`nettrim export` on the command line: what it writes and says, `nettrim eval` on an export,
and every bad input refused with one line, exit 2 and nothing written (unpruned or foreign
checkpoints, tampered exports in both formats)."""

from __future__ import annotations

import json

import nettrim_test_archs as archs
import numpy as np
import pytest
import torch
from conftest import assert_refused, invoke
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from test_export import ARCH, forms, pruned_tiny

from nettrim_cli.ckpt_forms import sniff_safetensors


@pytest.fixture
def files(tmp_path, assets):
    """A pruned tiny model in module and wrapped state_dict form, their exports in both
    formats, labelled data, and an empty output folder."""
    d = tmp_path / "in"
    d.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    f = {"dir": d, "out": out}
    model = pruned_tiny()
    f["module"], f["wrapped"] = d / "pruned.pt", d / "pruned_sd.pt"
    torch.save(model, f["module"])
    torch.save(forms(model)["wrapped_state_dict"], f["wrapped"])
    for form, arch in (("module", []), ("wrapped", ["--arch", ARCH])):
        for fmt in ("torch", "safetensors"):
            dest = d / f"{form}.{fmt}"
            r = invoke("export", f[form], "-o", dest, "--format", fmt, *arch)
            assert r.exit_code == 0, r.stderr
            f[f"{form}.{fmt}"] = dest
    f["data"] = d / "data.npz"
    np.savez(f["data"], inputs=np.load(assets.calib), labels=np.load(assets.labels))
    return f


def test_export_says_what_it_stored(files):
    out = files["out"] / "x.pt"
    r = invoke("export", files["module"], "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    line, = r.stderr.splitlines()
    assert line.startswith(f"nettrim: wrote {out} (torch): 2 weights stored sparse")
    assert f"of {files['module']}" in line and out.exists()


@pytest.mark.parametrize("export", ["module.torch", "module.safetensors", "wrapped.torch",
                                    "wrapped.safetensors"])
def test_eval_reads_an_export_directly(export, files):
    arch = ["--arch", ARCH] if export.startswith("wrapped") else []
    source = files["module"] if export.startswith("module") else files["wrapped"]
    ref = invoke("eval", source, "--data", files["data"], "--format", "json", *arch)
    got = invoke("eval", files[export], "--data", files["data"], "--format", "json", *arch)
    assert ref.exit_code == 0 and got.exit_code == 0, got.stderr
    assert json.loads(got.stdout)["results"] == json.loads(ref.stdout)["results"]


def test_existing_output_needs_force(files):
    out = files["out"] / "x.pt"
    out.write_bytes(b"keep")
    assert_refused(invoke("export", files["module"], "-o", out), files["out"], out, "--force",
                   keep={"x.pt": b"keep"})
    assert invoke("export", files["module"], "-o", out, "--force").exit_code == 0
    assert out.read_bytes() != b"keep"


def test_unknown_format_is_refused(files):
    assert_refused(invoke("export", files["module"], "-o", files["out"] / "x", "--format",
                          "onnx"), files["out"], "onnx", "safetensors")


def test_exporting_over_the_input_is_refused(files):
    assert_refused(invoke("export", files["module"], "-o", files["module"], "--force"),
                   files["out"], files["module"])


# ----------------------------------------------------------------------------------------------
# Checkpoints that are not pruned or not checkpoints


def _unpruned(d):
    torch.manual_seed(0)
    p = d / "dense.pt"
    torch.save(archs.tiny(), p)
    return p, "not pruned"


def _not_a_checkpoint(d):
    p = d / "notes.pt"
    p.write_text("hello")
    return p, "not a PyTorch checkpoint"


def _foreign_dict(d):
    p = d / "foreign.pt"
    torch.save({"weights": [1, 2, 3]}, p)
    return p, "no state_dict in the checkpoint: found 'weights' (list)"


def _foreign_safetensors(d):
    """A plain safetensors checkpoint is read as a state_dict (issue 14): one of another model
    does not fit --arch."""
    p = d / "foreign.safetensors"
    p.write_bytes(st_save({"embed.weight": torch.ones(10, 4)}))
    return p, "does not fit --arch"


@pytest.mark.parametrize("make", [_unpruned, _not_a_checkpoint, _foreign_dict,
                                  _foreign_safetensors])
def test_bad_checkpoints_are_refused(make, files):
    path, needle = make(files["dir"])
    assert_refused(invoke("export", path, "-o", files["out"] / "x.pt", "--arch", ARCH),
                   files["out"], path, needle)


# ----------------------------------------------------------------------------------------------
# Tampered exports, torch format: each edit of the loaded dict, then saved again


def _entry(doc):
    return doc["state_dict"]["3.weight"]  # 3 x 6 = 18 entries: 3 mask bytes, 6 spare bits


def _set_meta(key, value):
    return lambda doc: doc["nettrim_export"].__setitem__(key, value)


TORCH_EDITS = {
    "one value too many": lambda doc: _entry(doc).__setitem__(
        "values", torch.cat([_entry(doc)["values"], torch.ones(1)])),
    "one value too few": lambda doc: _entry(doc).__setitem__("values", _entry(doc)["values"][1:]),
    "mask one byte short": lambda doc: _entry(doc).__setitem__("mask", _entry(doc)["mask"][:-1]),
    "mask bit past the end": lambda doc: _entry(doc)["mask"].__setitem__(
        -1, _entry(doc)["mask"][-1] | 0x80),
    "mask bit flipped": lambda doc: _entry(doc)["mask"].__setitem__(
        0, _entry(doc)["mask"][0] ^ 0x01),
    "mask not uint8": lambda doc: _entry(doc).__setitem__("mask", _entry(doc)["mask"].long()),
    "values of another dtype": lambda doc: _entry(doc).__setitem__(
        "values", _entry(doc)["values"].double()),
    "dense entry of another dtype": lambda doc: doc["state_dict"].__setitem__(
        "1.bias", doc["state_dict"]["1.bias"].long()),
    "values 2-D": lambda doc: _entry(doc).__setitem__("values", _entry(doc)["values"][None]),
    "shape too large": lambda doc: _entry(doc).__setitem__("shape", [300000, 60000]),
    "shape transposed": lambda doc: _entry(doc).__setitem__("shape", [6, 3]),
    "shape negative": lambda doc: _entry(doc).__setitem__("shape", [-3, -6]),
    "shape not ints": lambda doc: _entry(doc).__setitem__("shape", ["3", 6]),
    "shape not a list": lambda doc: _entry(doc).__setitem__("shape", 18),
    "part missing": lambda doc: _entry(doc).pop("shape"),
    "dense entry not a tensor": lambda doc: doc["state_dict"].__setitem__("1.bias", "zeros"),
    "dense entry sparse": lambda doc: doc["state_dict"].__setitem__(
        "1.bias", doc["state_dict"]["1.bias"].to_sparse()),
    "entry dropped": lambda doc: doc["state_dict"].pop("3.bias"),
    "state_dict not a dict": lambda doc: doc.__setitem__("state_dict", [1, 2]),
    "unknown top-level entry": lambda doc: doc.__setitem__("junk", 1),
    "description not a dict": lambda doc: doc.__setitem__("nettrim_export", "v1"),
    "newer version": _set_meta("version", 2),
    "unknown encoding": _set_meta("encoding", "csr"),
    "unknown form": _set_meta("form", "graph"),
    "module with a state_dict key": _set_meta("sd_key", "state_dict"),
    "skeleton garbage": lambda doc: doc.__setitem__("module", torch.arange(50, dtype=torch.uint8)),
    "skeleton not bytes": lambda doc: doc.__setitem__("module", torch.zeros(3)),
    "skeleton of another model": lambda doc: doc.__setitem__(
        "module", torch.frombuffer(bytearray(_saved(archs.wider().to("meta"))), dtype=torch.uint8)),
}
WRAPPED_EDITS = {
    "other entry missing": lambda doc: doc["extra"].pop("epoch"),
    "container key unknown": _set_meta("container_keys", ["epoch", "state_dict", "best", "x"]),
    "state_dict key not among the container keys": _set_meta("sd_key", "model"),
}


def _saved(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _tampered_torch(files, source: str, edit) -> object:
    doc = torch.load(files[source], weights_only=True)
    edit(doc)
    path = files["dir"] / "tampered.pt"
    path.write_bytes(_saved(doc))
    return path


@pytest.mark.parametrize("edit", list(TORCH_EDITS))
def test_tampered_torch_export_is_refused(edit, files):
    path = _tampered_torch(files, "module.torch", TORCH_EDITS[edit])
    out = files["out"] / "eval.json"
    assert_refused(invoke("eval", path, "--data", files["data"], "-o", out), files["out"], path)
    assert_refused(invoke("export", path, "-o", files["out"] / "x.pt"), files["out"], path)


@pytest.mark.parametrize("edit", list(WRAPPED_EDITS))
def test_tampered_wrapped_export_is_refused(edit, files):
    path = _tampered_torch(files, "wrapped.torch", WRAPPED_EDITS[edit])
    assert_refused(invoke("eval", path, "--data", files["data"], "--arch", ARCH, "-o",
                          files["out"] / "e.json"), files["out"], path, "damaged export")


def test_the_untampered_copy_is_accepted(files):
    """The tampering tests' control: the same load and save without an edit is read."""
    path = _tampered_torch(files, "module.torch", lambda doc: None)
    assert invoke("eval", path, "--data", files["data"]).exit_code == 0


# ----------------------------------------------------------------------------------------------
# Tampered exports, safetensors format


def _st_parts(data: bytes):
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    return st_load(data), meta


def _st_desc(edit):
    def apply(tensors, meta):
        desc = json.loads(meta["nettrim_export"])
        edit(desc)
        meta["nettrim_export"] = json.dumps(desc)
    return apply


ST_EDITS = {
    "mask dropped": lambda t, m: t.pop("3.weight::mask"),
    "extra tensor": lambda t, m: t.__setitem__("junk", torch.zeros(2)),
    "values too many": lambda t, m: t.__setitem__(
        "3.weight::values", torch.cat([t["3.weight::values"], torch.ones(1)])),
    "mask as float": lambda t, m: t.__setitem__("3.weight::mask", t["3.weight::mask"].float()),
    "description not JSON": lambda t, m: m.__setitem__("nettrim_export", "{"),
    "description missing": lambda t, m: m.pop("nettrim_export"),
    "sparse shape wrong": _st_desc(lambda d: d["sparse"].__setitem__("3.weight", [3, 7])),
    "sparse shape not a list": _st_desc(lambda d: d["sparse"].__setitem__("3.weight", "3x6")),
    "order misses a tensor": _st_desc(lambda d: d["order"].remove("1.bias")),
    "order not a list": _st_desc(lambda d: d.__setitem__("order", "1.weight")),
    "newer version": _st_desc(lambda d: d.__setitem__("version", 2)),
    "skeleton dropped": lambda t, m: t.pop("::module"),
}


@pytest.mark.parametrize("edit", list(ST_EDITS))
def test_tampered_safetensors_export_is_refused(edit, files):
    tensors, meta = _st_parts(files["module.safetensors"].read_bytes())
    ST_EDITS[edit](tensors, meta)
    path = files["dir"] / "tampered.safetensors"
    path.write_bytes(st_save(tensors, metadata=meta))
    # without its description the file is a plain safetensors state_dict, refused as one
    assert sniff_safetensors(path.read_bytes())
    assert_refused(invoke("eval", path, "--data", files["data"], "-o", files["out"] / "e.json"),
                   files["out"], path)


@pytest.mark.parametrize("cut", [4, 20, -10])
def test_truncated_safetensors_export_is_refused(cut, files):
    data = files["module.safetensors"].read_bytes()
    path = files["dir"] / "cut.safetensors"
    path.write_bytes(data[:cut])
    assert_refused(invoke("export", path, "-o", files["out"] / "x.pt"), files["out"], path)


def test_untampered_safetensors_copy_is_accepted(files):
    tensors, meta = _st_parts(files["module.safetensors"].read_bytes())
    path = files["dir"] / "copy.safetensors"
    path.write_bytes(st_save(tensors, metadata=meta))
    assert invoke("eval", path, "--data", files["data"]).exit_code == 0
