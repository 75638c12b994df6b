"""`nettrim prune --workdir/--resume`: kill real runs (SIGKILL, SIGINT) at random points and
check that resuming writes the checkpoint of an uninterrupted run, bit for bit.

The kill points are drawn from a seeded generator over the uninterrupted run's wall time, so
they land in every layer and between column records. NETTRIM_KILL_POINTS (default 4 per mode)
sets how many; NETTRIM_KILL_LOG=FILE appends every kill point and its result as JSON lines
(docs/reliability.md quotes a longer campaign made that way).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

KILLS = int(os.environ.get("NETTRIM_KILL_POINTS", "4"))
LOG = os.environ.get("NETTRIM_KILL_LOG")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _default_sigint() -> None:
    # a shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT:
    # without this, a suite run in the background would send Ctrl-C to deaf processes
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def nettrim(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nettrim_cli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 24-40-40-4 ReLU network on 100 samples, with its dump and a config that makes every
    layer rebuild its column problems (so that columns are recorded one by one)."""
    d = tmp_path_factory.mktemp("resume")
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40),
                              torch.nn.ReLU(), torch.nn.Linear(40, 4))
    torch.save(net, d / "model.pt")
    x = np.random.default_rng(3).standard_normal((100, 24)).astype(np.float32)
    np.save(d / "calib.npy", x)
    (d / "rebuild.toml").write_text("memory_budget_mb = 0\n")
    rc, err = finish(nettrim("dump", "model.pt", "--inputs", "calib.npy", "-o", "acts.h5",
                             cwd=d))
    assert rc == 0, err
    return d


def base_args(mode: str, out: str) -> list[str]:
    return ["prune", "model.pt", "--acts", "acts.h5", "--config", "rebuild.toml", "--mode", mode,
            "-o", out, "--report", out + ".json", "-q", "--workers", "1", "--solver", "osqp"]


_REFS: dict[str, tuple[str, float]] = {}


def reference(case: Path, mode: str) -> tuple[str, float]:
    """The uninterrupted run's checkpoint hash and wall time (made once per mode)."""
    if mode not in _REFS:
        _REFS[mode] = _run_reference(case, mode)
    return _REFS[mode]


def _run_reference(case: Path, mode: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    rc, err = finish(nettrim(*base_args(mode, f"ref-{mode}.pt"), cwd=case))
    assert rc == 0, err
    assert not (case / f"ref-{mode}.pt.nettrim-work").exists()  # removed when finished
    return sha(case / f"ref-{mode}.pt"), time.perf_counter() - t0


@pytest.mark.parametrize("mode", ["cascade", "parallel"])
def test_killed_runs_resume_to_the_identical_checkpoint(case, mode):
    want, wall = reference(case, mode)
    rng = np.random.default_rng({"cascade": 11, "parallel": 12}[mode])
    resumed_with_records = 0
    for k in range(KILLS):
        out = f"kill-{mode}-{k}.pt"
        work = case / f"{out}.nettrim-work"
        sig = signal.SIGKILL if k % 2 == 0 else signal.SIGINT
        # start-up (imports) takes about a second of the wall time; kill after it
        delay = float(rng.uniform(0.15, 0.95) * wall)
        proc = nettrim(*base_args(mode, out), cwd=case)
        time.sleep(delay)
        proc.send_signal(sig)
        rc, err = finish(proc)
        interrupted = rc != 0
        if sig == signal.SIGINT and interrupted:
            # 130 from our handler, or death by SIGINT (a second interrupt raised while the
            # first unwinds, e.g. re-raised by OSQP's own handler): $? is 130 in a shell either way
            assert rc in (130, -signal.SIGINT), err
            if work.is_dir():  # interrupted after the work folder was made: say how to go on
                assert "--resume" in err, err
        if interrupted and (case / out).exists():
            # the signal landed after the outputs were renamed into place (while the work
            # folder was being removed or the table printed): they must then be complete
            assert sha(case / out) == want, f"kill {k} at {delay:.2f}s: checkpoint differs"
            assert (case / (out + ".json")).is_file()
            shutil.rmtree(work, ignore_errors=True)
            continue
        layers = cols = 0
        resumes = 0
        while not (case / out).exists():
            if not work.is_dir():
                # killed before the work folder was made (still importing): start over
                rc, err = finish(nettrim(*base_args(mode, out), cwd=case))
                assert rc == 0, err
                continue
            resumes += 1
            proc = nettrim(*base_args(mode, out), "--resume", cwd=case)
            rc, err = finish(proc)
            assert rc == 0, err
            found = re.search(r"(\d+) layer\(s\) finished, (\d+) column", err)
            assert found, err
            layers, cols = int(found[1]), int(found[2])
        resumed_with_records += int(layers + cols > 0)
        got = sha(case / out)
        assert got == want, f"kill {k} at {delay:.2f}s ({sig.name}): checkpoint differs"
        assert not work.exists()
        if LOG:
            with open(LOG, "a") as fh:
                fh.write(json.dumps({
                    "mode": mode, "signal": sig.name, "at_s": round(delay, 3),
                    "of_s": round(wall, 3), "interrupted": interrupted,
                    "layers_recorded": layers, "column_records": cols,
                    "identical": got == want}) + "\n")
    if KILLS >= 3:
        assert resumed_with_records >= 1, "no kill point left any record to resume from"


def test_resume_is_refused_when_settings_or_inputs_differ(case):
    out = "refuse.pt"
    work = case / f"{out}.nettrim-work"
    proc = nettrim(*base_args("cascade", out), cwd=case)
    deadline = time.time() + 60
    while not list(work.glob("layer-*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert work.is_dir() and not (case / out).exists()
    # the same command without --resume does not silently discard the records
    rc, err = finish(nettrim(*base_args("cascade", out), cwd=case))
    assert rc == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    # other settings
    rc, err = finish(nettrim(*base_args("cascade", out), "--resume", "--epsilon", "0.2",
                             cwd=case))
    assert rc == 2 and "cannot resume" in err and "epsilon" in err, err
    # another dump (same model, other samples): its sha256 differs
    x = np.random.default_rng(4).standard_normal((100, 24)).astype(np.float32)
    np.save(case / "calib2.npy", x)
    rc, err = finish(nettrim("dump", "model.pt", "--inputs", "calib2.npy", "-o", "acts2.h5",
                             cwd=case))
    assert rc == 0, err
    args = base_args("cascade", out)
    args[args.index("acts.h5")] = "acts2.h5"
    rc, err = finish(nettrim(*args, "--resume", cwd=case))
    assert rc == 2 and "cannot resume" in err and "acts_sha256" in err, err
    assert not (case / out).exists()
    # more workers do not change results, so they may differ on resume
    args = base_args("cascade", out)
    args[args.index("--workers") + 1] = "2"
    rc, err = finish(nettrim(*args, "--resume", cwd=case))
    assert rc == 0, err
    assert sha(case / out) == reference(case, "cascade")[0]


def test_resume_without_records_is_an_error(case):
    rc, err = finish(nettrim(*base_args("parallel", "none.pt"), "--resume", cwd=case))
    assert rc == 2 and "no earlier run" in err
    assert not (case / "none.pt").exists()
