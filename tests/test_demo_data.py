"""Fast tests of the Figure 1 demo's data and model side (nettrim_cli.demo)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from nettrim_cli import demo


def test_spirals_shape_dtype_balanced():
    X, y = demo.make_spirals(200, seed=0)
    assert X.shape == (200, 2) and X.dtype == np.float32
    assert y.shape == (200,) and y.dtype == np.int64
    assert set(np.unique(y).tolist()) == {0, 1}
    assert np.count_nonzero(y == 0) == np.count_nonzero(y == 1) == 100
    assert np.all(np.isfinite(X))


def test_spirals_seeded():
    X1, y1 = demo.make_spirals(200, seed=3)
    X2, y2 = demo.make_spirals(200, seed=3)
    X3, _ = demo.make_spirals(200, seed=4)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)


def test_spirals_are_nested_not_linearly_separable():
    # The two classes wind around each other: both occupy all four quadrants, and the best
    # linear classifier (least squares) is far from perfect.
    X, y = demo.make_spirals(400, seed=0, noise=0.0)
    for c in (0, 1):
        q = set(zip((X[y == c, 0] > 0).tolist(), (X[y == c, 1] > 0).tolist(), strict=True))
        assert len(q) == 4
    A = np.hstack([X, np.ones((len(X), 1), np.float32)])
    w, *_ = np.linalg.lstsq(A, 2.0 * y - 1.0, rcond=None)
    assert np.mean((A @ w > 0) == (y == 1)) < 0.8


def test_build_model_layers():
    m = demo.build_model()
    assert isinstance(m, torch.nn.Sequential)
    kinds = [type(layer) for layer in m]
    assert kinds == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear, torch.nn.ReLU,
                     torch.nn.Linear]
    assert [tuple(layer.weight.shape) for layer in demo.linear_layers(m)] == [
        (200, 2), (200, 200), (2, 200)]


def test_grid_covers_data_with_margin():
    X, _ = demo.make_spirals(200, seed=0)
    g = demo.grid_points(X, steps=50)
    assert g.shape == (2500, 2) and g.dtype == np.float32
    assert np.all(g.min(axis=0) < X.min(axis=0))
    assert np.all(g.max(axis=0) > X.max(axis=0))


@pytest.fixture(scope="module")
def trained():
    return demo.train(seed=0)


def test_train_reaches_high_accuracy(trained):
    model, X, y, acc = trained
    assert not model.training
    assert acc >= 0.95
    assert demo.accuracy(model, X, y) == acc
    Xs, ys = demo.make_spirals(200, seed=0)
    np.testing.assert_array_equal(X, Xs)
    np.testing.assert_array_equal(y, ys)


def test_train_is_reproducible_and_restores_global_state():
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    m1, *_ = demo.train(seed=1, epochs=50)
    m2, *_ = demo.train(seed=1, epochs=50)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_decision_changes(trained):
    model, X, _, _ = trained
    grid = demo.grid_points(X, steps=60)
    assert demo.decision_changes(model, model, grid) == (0, 3600)
    other = copy.deepcopy(model)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.abs().mean())
    changed, total = demo.decision_changes(model, other, grid)
    assert total == 3600 and 0 < changed < total


def test_compare_report_counts_exact_zeros(trained):
    model, X, y, _ = trained
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        w = pruned[2].weight
        w[:, :150] = 0.0  # 200 * 150 = 30000 of 40000 links removed
    lines = demo.compare_report(model, pruned, X, y, steps=20)
    assert lines[0] == "hidden-to-hidden links: 40000 -> 10000 (75.0% pruned)"
    assert lines[1] == "all links: 40800 -> 10800 (73.5% pruned)"
    assert re.fullmatch(r"training accuracy: 100\.0% -> \d+\.\d%", lines[2])
    assert re.fullmatch(r"decision map: \d+ of 400 grid points change class \(\d+\.\d\d%\)",
                        lines[3])


def test_cli_train_and_compare(tmp_path):
    env_py = sys.executable
    out = tmp_path / "demo"
    r = subprocess.run([env_py, "-m", "nettrim_cli.demo", "train", "--out", str(out),
                        "--epochs", "100"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "training accuracy:" in r.stderr
    X = np.load(out / "calib.npy")
    y = np.load(out / "labels.npy")
    assert X.shape == (200, 2) and X.dtype == np.float32
    assert y.shape == (200,) and y.dtype == np.int64
    # Prune the hidden-to-hidden layer by hand, saved as a whole module like the original.
    with torch.serialization.safe_globals(demo.SAFE_CLASSES):
        model = torch.load(out / "model.pt", weights_only=True)
    with torch.no_grad():
        model[2].weight[:100] = 0.0
    torch.save(model, out / "pruned.pt")
    r = subprocess.run([env_py, "-m", "nettrim_cli.demo", "compare", str(out / "model.pt"),
                        str(out / "pruned.pt"), "--calib", str(out / "calib.npy"),
                        "--steps", "30"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "hidden-to-hidden links: 40000 -> 20000 (50.0% pruned)"
    assert lines[1] == "all links: 40800 -> 20800 (49.0% pruned)"
    assert lines[2].startswith("training accuracy: ")
    assert " of 900 grid points change class (" in lines[3]


def test_demo_imports_no_plotting():
    code = ("import sys, nettrim_cli.demo; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'scipy')]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
