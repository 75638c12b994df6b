"""--osqp-algebra builtin|cuda ([osqp] algebra): builtin is the reference and changes nothing;
cuda where the osqp CUDA build is not installed is a one-line usage error (exit 2)."""

from __future__ import annotations

import hashlib

import osqp
import pytest
from conftest import assert_refused, invoke

from nettrim_cli.solvers.base import OSQPSettings
from nettrim_cli.solvers.osqp import ColumnQP

no_cuda = pytest.mark.skipif(osqp.algebra_available("cuda"),
                             reason="the osqp CUDA algebra is installed here")


@no_cuda
def test_cuda_flag_without_the_cuda_build_is_a_usage_error(env):
    r = invoke("prune", env.a.model, "--acts", env.a.acts, "-o", env.out / "p.pt",
               "--osqp-algebra", "cuda")
    assert_refused(r, env.out, "--osqp-algebra", "osqp CUDA algebra is not installed",
                   "osqp[cu12]", "use --osqp-algebra builtin")


@no_cuda
def test_cuda_in_the_config_without_the_cuda_build_is_a_usage_error(env):
    cfg = env.write("cuda.toml", '[osqp]\nalgebra = "cuda"\n')
    r = invoke("prune", env.a.model, "--acts", env.a.acts, "-o", env.out / "p.pt",
               "--config", cfg)
    assert_refused(r, env.out, str(cfg), "osqp CUDA algebra is not installed")


def test_unknown_algebra_in_the_config_is_refused(env):
    cfg = env.write("bad.toml", '[osqp]\nalgebra = "opencl"\n')
    r = invoke("prune", env.a.model, "--acts", env.a.acts, "-o", env.out / "p.pt",
               "--config", cfg)
    assert_refused(r, env.out, "osqp.algebra", "opencl")


def test_builtin_gives_the_default_result(env):
    outs = []
    for name, extra in (("default", ["--solver", "osqp"]),
                        ("builtin", ["--solver", "osqp", "--osqp-algebra", "builtin"])):
        out = env.out / f"{name}.pt"
        r = invoke("prune", env.a.model, "--acts", env.a.acts, "-o", out, "-q",
                   "--workers", "1", *extra)
        assert r.exit_code == 0, r.stderr
        outs.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert outs[0] == outs[1]


def test_column_problem_uses_the_configured_algebra():
    import numpy as np

    from nettrim_cli.program import LayerProgram

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5))
    W = rng.standard_normal((3, 5))
    prog = LayerProgram(X=X, Y=np.maximum(X @ W.T, 0), W0=W, b0=None, epsilon=1.0)
    qp = ColumnQP(prog, 0, OSQPSettings(algebra="builtin"))
    assert qp.solver.algebra == "builtin"
