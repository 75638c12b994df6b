"""`nettrim eval` (accuracy and mean cross-entropy, with seeded input noise) and `nettrim
finetune` (training with the pruned weights frozen at zero), on the tiny fixture model, and
the bad data each refuses: exit 2, one line naming the file, no output."""

from __future__ import annotations

import csv
import io
import json

import h5py
import nettrim_test_archs as archs
import numpy as np
import pytest
import torch
from conftest import assert_refused, invoke

from nettrim_cli.checkpoint import load_checkpoint
from nettrim_cli.finetune import finetune, weight_masks
from nettrim_cli.recipe import Recipe

N = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A labelled .npz (x/y keys) and a model, pruned by hand, as a module and a
    state_dict."""
    d = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, archs.N_IN)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.7)).astype(np.int64)
    npz = d / "data.npz"
    np.savez(npz, x=x, y=y)
    torch.manual_seed(0)
    m = archs.tiny()
    with torch.no_grad():
        m[1].weight[m[1].weight.abs() < 0.25] = 0.0  # about half of the first layer
        m[3].weight[0, :3] = 0.0
    model = d / "pruned.pt"
    torch.save(m, model)
    sd = d / "pruned_sd.pt"
    torch.save({"state_dict": m.state_dict(), "epoch": 7}, sd)
    return d, x, y, npz, model, sd, m


def _hand(m, x, y):
    with torch.no_grad():
        z = m(torch.as_tensor(x)).double().numpy()
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float((z.argmax(1) == y).mean()), float(-logp[np.arange(len(y)), y].mean())


def _eval(*args):
    r = invoke("eval", *args, "--format", "json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_eval_matches_hand_computation(data):
    _, x, y, npz, model, _, m = data
    doc = _eval(model, "--data", npz)
    acc, loss = _hand(m, x, y)
    assert doc["format"] == "nettrim-eval" and doc["version"] == 1 and doc["samples"] == N
    assert doc["model"]["path"] == str(model) and len(doc["model"]["sha256"]) == 64
    assert doc["data"]["path"] == str(npz) and len(doc["data"]["sha256"]) == 64
    [res] = doc["results"]
    assert res["noise"] == 0.0
    assert res["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert res["loss"] == pytest.approx(loss, rel=1e-6)


def test_eval_batch_size_and_state_dict_form(data):
    _, x, y, npz, model, sd, _ = data
    a = _eval(model, "--data", npz)["results"]
    b = _eval(sd, "--arch", "nettrim_test_archs:tiny", "--data", npz, "--batch-size", "5")
    assert b["results"][0]["accuracy"] == a[0]["accuracy"]
    assert b["results"][0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-6)  # float32 batches


def test_eval_on_a_dump_with_labels(assets):
    doc = _eval(assets.model, "--data", assets.acts)
    assert doc["samples"] == 32


def test_noise_zero_and_seeded(data):
    _, _, _, npz, model, _, _ = data
    clean = _eval(model, "--data", npz)["results"][0]
    levels = "0,0.5,2"
    r1 = _eval(model, "--data", npz, "--noise", levels, "--seed", "3")["results"]
    r2 = _eval(model, "--data", npz, "--noise", levels, "--seed", "3")["results"]
    r3 = _eval(model, "--data", npz, "--noise", levels, "--seed", "4")["results"]
    assert [r["noise"] for r in r1] == [0.0, 0.5, 2.0]
    assert r1[0] == clean
    assert r1 == r2
    assert r1[2]["loss"] != r3[2]["loss"]
    assert r1[2]["loss"] != clean["loss"]


def test_eval_csv_table_and_output_file(data, tmp_path):
    _, _, _, npz, model, _, _ = data
    r = invoke("eval", model, "--data", npz, "--noise", "0,1", "--format", "csv")
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [list(row) for row in rows] == [["noise", "accuracy", "loss"]] * 2
    r = invoke("eval", model, "--data", npz)
    assert r.exit_code == 0 and "accuracy" in r.stdout
    out = tmp_path / "eval.json"
    r = invoke("eval", model, "--data", npz, "--format", "json", "-o", out)
    assert r.exit_code == 0 and r.stdout == ""
    assert json.loads(out.read_text())["format"] == "nettrim-eval"
    assert invoke("eval", model, "--data", npz, "-o", out).exit_code == 2  # exists
    assert invoke("eval", model, "--data", npz, "-o", out, "--force").exit_code == 0


# ----------------------------------------------------------------------------------------------
# finetune


@pytest.mark.parametrize("optimizer,decay", [("adam", "0"), ("sgd", "0.01"), ("adam", "0.1")])
def test_finetune_keeps_zeros(optimizer, decay, data, tmp_path):
    _, _, _, npz, model, _, m0 = data
    out, summ = tmp_path / "ft.pt", tmp_path / "ft.json"
    r = invoke("finetune", model, "--data", npz, "--epochs", "3", "--batch-size", "16",
               "--lr", "0.05", "--optimizer", optimizer, "--weight-decay", decay, "-o", out,
               "--summary", summ, "-q")
    assert r.exit_code == 0, r.stderr
    m = load_checkpoint(str(out)).model  # a module again, loadable with the allowlist
    for i in (1, 3):
        w0, w = m0[i].weight.detach(), m[i].weight.detach()
        assert torch.equal(w[w0 == 0], torch.zeros_like(w[w0 == 0]))
        assert bool((w[w0 != 0] != w0[w0 != 0]).all())  # every kept weight was trained
        assert torch.count_nonzero(w) == torch.count_nonzero(w0)
    s = json.loads(summ.read_text())
    assert s["format"] == "nettrim-finetune" and s["epochs"] == 3
    assert len(s["loss_per_epoch"]) == 3
    assert s["nonzeros_before"] == s["nonzeros_after"] == sum(
        int(torch.count_nonzero(m0[i].weight)) for i in (1, 3))
    assert s["zeros_kept"] is True
    assert [la["name"] for la in s["masked_layers"]] == ["1", "3"]
    assert s["outputs"]["checkpoint"]["path"] == str(out)
    assert s["inputs"]["model"]["sha256"] and s["inputs"]["data"]["sha256"]
    assert 0.0 <= s["train_accuracy"] <= 1.0 and s["seconds"] >= 0


def test_finetune_state_dict_form_and_determinism(data, tmp_path):
    _, _, _, npz, _, sd, m0 = data
    outs = []
    for k in range(2):
        out = tmp_path / f"ft{k}.pt"
        r = invoke("finetune", sd, "--arch", "nettrim_test_archs:tiny", "--data", npz,
                   "--epochs", "2", "-o", out, "--summary", "-", "-q", "--seed", "1")
        assert r.exit_code == 0, r.stderr
        outs.append((out, json.loads(r.stdout)))
    c = torch.load(outs[0][0], weights_only=True)
    assert c["epoch"] == 7 and set(c["state_dict"]) == set(m0.state_dict())
    c1 = torch.load(outs[1][0], weights_only=True)
    for k, v in c["state_dict"].items():
        assert torch.equal(v, c1["state_dict"][k])
    assert outs[0][1]["loss_per_epoch"] == outs[1][1]["loss_per_epoch"]
    assert torch.equal(c["state_dict"]["1.weight"] == 0, m0[1].weight == 0)


def test_finetune_function_masks_optimizer_state(data):
    _, x, y, _, _, _, m0 = data
    m = torch.load(data[4], weights_only=False)
    masks = weight_masks(m)
    assert set(masks) == {"1", "3"}
    figs = finetune(m, x, y, Recipe(epochs=2, lr=0.1, batch_size=8, optimizer="sgd",
                                    weight_decay=0.5))
    assert figs["zeros_kept"]
    assert torch.equal(m[1].weight == 0, m0[1].weight == 0)


# ----------------------------------------------------------------------------------------------
# refused


def _bad_files(d, x, y):
    files = {}
    files["no_labels"] = d / "nolabels.npz"
    np.savez(files["no_labels"], inputs=x)
    files["out_of_range"] = d / "range.npz"
    np.savez(files["out_of_range"], inputs=x, labels=np.where(y == 0, archs.N_OUT, y))
    files["negative"] = d / "neg.npz"
    np.savez(files["negative"], x=x, y=y - 1)
    files["shape"] = d / "shape.npz"
    np.savez(files["shape"], x=np.ones((N, archs.N_IN + 1), np.float32), y=y)
    xn = x.copy()
    xn[3, 1] = np.nan
    files["nan"] = d / "nan.npz"
    np.savez(files["nan"], x=xn, y=y)
    files["float_labels"] = d / "fl.npz"
    np.savez(files["float_labels"], x=x, y=y + 0.5)
    files["length"] = d / "len.npz"
    np.savez(files["length"], x=x, y=y[:-1])
    files["h5_no_labels"] = d / "nolabels.h5"
    with h5py.File(files["h5_no_labels"], "w") as f:
        f["inputs"] = x
    files["npy"] = d / "x.npy"
    np.save(files["npy"], x)
    files["missing"] = d / "nope.npz"
    return files


BAD = ["no_labels", "out_of_range", "negative", "shape", "nan", "float_labels", "length",
       "h5_no_labels", "npy", "missing"]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("cmd", ["eval", "finetune"])
def test_bad_data_refused(cmd, kind, data, tmp_path):
    d, x, y, _, model, _, _ = data
    inp = tmp_path / "in"
    inp.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    bad = _bad_files(inp, x, y)[kind]
    if cmd == "eval":
        argv = ["eval", model, "--data", bad, "-o", out / "e.json"]
    else:
        argv = ["finetune", model, "--data", bad, "--epochs", "1", "-o", out / "ft.pt",
                "--summary", out / "s.json", "-q"]
    assert_refused(invoke(*argv), out, bad)


def test_missing_model_refused(data, tmp_path):
    _, _, _, npz, _, _, _ = data
    missing = tmp_path / "nope.pt"
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(invoke("eval", missing, "--data", npz), out, missing, "no such file")
    assert_refused(invoke("finetune", missing, "--data", npz, "--epochs", "1",
                          "-o", out / "ft.pt"), out, missing)


def test_bad_noise_and_outputs(data, tmp_path):
    _, _, _, npz, model, _, _ = data
    assert_refused(invoke("eval", model, "--data", npz, "--noise", "0,-1"), tmp_path, "--noise")
    assert_refused(invoke("eval", model, "--data", npz, "--noise", "a"), tmp_path, "--noise")
    assert_refused(invoke("finetune", model, "--data", npz, "--epochs", "1", "-o", "-",
                          "--summary", "-"), tmp_path, "stdout")
    assert_refused(invoke("finetune", model, "--data", npz, "--epochs", "1", "-o", model),
                   tmp_path, model)
