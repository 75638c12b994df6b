"""Shared fixtures: tiny checkpoints, calibration data and activation dumps, and a helper to
run the CLI in-process and check that a bad input was refused cleanly."""

from __future__ import annotations

import importlib
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nettrim_cli.cli import main

TESTS_DIR = Path(__file__).resolve().parent
N_SAMPLES = 32


def _import_archs():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(TESTS_DIR))
        return importlib.import_module("nettrim_test_archs")


def invoke(*args: object) -> SimpleNamespace:
    """Run ``nettrim ARGS`` in-process; returns exit code, stdout, stderr, exception and the
    warnings raised while it ran (each would be one more line on a real stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [str(a) for a in args])
    return SimpleNamespace(exit_code=result.exit_code, stdout=result.stdout,
                           stderr=result.stderr, exception=result.exception,
                           warnings=[str(w.message) for w in caught])


def dumped(d: Path, model, calib) -> Path:
    """``model`` saved as d/model.pt, ``calib`` as d/calib.npy and dumped to d/acts.h5 with
    `nettrim dump`; returns ``d``."""
    torch.save(model, d / "model.pt")
    np.save(d / "calib.npy", calib)
    r = invoke("dump", d / "model.pt", "--inputs", d / "calib.npy", "-o", d / "acts.h5")
    assert r.exit_code == 0, r.stderr
    return d


def kill_netrim_prune_at(monkeypatch, n: int):
    """Make the n-th call of Net-Trim's prune (one per --sparsity trial) raise
    KeyboardInterrupt, as a user's Ctrl-C would, so a test can resume the search. Returns a
    function that puts the real prune back."""
    from nettrim_cli.methods import netrim

    real, calls = netrim.prune, []

    def killed(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(netrim, "prune", killed)
    return lambda: monkeypatch.setattr(netrim, "prune", real)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one torch and BLAS thread for the module (more only add contention on a
    busy 2-core machine); the previous counts come back after it."""
    from nettrim_cli.execution.threads import fixed_threads

    with fixed_threads(1):
        yield


@pytest.fixture(scope="session")
def archs():
    return _import_archs()


@pytest.fixture(autouse=True)
def _archs_importable(monkeypatch):
    """``--arch nettrim_test_archs:...`` must resolve inside the CLI."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))


def _save_module(factory, seed: int, path: Path) -> None:
    torch.manual_seed(seed)
    torch.save(factory(), path)


@pytest.fixture(scope="session")
def assets(tmp_path_factory, archs) -> SimpleNamespace:
    """Good input files, made once and never modified (tests copy what they corrupt)."""
    d = tmp_path_factory.mktemp("assets")
    a = SimpleNamespace(dir=d)
    a.model = d / "model.pt"
    _save_module(archs.tiny, 0, a.model)
    a.sd = d / "sd.pt"
    torch.save(torch.load(a.model, weights_only=False).state_dict(), a.sd)
    a.other_weights = d / "other_weights.pt"
    _save_module(archs.tiny, 1, a.other_weights)
    a.wider = d / "wider.pt"
    _save_module(archs.wider, 2, a.wider)
    a.five = d / "five.pt"
    _save_module(archs.five_inputs, 3, a.five)
    rng = np.random.default_rng(0)
    a.calib = d / "calib.npy"
    np.save(a.calib, rng.standard_normal((N_SAMPLES, archs.N_IN)).astype(np.float32))
    a.calib5 = d / "calib5.npy"
    np.save(a.calib5, rng.standard_normal((N_SAMPLES, archs.N_IN + 1)).astype(np.float32))
    a.labels = d / "labels.npy"
    np.save(a.labels, rng.integers(0, archs.N_OUT, N_SAMPLES))
    a.calib_big = d / "calib_big.npy"  # more rows than DumpReader.check_against reads
    np.save(a.calib_big, rng.standard_normal((300, archs.N_IN)).astype(np.float32))
    for name, model, calib in (("acts", a.model, a.calib),
                               ("acts_other_weights", a.other_weights, a.calib),
                               ("acts_wider", a.wider, a.calib),
                               ("acts_five", a.five, a.calib5),
                               ("acts_big", a.model, a.calib_big)):
        out = d / f"{name}.h5"
        labels = ["--labels", a.labels] if calib != a.calib_big else []
        r = invoke("dump", model, "--inputs", calib, *labels, "-o", out)
        assert r.exit_code == 0, r.stderr
        setattr(a, name, out)
    a.config = d / "good.toml"
    a.config.write_text('mode = "cascade"\nepsilon = 0.05\ngamma = 1.1\n')
    return a


class Env(SimpleNamespace):
    """Per-test directories: ``inp`` for inputs a test makes, ``out`` (empty) for outputs."""

    def path(self, name: str) -> Path:
        return self.inp / name

    def write(self, name: str, data: bytes | str) -> Path:
        p = self.path(name)
        if isinstance(data, str):
            p.write_text(data)
        else:
            p.write_bytes(data)
        return p

    def npy(self, name: str, arr, allow_pickle: bool = False) -> Path:
        p = self.path(name)
        with open(p, "wb") as fh:
            np.save(fh, arr, allow_pickle=allow_pickle)
        return p

    def copy(self, src: Path, name: str | None = None) -> Path:
        dst = self.path(name or Path(src).name)
        shutil.copyfile(src, dst)
        return dst

    def save(self, name: str, obj, **kw) -> Path:
        p = self.path(name)
        torch.save(obj, p, **kw)
        return p


@pytest.fixture
def env(tmp_path, assets) -> Env:
    inp = tmp_path / "in"
    out = tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    return Env(a=assets, inp=inp, out=out)


def assert_refused(r: SimpleNamespace, out_dir: Path, *needles: object,
                   keep: dict[str, bytes | None] | None = None) -> None:
    """Exit 2, exactly one ``nettrim: error:`` line naming every needle, no traceback, no
    warnings, nothing on stdout, and nothing in ``out_dir`` but the entries in ``keep``, which
    must hold the same bytes as before (``None``: not a file, only kept)."""
    assert r.exit_code == 2, f"exit {r.exit_code}: {r.stderr!r} {r.exception!r}"
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("nettrim: error: "), line
    assert "Traceback" not in r.stderr
    assert "internal error" not in line, line
    for n in needles:
        assert str(n) in line, f"{n!r} not in {line!r}"
    assert r.stdout == "", r.stdout
    assert r.warnings == [], r.warnings
    keep = keep or {}
    left = sorted(p.name for p in out_dir.iterdir() if p.name not in keep)
    assert left == [], f"left in the output directory: {left}"
    for name, data in keep.items():
        assert (out_dir / name).exists(), f"{name} was removed"
        if data is not None:
            assert (out_dir / name).read_bytes() == data, f"{name} was changed"
