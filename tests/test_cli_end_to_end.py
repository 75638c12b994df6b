"""The CLI end to end on a tiny model, for every checkpoint form, parallel and cascade."""

import csv
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from nettrim_cli.checkpoint import ALLOWED_MODULES
from nettrim_cli.cli import main

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import nt_test_archs  # noqa: E402

REQUIRED_LAYER_KEYS = {"name", "kind", "activation", "shape", "params", "nonzeros_before",
                       "nonzeros_after", "sparsity", "epsilon", "lambda", "discrepancy",
                       "relative_discrepancy", "solver"}
REQUIRED_NETWORK_KEYS = {"params", "nonzeros_after", "pruned_fraction", "discrepancy",
                         "relative_discrepancy", "bound"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    torch.manual_seed(0)
    model = nt_test_archs.mlp()
    x = torch.randn(300, 6)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    np.save(d / "calib.npy", x.numpy())
    np.save(d / "labels.npy", y.numpy())
    return d, model


def invoke(args, input=None):
    return CliRunner().invoke(main, args, input=input, catch_exceptions=False)


def save_form(d: Path, model: nn.Module, form: str) -> tuple[Path, list[str]]:
    path = d / f"{form}.pt"
    sd = model.state_dict()
    arch = ["--arch", "nt_test_archs:mlp"]
    if form == "module":
        torch.save(model, path)
        return path, []
    if form == "plain_state_dict":
        torch.save(sd, path)
    elif form == "wrapped_state_dict":
        torch.save({"state_dict": sd, "epoch": 7, "note": "kept"}, path)
    elif form == "model_key":
        torch.save({"model": sd, "step": 3}, path)
    elif form == "dataparallel_prefix":
        torch.save({"module." + k: v for k, v in sd.items()}, path)
    return path, arch


def load_plain(path: Path):
    with torch.serialization.safe_globals(list(ALLOWED_MODULES)):
        return torch.load(path, weights_only=True)


@pytest.mark.parametrize("form", ["module", "plain_state_dict", "wrapped_state_dict",
                                  "model_key", "dataparallel_prefix"])
@pytest.mark.parametrize("mode", ["parallel", "cascade"])
def test_prune_end_to_end_keeps_the_checkpoint_form(trained, tmp_path, monkeypatch, form, mode):
    d, model = trained
    monkeypatch.syspath_prepend(str(TESTS))
    ckpt, arch = save_form(tmp_path, model, form)
    acts = tmp_path / "acts.h5"
    r = invoke(["dump", str(ckpt), "--inputs", str(d / "calib.npy"), "--labels",
                str(d / "labels.npy"), "-o", str(acts), *arch])
    assert r.exit_code == 0, r.output
    out, rep = tmp_path / "pruned.pt", tmp_path / "report.json"
    r = invoke(["prune", str(ckpt), "--acts", str(acts), "--mode", mode, "--epsilon", "0.1",
                "-o", str(out), "--report", str(rep), "-q", *arch])
    assert r.exit_code == 0, r.output
    report = json.loads(rep.read_text())
    # the report's schema
    assert report["mode"] == mode and report["nettrim_version"]
    assert {"model", "acts"} <= set(report["inputs"])
    assert report["inputs"]["model"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert report["outputs"]["checkpoint"]["sha256"] == \
        hashlib.sha256(out.read_bytes()).hexdigest()
    assert [la["activation"] for la in report["layers"]] == ["relu", "relu", "none"]
    for la in report["layers"]:
        assert REQUIRED_LAYER_KEYS <= set(la)
        assert la["solver"]["status_counts"]
        assert la["nonzeros_after"] <= la["nonzeros_before"]
    assert REQUIRED_NETWORK_KEYS <= set(report["network"])
    assert report["network"]["bound"] is not None
    assert report["network"]["discrepancy"] <= report["network"]["bound"]
    assert report["network"]["pruned_fraction"] > 0.05
    # the pruned checkpoint: same form, loadable as the input was, exact zeros where reported
    loaded = load_plain(out)
    if form == "module":
        assert isinstance(loaded, nn.Sequential)
        sd = loaded.state_dict()
    else:
        original = torch.load(ckpt, weights_only=True)
        assert list(loaded) == list(original)  # same keys, same order
        if form == "wrapped_state_dict":
            assert loaded["epoch"] == 7 and loaded["note"] == "kept"
            sd = loaded["state_dict"]
        elif form == "model_key":
            assert loaded["step"] == 3
            sd = loaded["model"]
        elif form == "dataparallel_prefix":
            sd = {k[len("module."):]: v for k, v in loaded.items()}
        else:
            sd = loaded
    for la in report["layers"]:
        w = sd[f"{la['name']}.weight"]
        assert int((w != 0).sum()) == la["nonzeros_after"]
    # the input checkpoint is untouched
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == report["inputs"]["model"]["sha256"]


def test_custom_module_class_needs_trust(trained, tmp_path, monkeypatch):
    d, model = trained
    monkeypatch.syspath_prepend(str(TESTS))
    custom = nt_test_archs.Custom()
    custom.body.load_state_dict(model.state_dict())
    path = tmp_path / "custom.pt"
    torch.save(custom, path)
    acts = tmp_path / "acts.h5"
    r = CliRunner().invoke(main, ["dump", str(path), "--inputs", str(d / "calib.npy"), "-o",
                                  str(acts)])
    assert r.exit_code == 2
    assert "nt_test_archs.Custom" in r.output and "--trust-checkpoint" in r.output
    assert not acts.exists()
    r = invoke(["dump", str(path), "--inputs", str(d / "calib.npy"), "-o", str(acts),
                "--trust-checkpoint"])
    assert r.exit_code == 0, r.output
    r = invoke(["prune", str(path), "--acts", str(acts), "-o", str(tmp_path / "p.pt"),
                "--report", str(tmp_path / "r.json"), "--trust-checkpoint", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [la["name"] for la in rep["layers"]] == ["body.1", "body.3", "body.5"]


def test_report_formats_and_stdout_pipeline(trained, tmp_path):
    d, model = trained
    ckpt = tmp_path / "m.pt"
    torch.save(model, ckpt)
    acts = tmp_path / "acts.h5"
    assert invoke(["dump", str(ckpt), "--inputs", str(d / "calib.npy"), "-o",
                   str(acts)]).exit_code == 0
    # the report on stdout (-), progress and logs elsewhere: stdout parses as JSON
    r = CliRunner().invoke(
        main, ["prune", str(ckpt), "--acts", str(acts), "--config", "configs/parallel.toml",
               "--epsilon", "0.2", "-o", str(tmp_path / "p.pt"), "--report", "-"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["settings"]["epsilon"] == 0.2  # the flag overrides the preset
    assert report["mode"] == "parallel"  # from the preset
    text = json.dumps(report)
    r = CliRunner().invoke(main, ["report", "-", "--format", "csv"], input=text)
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["name"] for row in rows] == [la["name"] for la in report["layers"]]
    assert [int(row["nonzeros_after"]) for row in rows] == \
        [la["nonzeros_after"] for la in report["layers"]]
    r = CliRunner().invoke(main, ["report", "-", "--format", "json"],
                                           input=text)
    assert json.loads(r.stdout) == report
    r = CliRunner().invoke(main, ["report", "-"], input=text)
    assert r.exit_code == 0 and "pruned" in r.stdout and report["layers"][0]["name"] in r.stdout


def test_fixed_lambda_solves_eq14_as_it_stands(trained, tmp_path):
    d, model = trained
    ckpt = tmp_path / "m.pt"
    torch.save(model, ckpt)
    acts = tmp_path / "acts.h5"
    invoke(["dump", str(ckpt), "--inputs", str(d / "calib.npy"), "-o", str(acts)])
    reps = []
    for lam in ("0.01", "10"):
        rep = tmp_path / f"r{lam}.json"
        r = invoke(["prune", str(ckpt), "--acts", str(acts), "--mode", "parallel", "--lambda",
                    lam, "-o", str(tmp_path / f"p{lam}.pt"), "--report", str(rep), "-q"])
        assert r.exit_code == 0, r.output
        reps.append(json.loads(rep.read_text()))
    assert all(la["lambda"] == float(lam) for la, lam in
               zip(reps[0]["layers"], ["0.01"] * 3, strict=True))
    # a larger lambda weighs the fit more: less pruning, smaller discrepancy
    assert reps[1]["network"]["nonzeros_after"] > reps[0]["network"]["nonzeros_after"]
    for a, b in zip(reps[0]["layers"], reps[1]["layers"], strict=True):
        assert b["discrepancy"] < a["discrepancy"]
