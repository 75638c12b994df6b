"""`nettrim prune --method lc` and `--method magnitude-iterative` end to end: exact counts,
training loss near the dense model's, the report's per-step record, resume after an
interruption giving the identical checkpoint, refusals, and HPTD's zeros staying zero."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import invoke
from torch import nn

from nettrim_cli.evaluate import evaluate
from nettrim_cli.methods.lc.schedule import MagnitudeSchedule
from nettrim_cli.methods.lc.trained import TrainedPruning
from nettrim_cli.training import TrainConfig, train

SIZES = [32 * 10, 3 * 32]
LC_FAST = ["--mu0", "1e-2", "--mu-growth", "1.5", "--lr", "0.1", "--batch-size", "256"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread) -> dict:
    """A 10-32-3 ReLU net trained to ~zero loss on 256 separable samples, and its data."""
    d = tmp_path_factory.mktemp("lc")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 10, generator=g)
    y = (X @ torch.randn(10, 3, generator=g)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    train(model, X.numpy(), y.numpy(), TrainConfig(epochs=300, lr=1e-2, batch_size=256))
    torch.save(model, d / "model.pt")
    with h5py.File(d / "train.h5", "w") as f:
        f["inputs"] = X.numpy()
        f["labels"] = y.numpy()
    dense = evaluate(model, X.numpy(), y.numpy())[0]
    return {"dir": d, "model": d / "model.pt", "data": d / "train.h5", "dense": dense,
            "x": X.numpy(), "y": y.numpy()}


def _prune(tiny, out: Path, *args: object) -> object:
    return invoke("prune", tiny["model"], "--data", tiny["data"], "-o", out / "p.pt",
                  "--report", out / "p.json", "-q", *args)


def _weights(path: Path) -> list[np.ndarray]:
    model = torch.load(path, weights_only=False)
    return [model[i].weight.detach().numpy() for i in (0, 2)]


def test_lc_keeps_exact_counts_per_layer_and_training_loss_near_dense(tiny, tmp_path):
    r = _prune(tiny, tmp_path, "--method", "lc", "--sparsity", "0.6", "--steps", "10",
               "--epochs", "20", *LC_FAST)
    assert r.exit_code == 0, r.stderr
    kept = [int(np.floor(0.4 * n + 0.5)) for n in SIZES]
    assert [int(np.count_nonzero(w)) for w in _weights(tmp_path / "p.pt")] == kept
    report = json.loads((tmp_path / "p.json").read_text())
    assert [la["nonzeros_after"] for la in report["layers"]] == kept
    assert [la["kept_target"] for la in report["layers"]] == kept
    training = report["network"]["training"]
    steps = training["steps"]
    assert [h["step"] for h in steps] == list(range(11))
    assert [h["mu"] for h in steps[1:]] == pytest.approx([1e-2 * 1.5 ** k for k in range(10)])
    assert training["epochs"] == 200
    assert all(h["nonzeros_per_layer"] == kept for h in steps)
    direct, final = steps[0]["theta_loss"], steps[-1]["theta_loss"]
    assert final < tiny["dense"]["loss"] + 0.05  # near the dense model's training loss
    assert final < direct / 5  # where keeping the largest weights alone is far off
    assert steps[-1]["distance"] < 0.02 * steps[0]["distance"]
    pruned = torch.load(tmp_path / "p.pt", weights_only=False)
    measured = evaluate(pruned, tiny["x"], tiny["y"])[0]["loss"]
    assert measured == pytest.approx(final, rel=1e-4)  # the checkpoint is theta


def test_lc_joint_budget_and_hptd_matching_its_counts(tiny, tmp_path):
    r = _prune(tiny, tmp_path, "--method", "lc", "--sparsity", "0.7", "--allocation", "joint",
               "--steps", "3", "--epochs", "2", *LC_FAST)
    assert r.exit_code == 0, r.stderr
    counts = [int(np.count_nonzero(w)) for w in _weights(tmp_path / "p.pt")]
    assert sum(counts) == int(np.floor(0.3 * sum(SIZES) + 0.5))
    assert counts != [int(np.floor(0.3 * n + 0.5)) for n in SIZES]  # allocated, not uniform
    out = tmp_path / "hptd"
    out.mkdir()
    r = _prune(tiny, out, "--method", "magnitude-iterative", "--match", tmp_path / "p.json",
               "--rounds", "2", "--epochs", "1")
    assert r.exit_code == 0, r.stderr
    assert [int(np.count_nonzero(w)) for w in _weights(out / "p.pt")] == counts


@pytest.mark.parametrize(("form", "flags"), [("l1-constraint", ["--radius", "0.3"]),
                                             ("l1-penalty", ["--alpha", "0.02"]),
                                             ("l0-penalty", ["--alpha", "1e-4"])])
def test_other_forms_end_exactly_sparse(tiny, tmp_path, form, flags):
    r = _prune(tiny, tmp_path, "--method", "lc", "--form", form, *flags, "--steps", "4",
               "--epochs", "3", *LC_FAST)
    assert r.exit_code == 0, r.stderr
    weights = _weights(tmp_path / "p.pt")
    steps = json.loads((tmp_path / "p.json").read_text())["network"]["training"]["steps"]
    assert sum(int(np.count_nonzero(w)) for w in weights) == steps[-1]["nonzeros"] < sum(SIZES)
    if form == "l1-constraint":
        dense = [np.abs(w).sum() for w in _weights(tiny["model"])]
        for w, n in zip(weights, dense, strict=True):
            assert np.abs(w).sum() <= 0.3 * n * (1 + 1e-6)


class Interrupt:
    """Stop a run (as Ctrl-C would) right after the work folder records step ``at``; keep
    what every recorded step held."""

    def __init__(self, monkeypatch, at: int | None) -> None:
        self.at, self.records = at, []
        original = TrainedPruning.save_state

        def save_state(method, step, model, arrays, meta):
            original(method, step, model, arrays, meta)
            self.records.append((step, {k: v.detach().clone() for k, v in
                                        model.state_dict().items()}, dict(arrays)))
            if step == self.at:
                raise KeyboardInterrupt

        monkeypatch.setattr(TrainedPruning, "save_state", save_state)


@pytest.mark.parametrize(("method", "flags", "stop"), [
    ("lc", ["--steps", "4", "--epochs", "3", *LC_FAST], 2),
    ("magnitude-iterative", ["--rounds", "3", "--epochs", "2", "--batch-size", "64"], 1)])
def test_resume_after_an_interruption_writes_the_identical_checkpoint(
        tiny, tmp_path, monkeypatch, method, flags, stop):
    args = ["--method", method, "--sparsity", "0.75", *flags]
    whole = tmp_path / "whole"
    whole.mkdir()
    assert _prune(tiny, whole, *args).exit_code == 0
    cut = tmp_path / "cut"
    cut.mkdir()
    with monkeypatch.context() as m:
        Interrupt(m, stop)
        r = _prune(tiny, cut, *args)
    assert r.exit_code == 130, r.stderr
    assert sorted(p.name for p in cut.iterdir()) == ["p.pt.nettrim-work"]
    refused = _prune(tiny, cut, *args, "--resume", "--lr", "0.01")
    assert refused.exit_code == 2 and "cannot resume" in refused.stderr, refused.stderr
    again = _prune(tiny, cut, *args)
    assert again.exit_code == 2 and "--resume" in again.stderr, again.stderr
    r = _prune(tiny, cut, *args, "--resume")
    assert r.exit_code == 0, r.stderr
    assert (cut / "p.pt").read_bytes() == (whole / "p.pt").read_bytes()
    steps = [json.loads((d / "p.json").read_text())["network"]["training"]["steps"]
             for d in (whole, cut)]
    assert steps[0] == steps[1]
    assert not (cut / "p.pt.nettrim-work").exists()


def test_hptd_zeros_stay_zero_between_rounds(tiny, tmp_path, monkeypatch):
    spy = Interrupt(monkeypatch, None)
    r = _prune(tiny, tmp_path, "--method", "magnitude-iterative", "--sparsity", "0.8",
               "--rounds", "4", "--epochs", "3", "--lr", "0.1", "--batch-size", "64")
    assert r.exit_code == 0, r.stderr
    table = MagnitudeSchedule(4).counts(SIZES, [int(np.floor(0.2 * n + 0.5)) for n in SIZES])
    before = [np.ones((32, 10), bool), np.ones((3, 32), bool)]
    for t, ((step, state, arrays), row) in enumerate(zip(spy.records, table, strict=True)):
        assert step == t + 1
        masks = [arrays["mask_0"], arrays["mask_1"]]
        assert [int(m.sum()) for m in masks] == row
        for name, m, b in zip(("0.weight", "2.weight"), masks, before, strict=True):
            assert not np.any(m & ~b)  # a pruned weight never returns
            assert np.all(state[name].numpy()[~m] == 0)  # and stays exactly zero in training
            assert np.count_nonzero(state[name].numpy()[m]) == m.sum()
        before = masks
    assert [int(np.count_nonzero(w)) for w in _weights(tmp_path / "p.pt")] == table[-1]


@pytest.mark.parametrize(("args", "needle"), [
    (["--method", "lc", "--sparsity", "1.0"], "(0, 1)"),
    (["--method", "lc", "--sparsity", "0"], "(0, 1)"),
    (["--method", "lc"], "--sparsity S or --match"),
    (["--method", "lc", "--form", "l1-constraint"], "--radius"),
    (["--method", "lc", "--form", "l1-penalty", "--sparsity", "0.5"], "--alpha"),
    (["--method", "lc", "--form", "l0-penalty"], "--alpha A > 0"),
    (["--method", "lc", "--sparsity", "0.5", "--mu-growth", "0.5"], "--mu-growth"),
    (["--method", "lc", "--sparsity", "0.5", "--scheduler", "Nope"], "Nope"),
    (["--method", "lc", "--sparsity", "0.5", "--scheduler-args", "[1]"], "JSON object"),
    (["--method", "magnitude-iterative", "--sparsity", "0.5", "--mu0", "1"], "--mu0"),
    (["--method", "magnitude", "--sparsity", "0.5", "--epochs", "1"], "--epochs"),
])
def test_bad_settings_are_refused_in_one_line(tiny, tmp_path, args, needle):
    r = _prune(tiny, tmp_path, *args)
    assert r.exit_code == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and needle in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_training_methods_need_data_and_others_need_acts(tiny, tmp_path):
    r = invoke("prune", tiny["model"], "--method", "lc", "--sparsity", "0.5", "-o",
               tmp_path / "p.pt", "-q")
    assert r.exit_code == 2 and "--data" in r.stderr, r.stderr
    r = invoke("prune", tiny["model"], "--method", "magnitude", "--sparsity", "0.5", "-o",
               tmp_path / "p.pt", "-q")
    assert r.exit_code == 2 and "needs --acts" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_masked_finetune_after_lc_keeps_theta_zeros(tiny, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    args = ["--method", "lc", "--sparsity", "0.7", "--steps", "3", "--epochs", "2", *LC_FAST]
    assert _prune(tiny, base, *args).exit_code == 0
    r = _prune(tiny, tmp_path, *args, "--finetune-epochs", "5")
    assert r.exit_code == 0, r.stderr
    theta, tuned = _weights(base / "p.pt"), _weights(tmp_path / "p.pt")
    for a, b in zip(theta, tuned, strict=True):
        assert np.array_equal(a != 0, b != 0)  # same support, exactly
        assert not np.array_equal(a, b)  # and the kept weights trained
    training = json.loads((tmp_path / "p.json").read_text())["network"]["training"]
    assert training["finetune"]["epochs"] == 5 and training["epochs"] == 3 * 2 + 5
    assert len(training["finetune"]["loss_per_epoch"]) == 5


def test_an_activation_dump_is_the_calibration_set_when_given(tiny, tmp_path):
    np.save(tmp_path / "calib.npy", tiny["x"][:64])
    r = invoke("dump", tiny["model"], "--inputs", tmp_path / "calib.npy", "-o",
               tmp_path / "acts.h5")
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "out"
    out.mkdir()
    r = _prune(tiny, out, "--method", "lc", "--acts", tmp_path / "acts.h5", "--sparsity",
               "0.7", "--steps", "2", "--epochs", "1", *LC_FAST)
    assert r.exit_code == 0, r.stderr
    report = json.loads((out / "p.json").read_text())
    assert report["settings"]["calibration"] == "the activation dump's inputs"
    assert set(report["inputs"]) == {"model", "acts", "data"}
    no_dump = _prune(tiny, tmp_path, "--method", "lc", "--sparsity", "0.7", "--steps", "2",
                     "--epochs", "1", *LC_FAST)
    assert no_dump.exit_code == 0, no_dump.stderr
    other = json.loads((tmp_path / "p.json").read_text())
    assert other["settings"]["calibration"] == "the first 256 training samples"
    # the same pruned network, measured on other inputs
    assert (out / "p.pt").read_bytes() == (tmp_path / "p.pt").read_bytes()
    assert other["network"]["output_norm"] != report["network"]["output_norm"]
