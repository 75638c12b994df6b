"""The one-shot baselines of `nettrim prune --method magnitude|wanda|sparsegpt`: exact
per-layer counts (at --match of a real Net-Trim report and at --sparsity), the layer
reconstruction error against magnitude pruning, reports in Net-Trim's schema, `nettrim report
--plot`, and the flag combinations and inputs that are refused."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import assert_refused, invoke

from nettrim_cli.methods import oneshot as B


def _problem(P=300, N=40, M=10, seed=0):
    """Correlated inputs with feature scales spread over e^-2..e^2, and dense weights."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((P, N)) @ (0.4 * rng.standard_normal((N, N))) \
        + rng.standard_normal((P, N))
    X = Z * np.exp(rng.uniform(-2.0, 2.0, N))[None, :]
    return X, rng.standard_normal((M, N))


def _err(X, W, W0):
    return float(np.linalg.norm(X @ W.T - X @ W0.T))


# ----------------------------------------------------------------------------------------------
# The arithmetic


@pytest.mark.parametrize("count", [0, 1, 57, 200, 399, 400])
@pytest.mark.parametrize("method", B.METHODS)
def test_exact_count(method, count):
    X, W0 = _problem()
    W = B.prune_one(method, W0, X, count)
    assert W.shape == W0.shape
    assert int(np.count_nonzero(W)) == count


def test_magnitude_keeps_the_largest():
    _, W0 = _problem()
    W = B.magnitude(W0, 100)
    kept = np.abs(W0[W != 0])
    dropped = np.abs(W0[W == 0])
    assert kept.min() >= dropped.max()
    assert np.array_equal(W[W != 0], W0[W != 0])


def test_wanda_per_row_counts():
    X, W0 = _problem()
    for count in (100, 103, 397):
        W = B.wanda(W0, X, count)
        per_row = np.count_nonzero(W, axis=1)
        assert per_row.sum() == count
        assert per_row.max() - per_row.min() <= 1
        # within a row, the kept weights have the largest |w| * ||x_j||
        s = np.abs(W0) * np.linalg.norm(X, axis=0)[None, :]
        for i in range(W0.shape[0]):
            if 0 < per_row[i] < W0.shape[1]:
                assert s[i][W[i] != 0].min() >= s[i][W[i] == 0].max()
        assert np.array_equal(W[W != 0], W0[W != 0])  # no weight update


@pytest.mark.parametrize("count", [100, 200, 300])
def test_wanda_and_sparsegpt_beat_magnitude(count):
    X, W0 = _problem()
    e_mag = _err(X, B.magnitude(W0, count), W0)
    e_wanda = _err(X, B.wanda(W0, X, count), W0)
    e_sgpt = _err(X, B.sparsegpt(W0, X, count), W0)
    assert e_wanda < 0.8 * e_mag
    assert e_sgpt < 0.8 * e_mag
    assert e_sgpt < e_wanda  # the weight update helps on top of the mask


def test_sparsegpt_zero_sparsity_is_identity():
    X, W0 = _problem()
    assert np.array_equal(B.sparsegpt(W0, X, W0.size), W0)


def test_sparsegpt_blocks_and_dead_inputs():
    X, W0 = _problem(N=50)
    X[:, 7] = 0.0  # a dead feature
    for bs in (1, 8, 16, 50, 128):
        W = B.sparsegpt(W0, X, 230, blocksize=bs)
        assert np.count_nonzero(W) == 230
        assert np.all(W[:, 7] == 0)
    dead = np.zeros(50, bool)
    dead[7] = True
    counts = B.block_prune_counts(dead, 10, 230, 16)
    assert sum(counts) == 500 - 230 and counts[0] >= 10
    assert B.allocate([3, 0, 5, 2], 7) == [2, 0, 4, 1]


def test_sparsegpt_exact_when_nothing_is_pruned_is_optimal_reconstruction():
    # at one weight pruned, the OBS update makes the error no worse than just dropping it
    X, W0 = _problem()
    W = B.sparsegpt(W0, X, W0.size - 1)
    Wm = W0.copy()
    Wm[W == 0] = 0
    assert _err(X, W, W0) <= _err(X, Wm, W0) + 1e-9


