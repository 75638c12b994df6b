"""Every OSQP status, end to end through `nettrim prune` on the tiny model.

OSQP's solve is wrapped so that one chosen column (layer "3", column 1) gets a fake result
with the status under test (info.status text and info.status_val code, x from the real solve
for the "finished but not converged" statuses, NaN otherwise, as OSQP gives). What must
happen: a retry where the status allows one; then the column keeps its original weights, is
listed in the report's failed_columns with its index and status, is counted in the layer's
status_counts, a warning line goes to stderr, and `--strict` exits 1 writing nothing.
"interrupted" (OSQP caught Ctrl-C) stops the run with exit 130.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import invoke

import nettrim_cli.solvers.osqp as osqp_mod

REAL_OSQP = osqp_mod.osqp.OSQP
TEXT = {1: "solved", 2: "solved inaccurate", 3: "primal infeasible",
        4: "primal infeasible inaccurate", 5: "dual infeasible", 6: "dual infeasible inaccurate",
        7: "maximum iterations reached", 8: "run time limit reached", 9: "problem non convex",
        10: "interrupted", 11: "unsolved"}
KEEPS_X = {2, 7, 8}  # OSQP stopped early but has an iterate
FAILING = [c for c in TEXT if c not in (1, 10)]
TARGET = ("3", 1)


class Plan:
    code: int = 1
    text: str | None = None
    first_only: bool = False
    calls: int = 0


def fake_result(res, code: int, text: str):
    n = len(res.x)
    info = SimpleNamespace(**vars(res.info))
    info.status, info.status_val, info.status_polish = text, code, 0
    x = res.x if code in KEEPS_X else np.full(n, np.nan)
    y = res.y if code in KEEPS_X else np.full(len(res.y), np.nan)
    return SimpleNamespace(x=x, y=y, prim_inf_cert=None, dual_inf_cert=None, info=info)


@pytest.fixture
def fault(monkeypatch):
    """Set plan.code (and plan.first_only) to make TARGET's solves report that status."""
    plan = Plan()
    owner = {"now": None}
    init, setup = osqp_mod.ColumnQP.__init__, osqp_mod.ColumnQP._setup

    def patched_init(self, program, m, *a, **kw):
        self._fault_owner = (program.name, m)
        init(self, program, m, *a, **kw)

    def patched_setup(self, x, y):
        owner["now"] = getattr(self, "_fault_owner", None)
        setup(self, x, y)

    class FaultyOSQP:
        def __init__(self, *a, **kw):
            self._real = REAL_OSQP(*a, **kw)
            self._owner = owner["now"]

        def __getattr__(self, name):
            return getattr(self._real, name)

        def solve(self, *a, **kw):
            res = self._real.solve(*a, **kw)
            if self._owner != TARGET or plan.code == 1:
                return res
            plan.calls += 1
            if plan.first_only and plan.calls > 1:
                return res
            return fake_result(res, plan.code, plan.text or TEXT[plan.code])

    monkeypatch.setattr(osqp_mod.ColumnQP, "__init__", patched_init)
    monkeypatch.setattr(osqp_mod.ColumnQP, "_setup", patched_setup)
    monkeypatch.setattr(osqp_mod.osqp, "OSQP", FaultyOSQP)
    return plan


def prune(env, *extra, mode="parallel"):
    out, rep = env.out / "pruned.pt", env.out / "report.json"
    r = invoke("prune", env.a.model, "--acts", env.a.acts, "-o", out, "--report", rep, "-q",
               "--workers", "1", "--mode", mode, "--solver", "osqp", *extra)
    return r, out, rep


def layer(report: dict, name: str) -> dict:
    return next(la for la in report["layers"] if la["name"] == name)


