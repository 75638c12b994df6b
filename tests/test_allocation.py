"""`nettrim prune --sparsity S --allocation discrepancy`: per-layer eps from the layers'
sparsity-discrepancy curves; lands on the target in both modes, is recorded, resumes, and a bad
value is refused with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import invoke, kill_netrim_prune_at
from torch import nn

from nettrim_cli.config import build_settings
from nettrim_cli.methods.netrim.allocation import Point, allocate


def _pruned(report: dict) -> float:
    layers = [la for la in report["layers"] if la.get("params")]
    return 1 - sum(la["nonzeros_after"] for la in layers) / sum(la["params"] for la in layers)


def test_allocate_meets_the_budget_and_prunes_the_cheap_layer_harder():
    # a big layer whose error barely reaches the output, a small one whose error does
    eps = np.geomspace(0.01, 0.9, 12)
    big = [Point(float(e), int(10_000 * e ** -0.7 / 0.01 ** -0.7), float(e)) for e in eps]
    small = [Point(float(e), int(500 * e ** -0.7 / 0.01 ** -0.7), float(20 * e)) for e in eps]
    chosen = allocate([big, small], budget=2_000)
    kept = [np.interp(np.log(e), np.log(eps), [p.kept for p in c])
            for e, c in zip(chosen, [big, small], strict=True)]
    assert abs(sum(kept) - 2_000) < 0.05 * 2_000
    assert chosen[0] > chosen[1]  # the costly layer is kept denser
    # with equal curves the two layers get the same eps (the uniform answer)
    same = allocate([big, list(big)], budget=4_000)
    assert same[0] == pytest.approx(same[1])


def test_allocation_preset_key_and_flag():
    assert build_settings({"allocation": "discrepancy"}, {})[0].allocation == "discrepancy"
    assert build_settings({}, {})[0].allocation == "discrepancy"  # the default
    assert build_settings({"allocation": "discrepancy"},
                          {"allocation": "uniform"})[0].allocation == "uniform"


@pytest.fixture(scope="module")
def small(tmp_path_factory, one_thread):
    d = tmp_path_factory.mktemp("allocation")
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 12), nn.ReLU(),
                          nn.Linear(12, 3))
    torch.save(model, d / "model.pt")
    np.save(d / "calib.npy", np.random.default_rng(0).standard_normal((80, 10)).astype(
        np.float32))
    assert invoke("dump", d / "model.pt", "--inputs", d / "calib.npy", "-o",
                  d / "acts.h5").exit_code == 0
    return d


def _args(d, mode):
    return ["prune", d / "model.pt", "--acts", d / "acts.h5", "--mode", mode, "--sparsity",
            "0.6", "--allocation", "discrepancy", "-q"]


@pytest.fixture(scope="module")
def parallel_run(small):
    """One uninterrupted parallel run (the resume test compares with it)."""
    r = invoke(*_args(small, "parallel"), "-o", small / "whole.pt", "--report",
               small / "whole.json")
    assert r.exit_code == 0, r.stderr
    return small / "whole.pt", small / "whole.json"


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
def test_discrepancy_allocation_lands_and_is_recorded(small, parallel_run, tmp_path, mode):
    if mode == "parallel":
        path = parallel_run[1]
    else:
        path = tmp_path / "r.json"  # without --allocation: the default is the allocation
        args = [a for a in _args(small, mode) if a not in ("--allocation", "discrepancy")]
        r = invoke(*args, "-o", tmp_path / "p.pt", "--report", path)
        assert r.exit_code == 0, r.stderr
    report = json.loads(path.read_text())
    search = report["settings"]["sparsity_search"]
    assert abs(_pruned(report) - 0.6) <= 0.005
    assert search["allocation"] == "discrepancy"
    assert report["settings"]["epsilon"] == search["epsilon"]
    assert report["network"]["discrepancy"] == pytest.approx(search["discrepancy"])
    assert set(search["curves"]) == {"0", "2", "4"} and search["curve_trials"]
    curve = [t["pruned"] for t in search["curve_trials"]]
    assert min(curve) <= 0.6 <= max(curve)  # the curves reach the target
    if search["epsilons"] is not None:  # the allocation's per-layer eps were used
        assert len(set(search["epsilons"].values())) > 1
        for la in report["layers"]:
            rel = search["epsilons"][la["name"]] * la["output_norm"]
            # eps_l = e_l ||Y_l|| (cascade: or eq. 7's, when larger), and eps is met
            assert la["epsilon"] == pytest.approx(rel) or (mode == "cascade"
                                                           and la["epsilon"] > rel)
            assert la["discrepancy"] <= la["epsilon"] * (1 + 1e-6)
    if mode == "parallel" and abs(search["uniform"]["pruned"] - 0.6) <= 0.005:
        assert search["discrepancy"] <= search["uniform"]["discrepancy"]


def test_discrepancy_allocation_resumes_to_the_same_checkpoint(small, parallel_run, tmp_path,
                                                              monkeypatch):
    args = _args(small, "parallel")
    restore = kill_netrim_prune_at(monkeypatch, 3)
    work = tmp_path / "work"
    r = invoke(*args, "-o", tmp_path / "resumed.pt", "--workdir", work)
    assert r.exit_code == 130
    assert {"curve-00", "curve-01"} <= {p.name for p in work.iterdir()}
    restore()
    r = invoke(*args, "-o", tmp_path / "resumed.pt", "--workdir", work, "--resume")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "resumed.pt").read_bytes() == parallel_run[0].read_bytes()
    assert not work.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--sparsity", "0.6", "--allocation", "joint"], "--allocation joint"),
    (["--sparsity", "0.6", "--allocation", "best"], "--allocation best"),
    (["--allocation", "discrepancy"], "--allocation is for --sparsity"),
])
def test_bad_allocation_is_refused_with_one_line(small, tmp_path, extra, needle):
    r = invoke("prune", small / "model.pt", "--acts", small / "acts.h5", *extra,
               "-o", tmp_path / "p.pt")
    assert r.exit_code == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "p.pt").exists()


def test_bad_allocation_in_a_preset_is_refused(small, tmp_path):
    (tmp_path / "p.toml").write_text('allocation = "greedy"\n')
    r = invoke("prune", small / "model.pt", "--acts", small / "acts.h5", "--config",
               tmp_path / "p.toml", "--sparsity", "0.6", "-o", tmp_path / "p.pt")
    assert r.exit_code == 2 and "allocation must be" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_parallel_allocation_equal_to_the_uniform_trial_reuses_its_prune(small, tmp_path,
                                                                         monkeypatch):
    """When every unit's allocated eps is the chosen curve trial's eps (the curves too short to
    tell the layers apart), the allocation search's first trial is that prune, not a rerun."""
    import nettrim_cli.methods.netrim as netrim_mod
    from nettrim_cli.methods.netrim import allocation

    calls = []
    real = netrim_mod.prune
    monkeypatch.setattr(netrim_mod, "prune", lambda *a, **k: calls.append(1) or real(*a, **k))
    def uniform(curves, budget):  # every unit at the eps of the curve trial nearest the target
        kept = [sum(c[i].kept for c in curves) for i in range(len(curves[0]))]
        nearest = min(range(len(kept)), key=lambda i: abs(kept[i] - budget))
        return [curves[0][nearest].epsilon] * len(curves)

    monkeypatch.setattr(allocation, "allocate", uniform)
    r = invoke(*_args(small, "parallel"), "-o", tmp_path / "p.pt", "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    search = json.loads((tmp_path / "r.json").read_text())["settings"]["sparsity_search"]
    curve, alloc = search["curve_trials"], search["trials"]
    first = alloc[0]
    reused = [t for t in curve if t["epsilon"] == pytest.approx(first["epsilon"], rel=1e-9)]
    assert reused and first["pruned"] == reused[0]["pruned"]
    assert len(calls) == len(curve) + len(alloc) - 1  # one prune saved


def test_curves_that_cannot_reach_the_target_are_said_in_one_line(small, tmp_path, monkeypatch):
    """The allocation from curves on one side of the target gives every layer one eps: said."""
    from nettrim_cli.methods.netrim import target

    real = target.prune_to_sparsity

    def one_curve_trial(*a, bracket=False, **k):
        return real(*a, **({**k, "max_trials": 1} if bracket else k), bracket=bracket)

    monkeypatch.setattr(target, "prune_to_sparsity", one_curve_trial)
    r = invoke(*[a for a in _args(small, "parallel") if a != "-q"], "-o", tmp_path / "p.pt",
               "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    curve = json.loads((tmp_path / "r.json").read_text())["settings"]["sparsity_search"][
        "curve_trials"]
    assert len(curve) == 1
    lines = [ln for ln in r.stderr.splitlines() if "not reaching 60.00%" in ln]
    assert len(lines) == 1 and "one eps for all" in lines[0], r.stderr


def test_ctrl_c_inside_a_records_write_is_an_interrupt(small, tmp_path, monkeypatch):
    """Ctrl-C landing inside np.savez comes out of zipfile as a ValueError (its close, with
    the KeyboardInterrupt as context): still exit 130 with the --resume hint, no output."""
    from nettrim_cli import workdir

    real, calls = workdir._npz_bytes, []

    def interrupted_write(arrays):
        calls.append(1)
        if len(calls) == 2:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ValueError("Can't close the ZIP file while there is an open writing "
                                 "handle on it.") from None
        return real(arrays)

    monkeypatch.setattr(workdir, "_npz_bytes", interrupted_write)
    r = invoke(*_args(small, "parallel"), "-o", tmp_path / "p.pt", "--workdir", tmp_path / "w")
    assert r.exit_code == 130, r.stderr
    assert "--resume" in r.stderr and "internal error" not in r.stderr
    assert not (tmp_path / "p.pt").exists()
