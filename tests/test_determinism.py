"""The pruned checkpoint is byte-identical (sha256) across runs and worker counts, via the CLI,
for both modes; and the report's recorded sha256 is the file's."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import invoke


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
@pytest.mark.parametrize("model", ["model", "sd"])
def test_checkpoint_bytes_identical_across_runs_and_workers(env, mode, model):
    digests = {}
    for run, workers in (("a", 1), ("b", 1), ("c", 2), ("d", 2)):
        out, rep = env.out / f"pruned_{run}.pt", env.out / f"report_{run}.json"
        extra = ["--arch", "nettrim_test_archs:tiny"] if model == "sd" else []
        r = invoke("prune", getattr(env.a, model), "--acts", env.a.acts, "--mode", mode,
                   "--workers", workers, "-o", out, "--report", rep, "-q", *extra)
        assert r.exit_code == 0, r.stderr
        digests[run] = sha(out)
        assert json.loads(rep.read_text())["outputs"]["checkpoint"]["sha256"] == digests[run]
    assert len(set(digests.values())) == 1, digests