def original_row(env, name: str, m: int):
    model = torch.load(env.a.model, weights_only=False)
    mod = model.get_submodule(name)
    return mod.weight[m].detach().numpy(), float(mod.bias[m].detach())


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
@pytest.mark.parametrize("code", FAILING, ids=lambda c: TEXT[c].replace(" ", "_"))
def test_failed_column_keeps_original_weights_and_is_reported(env, fault, code, mode):
    fault.code = code
    r, out, rep = prune(env, mode=mode)
    assert r.exit_code == 0, r.stderr
    name = osqp_mod.STATUS_NAMES[code]
    report = json.loads(rep.read_text())
    solver = layer(report, TARGET[0])["solver"]
    assert solver["failed_columns"] == [{"column": TARGET[1], "status": name,
                                         "action": "kept original weights"}]
    assert solver["status_counts"][name] == 1
    assert solver["status_counts"]["solved"] == 2
    if code != 9:  # non convex: no retry (the same matrix fails the same way)
        assert solver["retries"] >= 1
    assert layer(report, "1")["solver"]["failed_columns"] == []
    pruned = torch.load(out, weights_only=False).get_submodule(TARGET[0])
    w0, b0 = original_row(env, *TARGET)
    assert np.array_equal(pruned.weight[TARGET[1]].detach().numpy(), w0)
    assert float(pruned.bias[TARGET[1]].detach()) == b0
    assert "nettrim: warning: 1 column(s) kept their original weights" in r.stderr
    assert fault.calls >= 1


@pytest.mark.parametrize("code", FAILING, ids=lambda c: TEXT[c].replace(" ", "_"))
def test_strict_exits_1_and_writes_nothing(env, fault, code):
    fault.code = code
    r, out, rep = prune(env, "--strict")
    assert r.exit_code == 1, r.stderr
    lines = r.stderr.splitlines()
    assert f"nettrim: layer 3 column 1: {osqp_mod.STATUS_NAMES[code]}" in lines
    assert lines[-1] == "nettrim: error: 1 column(s) not solved; --strict: nothing written"
    assert list(env.out.iterdir()) == []


@pytest.mark.parametrize("code", [c for c in FAILING if c != 9],
                         ids=lambda c: TEXT[c].replace(" ", "_"))
def test_a_retry_that_succeeds_leaves_no_failure(env, fault, code):
    fault.code, fault.first_only = code, True
    r, out, rep = prune(env, "--strict")
    assert r.exit_code == 0, r.stderr
    solver = layer(json.loads(rep.read_text()), TARGET[0])["solver"]
    assert solver["failed_columns"] == [] and solver["retries"] >= 1
    assert fault.calls >= 2


def test_solved_is_untouched(env, fault):
    fault.code = 1
    r, out, rep = prune(env, "--strict")
    assert r.exit_code == 0, r.stderr
    report = json.loads(rep.read_text())
    assert all(la["solver"]["failed_columns"] == [] for la in report["layers"])
    assert "warning" not in r.stderr


def test_unknown_status_is_a_failure(env, fault):
    """A status this version of nettrim does not know (a future OSQP) is not success."""
    fault.code, fault.text = 42, "some new status"
    r, out, rep = prune(env)
    assert r.exit_code == 0, r.stderr
    solver = layer(json.loads(rep.read_text()), TARGET[0])["solver"]
    assert solver["failed_columns"][0]["status"] == "some_new_status"


def test_interrupted_stops_with_130(env, fault):
    fault.code = 10
    r, out, rep = prune(env)
    assert r.exit_code == 130, r.stderr
    assert "interrupted" in r.stderr
    assert not out.exists() and not rep.exists()  # (a resume work directory may stay)


def _sparse_half(WT, tight):
    """ADMM's answer on its largest fifth only, halved: a support that misses eps."""
    cut = np.quantile(np.abs(WT), 0.8)
    return 0.5 * np.where(np.abs(WT) >= cut, WT, 0.0), tight


def _admm_unrepaired(monkeypatch, answer=lambda WT, tight: (0.5 * WT, tight), exact=False):
    """ADMM's answer halved (by default), and neither the support refit (its CG steps, and
    unless ``exact`` the exact refit too) nor the polish's first fit can pull it onto eps."""
    from nettrim_cli.solvers.admm import layer as admm_layer
    from nettrim_cli.solvers.admm.iterate import _ADMM
    from nettrim_cli.solvers.admm.polish import _Polish

    result = _ADMM.result
    monkeypatch.setattr(_ADMM, "result",
                        lambda self: answer(*result(self)))
    monkeypatch.setattr(admm_layer, "_refit_mix", lambda *a, **k: None)
    if not exact:
        monkeypatch.setattr(admm_layer, "refit_support", lambda Xa, Y, V, act, WT, *a, **k: (
            WT, np.full(WT.shape[1], np.inf)))
    monkeypatch.setattr(_Polish, "run",
                        lambda self, *a, **k: SimpleNamespace(first=None, best=None, log=[]))
    return admm_layer


