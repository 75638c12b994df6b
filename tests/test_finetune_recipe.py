"""The default fine-tune of `nettrim finetune` (issue: high sparsity at dense accuracy): a
cosine schedule over the default epochs, a seeded validation split keeping the best epoch,
early stopping, and the cost reported as epochs x samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import invoke
from torch import nn

from nettrim_cli.finetune import finetune, split
from nettrim_cli.recipe import DEFAULT_EPOCHS, DEFAULT_LR, Recipe


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A 10-32-3 MLP with half of its first layer's weights pruned, and a learnable task."""
    d = tmp_path_factory.mktemp("recipe")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 10)).astype(np.float32)
    y = (x[:, :3].argmax(1)).astype(np.int64)
    np.savez(d / "train.npz", x=x, y=y)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        m[0].weight[torch.rand_like(m[0].weight) < 0.5] = 0.0
    torch.save(m, d / "pruned.pt")
    return d, x, y, m


def test_default_recipe_improves_the_loss_and_reports_its_cost(pruned, tmp_path):
    d, x, _, m0 = pruned
    r = invoke("finetune", d / "pruned.pt", "--data", d / "train.npz", "-o", tmp_path / "t.pt",
               "--summary", tmp_path / "s.json", "-q")
    assert r.exit_code == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["epochs"] == DEFAULT_EPOCHS and s["settings"]["lr"] == DEFAULT_LR
    assert s["train_loss"] < 0.9 * s["train_loss_before"]
    assert s["cost"] == {"epochs": DEFAULT_EPOCHS, "samples": len(x),
                         "sample_passes": DEFAULT_EPOCHS * len(x)}
    assert s["zeros_kept"] and s["nonzeros_after"] == s["nonzeros_before"]
    # cosine: starts at lr, falls every epoch, ends near 0
    lrs = s["lr_per_epoch"]
    assert lrs[0] == DEFAULT_LR and all(b < a for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] < 0.05 * DEFAULT_LR


def test_constant_schedule_keeps_the_rate():
    m = nn.Sequential(nn.Linear(4, 3))
    x = np.random.default_rng(1).standard_normal((32, 4)).astype(np.float32)
    y = np.arange(32) % 3
    figs = finetune(m, x, y, Recipe(epochs=3, lr=0.01, schedule="constant"))
    assert figs["lr_per_epoch"] == [0.01, 0.01, 0.01]


def test_validation_split_keeps_the_best_epoch_and_stops_early(pruned):
    _, x, y, m0 = pruned
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    model.load_state_dict(m0.state_dict())
    # a rate far too high: validation accuracy peaks early, then the loop stops
    figs = finetune(model, x, y, Recipe(epochs=30, lr=3.0, schedule="constant",
                                        val_split=0.25, patience=2))
    v = figs["validation"]
    assert v["samples"] == 500 and figs["cost"]["samples"] == 1500
    accs = v["accuracy_per_epoch"]
    assert v["best_epoch"] == int(np.argmax(accs)) + 1
    assert len(accs) == figs["cost"]["epochs"] == v["best_epoch"] + 2 < 30
    assert v["stopped_early"]
    # the model holds the best epoch's weights: its validation accuracy is the best one
    _, _, xv, yv = split(x, y, 0.25, 0)
    with torch.no_grad():
        acc = float((model(torch.as_tensor(xv)).argmax(1).numpy() == yv).mean())
    assert acc == pytest.approx(max(accs))
    assert torch.equal(model[0].weight == 0, m0[0].weight == 0)


def test_split_is_seeded_and_disjoint():
    x = np.arange(50, dtype=np.float32)[:, None]
    y = np.zeros(50, dtype=np.int64)
    a = split(x, y, 0.2, 3)
    b = split(x, y, 0.2, 3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert len(a[2]) == 10 and not set(a[0][:, 0]) & set(a[2][:, 0])


@pytest.mark.parametrize("extra, needle", [
    (["--patience", "2"], "--patience needs --val-split"),
    (["--val-split", "0.9999"], "leaves no"),
])
def test_bad_recipes_are_refused(pruned, tmp_path, extra, needle):
    d, *_ = pruned
    r = invoke("finetune", d / "pruned.pt", "--data", d / "train.npz", "-o", tmp_path / "t.pt",
               *extra)
    assert r.exit_code == 2, r.stderr
    assert needle in r.stderr
    assert not (tmp_path / "t.pt").exists()


def test_off_a_terminal_one_line_per_epoch_with_validation(pruned, tmp_path):
    d, *_ = pruned
    args = ("finetune", d / "pruned.pt", "--data", d / "train.npz", "--epochs", "3",
            "--val-split", "0.2", "-o", tmp_path / "t.pt", "--summary", tmp_path / "s.json")
    r = invoke(*args)
    assert r.exit_code == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("nettrim: epoch ")]
    assert [ln.split(":")[1] for ln in lines] == [" epoch 1/3", " epoch 2/3", " epoch 3/3"]
    for ln, loss, acc in zip(lines, s["loss_per_epoch"],
                             s["validation"]["accuracy_per_epoch"], strict=True):
        assert f"loss {loss:.4f}" in ln and f"validation accuracy {100 * acc:.2f}%" in ln
    quiet = invoke(*args, "--force", "-q")
    assert quiet.exit_code == 0 and "epoch" not in quiet.stderr
