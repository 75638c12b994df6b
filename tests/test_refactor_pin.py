"""The same command with the same inputs writes the same weights as the code did before the
redesign (issue 12): a few prunes of a fixed 6-16-12-3 MLP. Until 2026-11-30 each was pinned by
the sha256 of the checkpoint it writes, recorded with the code of commit cd1f802, before any
module was moved; a change that alters a single written weight failed there (here: one that
moves a zero or a weight by more than 1e-5 of its tensor's largest entry; see the last
paragraph).

Issue 13 made the whole-layer ``auto`` solver the default: the Net-Trim cases pin the OSQP
column path, so they name ``--solver osqp`` (the invocations were the defaults before).

Issue 16 made the support refit (``--refit``, nettrim_cli/solvers/sharpen.py) the default: the
Net-Trim cases pin the solvers' own answers, so they name ``--no-refit``; the case
``parallel-osqp-refit`` (recorded when the refit landed) pins the default on top of the
OSQP answer of ``parallel-osqp``. Its digest changed once on purpose, when the refit of
sharpen.py became the staged path's (solvers/admm/refit.py) instead of a copy of it: the same
zeros, the same constraint values to 1e-14; one rank-deficient support's weights moved (0.02)
along the flat of the same minimum.

The digests were machine-bound: recorded on an AMD machine (AVX-512), they failed on an Intel
Xeon on 2026-12-01 with the code of 415a6d4 too (the commit whose CI had passed), every
case's weights agreeing to about 1e-7 but not to the byte -- BLAS kernels differ by
instruction set, and the OSQP and refit cases carry the rounding further (one rank-deficient
refit 0.02 along its flat). So the prunes now run in one child process on a fixed set of
kernels (``KERNELS``: AVX2 in numpy's OpenBLAS, in torch's ATen and MKL, MKL in its
conditional-reproducibility mode) and are compared with ``data/refactor_pin.npz``: the same
zeros exactly and every tensor within ``RTOL`` of its largest entry. The reference was
recorded with the code of c1704f4 (``python tests/test_refactor_pin.py --record``). Measured
on that Intel machine: the default kernels' weights and these agree within 1e-7 (the same
zeros) except the refit case (0.03 along its flat); with no SIMD at all (OPENBLAS_CORETYPE=
Sandybridge, ATEN_CPU_CAPABILITY=default) the cascade case from a state dict moved by 3e-3 too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "refactor_pin.npz"
# the kernels every machine with AVX2 runs alike (numpy's OpenBLAS, torch's ATen, MKL, oneDNN)
KERNELS = {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2",
           "MKL_CBWR": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RTOL = 1e-5  # of a tensor's largest entry

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


def _prune_all(d: Path) -> dict[str, np.ndarray]:
    """Every case's pruned state dict, keyed 'case/name', from prunes run in this process."""
    from conftest import invoke

    from tests.nt_test_archs import mlp

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
               "--report", d / "match.json", "-q")
    assert r.exit_code == 0, r.stderr
    out: dict[str, np.ndarray] = {}
    for case, spec in sorted(CASES.items()):
        args = [str(d / "match.json") if a == "MATCH" else a for a in spec]
        src = d / ("sd.pt" if case.startswith("sd-") else "model.pt")
        extra = ["--arch", "nt_test_archs:mlp"] if case.startswith("sd-") else []
        dst = d / f"{case}.pt"
        r = invoke("prune", src, "--acts", d / "acts.h5", *args, *extra, "-o", dst, "-q")
        assert r.exit_code == 0, f"{case}: {r.stderr}"
        pruned = torch.load(dst, weights_only=False)  # written by the test itself
        if isinstance(pruned, torch.nn.Module):
            pruned = pruned.state_dict()
        for name, t in pruned.get("state_dict", pruned).items():
            out[f"{case}/{name}"] = t.detach().numpy()
    return out


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """The cases pruned in a child process on the fixed kernels."""
    d = tmp_path_factory.mktemp("pin")
    env = {**os.environ, **KERNELS}
    done = subprocess.run([sys.executable, __file__, str(d)], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(d / "pruned.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("case", sorted(CASES))
def test_prune_writes_the_pinned_weights(pruned, case):
    with np.load(REFERENCE) as ref:
        names = [k for k in ref.files if k.startswith(case + "/")]
        assert names, f"no reference for {case}"
        assert sorted(names) == sorted(k for k in pruned if k.startswith(case + "/"))
        for k in names:
            want, got = ref[k], pruned[k]
            assert got.shape == want.shape, k
            assert np.array_equal(got == 0, want == 0), f"{k}: the zeros moved"
            scale = max(float(np.abs(want).max()), 1e-12)
            assert np.abs(got - want).max() <= RTOL * scale, (
                f"{k}: off by {np.abs(got - want).max() / scale:.1e} of its largest entry")


def test_the_reference_holds_every_case():
    with np.load(REFERENCE) as ref:
        assert {k.split("/")[0] for k in ref.files if k != "__meta__"} == set(CASES)
        assert json.loads(str(ref["__meta__"]))["kernels"] == KERNELS


if __name__ == "__main__":
    # python tests/test_refactor_pin.py OUTDIR     (the fixture's child: OUTDIR/pruned.npz)
    # python tests/test_refactor_pin.py --record   (writes the reference, on the fixed kernels)
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    if sys.argv[1] == "--record":
        import tempfile
        if any(os.environ.get(k) != v for k, v in KERNELS.items()):
            os.execve(sys.executable, [sys.executable, __file__, "--record"],
                      {**os.environ, **KERNELS})
        with tempfile.TemporaryDirectory() as tmp:
            arrays = _prune_all(Path(tmp))
        REFERENCE.parent.mkdir(exist_ok=True)
        np.savez_compressed(REFERENCE, __meta__=np.array(json.dumps({"kernels": KERNELS})),
                            **arrays)
    else:
        arrays = _prune_all(Path(sys.argv[1]))
        np.savez(Path(sys.argv[1]) / "pruned.npz", **arrays)