def _failed(report):
    return [f for la in report["layers"] if la.get("solver")
            for f in la["solver"]["failed_columns"]]


def test_admm_repair_takes_the_exact_refit_when_its_cg_steps_miss(env, monkeypatch):
    """The repair's few CG steps miss eps and the exact refit on ADMM's own support meets it
    (on NN3-60K after the default fine-tune a 300 x 784 layer at eps 0.0043 had its support
    grown to 74,565 weights where the exact refit of ADMM's 29,700 met eps): ADMM's answer
    refitted, no column failed, no warning, eps met, zeros kept."""
    _admm_unrepaired(monkeypatch, exact=True)
    r, out, rep = prune(env, "--solver", "admm", "--epsilon", "0.05")
    assert r.exit_code == 0, r.stderr
    report = json.loads(rep.read_text())
    assert _failed(report) == []
    layers = [la for la in report["layers"] if la.get("solver")]
    assert layers and any(la["nonzeros_after"] < la["params"] for la in layers)
    for la in layers:
        assert la["solver"]["epsilon_reached"]
        assert la["discrepancy"] <= la["epsilon"] * (1 + 1e-9)
    assert "warning" not in r.stderr


@pytest.mark.parametrize("gradient", [True, False])
def test_admm_unrepaired_grows_its_support_until_the_refit_meets_eps(env, monkeypatch,
                                                                     gradient):
    """Before mixing with the original weights (which fills every zero in), ADMM's support is
    grown until its refit meets eps: where the misfit falls fastest, or (when that growth
    finds nothing) by the largest original weights. Eps met, zeros kept where the growth
    stopped, the report's history and one warning line say so."""
    _admm_unrepaired(monkeypatch, _sparse_half)
    if not gradient:
        from nettrim_cli.solvers.admm import grow
        monkeypatch.setattr(grow, "grow_by_gradient", lambda *a, **k: None)
    r, out, rep = prune(env, "--solver", "admm", "--epsilon", "0.05")
    assert r.exit_code == 0, r.stderr
    report = json.loads(rep.read_text())
    grown = _failed(report)
    assert grown and {f["status"] for f in grown} == {"grown_support"}
    how = "where the misfit fell fastest" if gradient else "by original weights"
    assert all(how in f["action"] for f in grown), [f["action"] for f in grown]
    layers = [la for la in report["layers"] if la.get("solver")]
    steps = [h for la in layers for h in la["solver"]["history"]
             if h["stage"] == "grow support" and h["ok"]]
    assert steps and {h["method"] for h in steps} == {"gradient" if gradient
                                                       else "original weights"}
    assert all(la["solver"]["epsilon_reached"] for la in layers)
    assert any(la["nonzeros_after"] < la["params"] for la in layers)  # not the dense layer
    for la in layers:
        assert la["discrepancy"] <= la["epsilon"] * (1 + 1e-9)
    said = "where the misfit fell fastest" if gradient else "by the original weights of"
    assert f"its support was grown {said}" in r.stderr
    assert "mixed" not in r.stderr and "kept their original weights" not in r.stderr


def test_admm_mixed_with_original_is_reported_as_such(env, monkeypatch):
    """When no grown support meets eps either, the columns are mixed with their original
    weights (feasible, but the zeros fill in): the report lists them as mixed_with_original
    and the warning says mixed, not kept."""
    admm_layer = _admm_unrepaired(monkeypatch)
    monkeypatch.setattr(admm_layer._LayerSolve, "grow_support", lambda self: None)
    r, out, rep = prune(env, "--solver", "admm", "--epsilon", "0.05")
    assert r.exit_code == 0, r.stderr
    report = json.loads(rep.read_text())
    mixed = _failed(report)
    assert mixed and {f["status"] for f in mixed} == {"mixed_with_original"}
    assert all(la["solver"]["epsilon_reached"] for la in report["layers"] if la.get("solver"))
    assert f"nettrim: warning: {len(mixed)} column(s) were mixed with their original" in r.stderr
    assert "kept their original weights" not in r.stderr