def test_count_for_sparsity_rounds_half_up():
    assert B.count_for_sparsity(10, 0.25) == 8  # 7.5 -> 8
    assert B.count_for_sparsity(24, 0.5) == 12
    assert B.count_for_sparsity(7, 0.0) == 7


# ----------------------------------------------------------------------------------------------
# The CLI


@pytest.fixture(scope="module")
def netrim_run(assets, tmp_path_factory):
    """A real Net-Trim prune of the tiny fixture model and its report."""
    d = tmp_path_factory.mktemp("netrim")
    out, rep = d / "pruned.pt", d / "report.json"
    r = invoke("prune", assets.model, "--acts", assets.acts, "--mode", "parallel",
               "--epsilon", "0.2", "--workers", "1", "-o", out, "--report", rep, "-q")
    assert r.exit_code == 0, r.stderr
    # a report of another model (a wider hidden layer) for --match refusals
    wout, wrep = d / "wider_pruned.pt", d / "wider.json"
    r = invoke("prune", assets.wider, "--acts", assets.acts_wider, "--mode", "parallel",
               "--epsilon", "0.2", "--workers", "1", "-o", wout, "--report", wrep, "-q")
    assert r.exit_code == 0, r.stderr
    return out, json.loads(rep.read_text()), rep, wrep


def _weights(path):
    m = torch.load(path, weights_only=False)
    return {n[: -len(".weight")]: p.detach().numpy() for n, p in m.named_parameters()
            if n.endswith(".weight")}


def test_netrim_report_says_method(netrim_run):
    assert netrim_run[1]["method"] == "netrim"


@pytest.mark.parametrize("method", B.METHODS)
def test_match_gives_the_reports_counts(method, netrim_run, assets, tmp_path):
    _, nt, rep, _ = netrim_run
    out, brep = tmp_path / "b.pt", tmp_path / "b.json"
    r = invoke("prune", assets.model, "--acts", assets.acts, "--method", method, "--match", rep,
               "-o", out, "--report", brep, "-q")
    assert r.exit_code == 0, r.stderr
    report = json.loads(brep.read_text())
    assert report["method"] == method and report["format"] == "nettrim-report"
    want = {la["name"]: la["nonzeros_after"] for la in nt["layers"] if "shape" in la}
    got = {la["name"]: la["nonzeros_after"] for la in report["layers"] if "shape" in la}
    assert got == want
    W = _weights(out)
    assert {n: int(np.count_nonzero(W[n])) for n in want} == want
    for la in report["layers"]:
        if "shape" in la:
            assert la["epsilon"] is None and la["lambda"] is None
            assert la["discrepancy"] >= 0 and la["params"] == la["shape"][0] * la["shape"][1]
    assert report["network"]["bound"] is None
    assert report["network"]["nonzeros_after"] == sum(want.values())
    # `nettrim report` renders it in every format
    for fmt in ("table", "csv", "json"):
        r = invoke("report", brep, "--format", fmt)
        assert r.exit_code == 0, r.stderr
        assert method in r.stdout


def test_sparsity_state_dict_form(assets, tmp_path):
    out, rep = tmp_path / "b.pt", tmp_path / "b.json"
    r = invoke("prune", assets.sd, "--arch", "nettrim_test_archs:tiny", "--acts", assets.acts,
               "--method", "magnitude", "--sparsity", "0.5", "-o", out, "--report", rep, "-q")
    assert r.exit_code == 0, r.stderr
    sd = torch.load(out, weights_only=True)
    assert set(sd) == set(torch.load(assets.sd, weights_only=True))
    assert int(torch.count_nonzero(sd["1.weight"])) == 12  # 4*6 at 0.5
    assert int(torch.count_nonzero(sd["3.weight"])) == 9  # 6*3 = 18 at 0.5
    layers = json.loads(rep.read_text())["layers"]
    assert [la["sparsity"] for la in layers] == [0.5, 0.5]


