"""The same command with the same inputs writes the same checkpoint, byte for byte, as the code
did before the redesign (issue 12): a few prunes of a fixed 6-16-12-3 MLP, each pinned by the
sha256 of the checkpoint it writes. The digests were recorded with the code of commit cd1f802,
before any module was moved; a change that alters a single written weight fails here.

Issue 13 made the whole-layer ``auto`` solver the default: the Net-Trim cases pin the OSQP
column path, so they name ``--solver osqp`` (the invocations were the defaults before).

Issue 16 made the support refit (``--refit``, nettrim_cli/solvers/sharpen.py) the default: the
Net-Trim cases pin the solvers' own answers, so they name ``--no-refit``; the case
``parallel-osqp-refit`` (recorded when the refit landed) pins the default on top of the
OSQP answer of ``parallel-osqp``. Its digest changed once on purpose, when the refit of
sharpen.py became the staged path's (solvers/admm/refit.py) instead of a copy of it: the same
zeros, the same constraint values to 1e-14; one rank-deficient support's weights moved (0.02)
along the flat of the same minimum."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import invoke

from tests.nt_test_archs import mlp

PINNED = {
    "parallel-osqp": "950384d103af12ef12bb45af8a4f593800b639563bada1d510a4423708e48181",
    "parallel-osqp-refit": "017a6be38a351b0bd5d6f60269e2f7cef2c06e4a181751bffb42f8fb3ee88df8",
    "cascade-osqp": "62cbbc64cf06ad8afceac10e6d6a38dee389ff674f7bae5250fb2976ef35e1f1",
    "cascade-admm": "3504d0931cfcf1908c04b91d53330c4f6bdd5dcb9e0deb9c8bc02e686404886a",
    "parallel-lambda": "68f597b1cfcc755f14744038ea3003cf7cded2f6d724aa3309292dad9c2df7de",
    "parallel-column-scope": "d299eb9abdb67168aa428bab5152bd19db732a23d94f33f33b8f8191fb62babf",
    "sd-cascade-osqp": "3b97ff3f9d9906463e778b699ba11cc3b5dc60aa81a85246412c055e18e870a5",
    "sparsegpt-0.5": "426349dcff4f8a6f257b5268e37502602aeb206c597b557c16efe9ded6a8c1b5",
    "wanda-match": "78619e0171507074d71c12f19d7f6f20e7fe21fa47fa9534ab56286c30522fbc",
    "magnitude-0.6": "6eaf48e6051c7c70ca45a12df0460020742257d589e01dd71e3455c817514a95",
}

CASES = {
    "parallel-osqp": ["--mode", "parallel", "--epsilon", "0.05", "--solver", "osqp",
                      "--no-refit"],
    "parallel-osqp-refit": ["--mode", "parallel", "--epsilon", "0.05", "--solver", "osqp"],
    "cascade-osqp": ["--mode", "cascade", "--epsilon", "0.05", "--gamma", "1.1",
                     "--solver", "osqp", "--no-refit"],
    "cascade-admm": ["--mode", "cascade", "--epsilon", "0.1", "--solver", "admm", "--no-refit"],
    "parallel-lambda": ["--mode", "parallel", "--lambda", "0.02", "--solver", "osqp",
                        "--no-refit"],
    "parallel-column-scope": ["--mode", "parallel", "--epsilon", "0.1", "--scope", "column",
                              "--solver", "osqp", "--no-refit"],
    "sd-cascade-osqp": ["--mode", "cascade", "--epsilon", "0.08", "--solver", "osqp",
                        "--no-refit"],
    "sparsegpt-0.5": ["--method", "sparsegpt", "--sparsity", "0.5"],
    "wanda-match": ["--method", "wanda", "--match", "MATCH"],
    "magnitude-0.6": ["--method", "magnitude", "--sparsity", "0.6"],
}


@pytest.fixture(scope="module")
def pin_assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("pin")
    torch.manual_seed(7)
    model = mlp()
    torch.save(model, d / "model.pt")
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, d / "sd.pt")
    x = np.random.default_rng(7).standard_normal((48, 6)).astype(np.float32)
    np.save(d / "calib.npy", x)
    r = invoke("dump", d / "model.pt", "--inputs", d / "calib.npy", "-o", d / "acts.h5")
    assert r.exit_code == 0, r.stderr
    r = invoke("prune", d / "model.pt", "--acts", d / "acts.h5", "--mode", "parallel",
               "--epsilon", "0.1", "--solver", "osqp", "--no-refit", "-o", d / "match.pt",
               "--report",
               d / "match.json", "-q")
    assert r.exit_code == 0, r.stderr
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_prune_writes_the_pinned_checkpoint(pin_assets, tmp_path, case):
    d = pin_assets
    args = [str(d / "match.json") if a == "MATCH" else a for a in CASES[case]]
    model = d / ("sd.pt" if case.startswith("sd-") else "model.pt")
    extra = ["--arch", "nt_test_archs:mlp"] if case.startswith("sd-") else []
    out = tmp_path / "pruned.pt"
    r = invoke("prune", model, "--acts", d / "acts.h5", *args, *extra, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == PINNED[case]