def test_report_to_stdout_is_clean_json(assets, tmp_path):
    r = invoke("prune", assets.model, "--acts", assets.acts, "--method", "wanda",
               "--sparsity", "0.25", "-o", tmp_path / "b.pt", "--report", "-", "-q")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["method"] == "wanda"


def test_plot(netrim_run, tmp_path):
    pytest.importorskip("matplotlib")
    out, _, rep, _ = netrim_run
    d = tmp_path / "figs"
    r = invoke("report", rep, "--plot", d, "--checkpoint", out, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in d.iterdir()) == ["discrepancy.png", "pattern_1.png",
                                                    "pattern_3.png", "sparsity.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in d.iterdir())
    json.loads(r.stdout)
    # without the checkpoint: the bar charts only; existing files need --force
    d2 = tmp_path / "bars"
    assert invoke("report", rep, "--plot", d2).exit_code == 0
    assert sorted(p.name for p in d2.iterdir()) == ["discrepancy.png", "sparsity.png"]
    r = invoke("report", rep, "--plot", d2)
    assert r.exit_code == 2 and "--force" in r.stderr
    assert invoke("report", rep, "--plot", d2, "--force").exit_code == 0


def test_plot_without_matplotlib(netrim_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = invoke("report", netrim_run[2], "--plot", tmp_path / "figs")
    assert_refused(r, tmp_path, "pip install 'nettrim[plots]'")


def test_plot_checkpoint_of_another_model(netrim_run, assets, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    out.mkdir()
    r = invoke("report", netrim_run[2], "--plot", out / "figs", "--checkpoint", assets.wider)
    assert_refused(r, out, assets.wider)


# --- refused ------------------------------------------------------------------------------


def _argv(assets, out, *extra, model=None, acts=None):
    return ["prune", model or assets.model, "--acts", acts or assets.acts, "-o", out / "b.pt",
            "--report", out / "b.json", "-q", *extra]


@pytest.mark.parametrize("extra,needles", [
    (["--method", "magnitude"], ["exactly one of --match"]),
    (["--method", "wanda", "--sparsity", "0.5", "--match", "{rep}"], ["exactly one of"]),
    # Net-Trim takes --sparsity since main's 61fcb3f (it searches eps): not with --epsilon
    (["--sparsity", "0.5", "--epsilon", "0.1"], ["without --epsilon"]),
    (["--method", "netrim", "--match", "{rep}"], ["baselines"]),
    (["--method", "magnitude", "--sparsity", "1.0"], ["[0, 1)"]),
    (["--method", "magnitude", "--sparsity", "-0.1"], ["[0, 1)"]),
    (["--method", "sparsegpt", "--sparsity", "0.5", "--epsilon", "0.1"], ["--epsilon"]),
    (["--method", "wanda", "--sparsity", "0.5", "--mode", "cascade"], ["--mode"]),
])
def test_conflicting_flags(extra, needles, netrim_run, assets, tmp_path):
    extra = [str(netrim_run[2]) if e == "{rep}" else e for e in extra]
    assert_refused(invoke(*_argv(assets, tmp_path, *extra)), tmp_path, *needles)


def test_match_of_another_model(netrim_run, assets, tmp_path):
    wrep = netrim_run[3]
    r = invoke(*_argv(assets, tmp_path, "--method", "magnitude", "--match", wrep))
    assert_refused(r, tmp_path, wrep, "another model")


def test_match_missing_or_not_a_report(assets, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    missing = inp / "nope.json"
    assert_refused(invoke(*_argv(assets, out, "--method", "wanda", "--match", missing)), out,
                   missing, "no such file")
    bad = inp / "bad.json"
    bad.write_text('{"format": "something else"}')
    assert_refused(invoke(*_argv(assets, out, "--method", "wanda", "--match", bad)), out, bad)


def test_baseline_dump_of_another_model(assets, tmp_path):
    r = invoke(*_argv(assets, tmp_path, "--method", "magnitude", "--sparsity", "0.5",
                      acts=assets.acts_wider))
    assert_refused(r, tmp_path, assets.acts_wider)
