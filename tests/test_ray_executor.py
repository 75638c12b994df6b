"""--executor ray: the columns solved by Ray actors give the local run's answer, bit for bit,
also when an actor is killed in the middle of a layer; in parallel mode the layers are solved
at the same time as Ray tasks, with the same answer (also after a killed task, and resumed);
without Ray, a one-line usage error.

One local Ray instance (2 CPUs, no dashboard) is shared by the whole module: it takes a few
seconds to start.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import sys

import numpy as np
import pytest
from conftest import dumped, invoke
from threadpoolctl import threadpool_limits

from nettrim_cli.execution import ray_columns, ray_layers
from nettrim_cli.execution.ray_columns import RayColumns, RayEvaluator
from nettrim_cli.execution.ray_layers import RayLayers
from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import SolverSettings
from nettrim_cli.solvers.osqp import ScaledLayer
from nettrim_cli.solvers.osqp_solver import OSQPSolver
from nettrim_cli.solvers.search import solve_layer

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    # "local": a new instance even if a cluster was started on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _program(seed=0, P=200, N=12, M=10, cascade=False):
    from test_workers import program

    return program(seed=seed, P=P, N=N, M=M, cascade=cascade)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prune(env, name, mode, *extra):
    out = env.out / f"{name}.pt"
    r = invoke("prune", env.a.model, "--acts", env.a.acts, "--mode", mode, "--epsilon", "0.1",
               "-o", out, "-q", "--solver", "osqp", *extra)
    assert r.exit_code == 0, (r.stderr, r.exception)
    return out


def _submissions(monkeypatch) -> list[tuple[int, int]]:
    """(layer, attempt) of every layer task RayLayers starts."""
    seen = []
    monkeypatch.setattr(RayLayers, "_hook",
                        staticmethod(lambda pool, key, attempt: seen.append((key, attempt))))
    return seen


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
def test_cli_ray_checkpoint_is_byte_identical_to_local(ray_cluster, env, mode, monkeypatch):
    local = _prune(env, "local", mode, "--workers", "1")
    tasks = _submissions(monkeypatch)
    remote = _prune(env, "ray", mode, "--executor", "ray", "--workers", "2")
    assert _sha(local) == _sha(remote)
    # parallel: one task per layer; cascade: layer after layer, only its columns on Ray
    assert sorted(tasks) == ([(0, 0), (1, 0)] if mode == "parallel" else [])


def test_config_executor_key(ray_cluster, env):
    cfg = env.write("ray.toml", 'mode = "parallel"\nexecutor = "ray"\n')
    local = _prune(env, "local", "parallel", "--workers", "1")
    remote = _prune(env, "ray", "parallel", "--config", cfg)
    assert _sha(local) == _sha(remote)


@pytest.mark.parametrize("cascade", [False, True])
def test_layer_weights_identical_and_actor_count(ray_cluster, cascade):
    s = SolverSettings()
    ref = solve_layer(_program(cascade=cascade), s, workers=1)
    s.executor = "ray"
    sol = solve_layer(_program(cascade=cascade), s, workers=2)
    assert sol.workers == 2
    assert np.array_equal(ref.Wa, sol.Wa)
    assert ref.lam == sol.lam and ref.status == sol.status


def test_layer_data_is_put_once_and_actors_are_reused(ray_cluster, monkeypatch):
    """One ray.put per layer (the actors get its reference); the evaluations send only
    lambdas; the actors of the run's executor stay for the next layer."""
    real_put = ray.put
    puts = []

    def put(value, *a, **k):
        puts.append(type(value).__name__)
        return real_put(value, *a, **k)

    monkeypatch.setattr(ray, "put", put)
    s = SolverSettings()
    s.executor = "ray"
    with RayColumns() as executor:
        solve_layer(_program(seed=3), s, workers=2, executor=executor)
        first = list(executor.pool.actors)
        solve_layer(_program(seed=4, cascade=True), s, workers=2, executor=executor)
        second = list(executor.pool.actors)
    assert puts == ["LayerContext", "LayerContext"]
    assert second == first and len(first) == 2


def test_rebuilt_problems_are_identical_too(ray_cluster):
    """memory_budget_mb = 0: every evaluation rebuilds the column's problem from its last
    solution and working set (the path --resume records); the actors give the same bits."""
    s = SolverSettings()
    s.memory_budget_mb = 0.0
    ref = solve_layer(_program(seed=5, cascade=True), s, workers=1)
    s.executor = "ray"
    sol = solve_layer(_program(seed=5, cascade=True), s, workers=2)
    assert np.array_equal(ref.Wa, sol.Wa) and ref.lam == sol.lam


def test_cuda_algebra_needs_a_gpu_in_the_cluster(ray_cluster):
    from nettrim_cli.errors import BadInput

    with pytest.raises(BadInput, match="no GPU"):
        ray_columns._gpu_share(ray, 2)


def test_killed_actor_is_replaced_and_the_answer_is_identical(ray_cluster, monkeypatch):
    """ray.kill one actor while an evaluation is in flight: a new actor replays its columns'
    evaluations and the layer's answer is still bit-identical to the local one."""
    killed = []

    def hook(ev, call):
        if call == 3:
            ray.kill(ev.actors[0], no_restart=True)
            killed.append(call)

    s = SolverSettings()
    ref = solve_layer(_program(seed=1), s, workers=1)
    s.executor = "ray"
    monkeypatch.setattr(RayEvaluator, "_hook", staticmethod(hook))
    sol = solve_layer(_program(seed=1), s, workers=2)
    assert killed == [3]
    assert sol.retries > 0
    assert np.array_equal(ref.Wa, sol.Wa)
    assert ref.lam == sol.lam and ref.status == sol.status


def test_killed_actor_via_cli_gives_identical_checkpoint(ray_cluster, env, monkeypatch):
    def hook(ev, call):
        if call == 2:
            ray.kill(ev.actors[-1], no_restart=True)

    local = _prune(env, "local", "cascade", "--workers", "1")
    monkeypatch.setattr(RayEvaluator, "_hook", staticmethod(hook))
    remote = _prune(env, "ray", "cascade", "--executor", "ray", "--workers", "2")
    assert _sha(local) == _sha(remote)


def test_an_actor_that_keeps_dying_leaves_its_columns_reported(ray_cluster, monkeypatch):
    """Beyond MAX_RESTARTS its columns keep their original weights with status worker_lost,
    listed in failed_columns; none is dropped."""
    monkeypatch.setattr(ray_columns, "MAX_RESTARTS", 0)
    share = []

    def hook(ev, call):
        if call == 1:
            share.extend(ev.shares[0])
            ray.kill(ev.actors[0], no_restart=True)

    monkeypatch.setattr(RayEvaluator, "_hook", staticmethod(hook))
    s = SolverSettings()
    s.executor = "ray"
    prog = _program(seed=2)
    sol = solve_layer(prog, s, workers=2)
    lost = [f["column"] for f in sol.failed if f["status"] == ray_columns.LOST]
    assert lost == share and len(share) >= 2
    for m in lost:
        assert np.array_equal(sol.Wa[m], prog.Wa0[m])
    assert len(sol.status) == prog.n_out
    assert all(st in ("solved", "dead_neuron") for m, st in enumerate(sol.status)
               if m not in lost), sol.status


def test_without_ray_installed_exit_2_names_the_extra(env, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    out = env.out / "p.pt"
    r = invoke("prune", env.a.model, "--acts", env.a.acts, "-o", out, "--executor", "ray")
    assert r.exit_code == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nettrim[ray]" in lines[0], r.stderr
    assert not out.exists()


@pytest.mark.parametrize("text, needle", [
    ('executor = "dask"\n', "executor"),
    ('executor = 3\n', "executor"),
    ('executor = "ray"\naddress = "not an address"\n', "address"),
])
def test_bad_executor_config_is_refused(env, text, needle):
    cfg = env.write("bad.toml", text)
    r = invoke("prune", env.a.model, "--acts", env.a.acts, "-o", env.out / "p.pt",
               "--config", cfg)
    assert r.exit_code == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_address_without_ray_executor_is_refused(env):
    r = invoke("prune", env.a.model, "--acts", env.a.acts, "-o", env.out / "p.pt",
               "--address", "127.0.0.1:6379")
    assert r.exit_code == 2 and "--executor ray" in r.stderr


def test_unreachable_address_fails_fast():
    """Nothing listens on port 9 here: refused at once (exit 2), not after ray.init's minutes
    of retries."""
    from nettrim_cli.errors import BadInput

    with pytest.raises(BadInput, match="cannot reach the Ray cluster"):
        ray_columns._reachable("127.0.0.1:9")


# -- parallel mode: the layers as Ray tasks ----------------------------------------------------

@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A 10-16-14-12-3 ReLU network (four layers) on 80 samples, with its dump."""
    import torch

    d = tmp_path_factory.mktemp("deep")
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 14),
                              torch.nn.ReLU(), torch.nn.Linear(14, 12), torch.nn.ReLU(),
                              torch.nn.Linear(12, 3))
    return dumped(d, net, np.random.default_rng(5).standard_normal((80, 10)).astype("f4"))


def _deep_prune(deep, out, *extra):
    return invoke("prune", deep / "model.pt", "--acts", deep / "acts.h5", "--mode", "parallel",
                  "-o", out, "--report", f"{out}.json", "-q", "--solver", "osqp", *extra)


def _numbers(report_path) -> list[dict]:
    """The report's per-layer entries without the timings and worker counts."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("seconds", "workers")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    doc = json.loads(open(report_path).read())
    return strip(doc["layers"]), strip(doc["network"])


_LOCAL: dict = {}


def _deep_local(deep, solver: str):
    """The local (non-Ray) parallel run, made once per solver."""
    if solver not in _LOCAL:
        out = deep / f"local-{solver}.pt"
        r = _deep_prune(deep, out, "--solver", solver, "--workers", "1")
        assert r.exit_code == 0, r.stderr
        _LOCAL[solver] = out
    return _LOCAL[solver]


@pytest.mark.parametrize("solver", ["osqp", "admm"])
def test_parallel_layers_on_ray_give_the_local_checkpoint_and_report(ray_cluster, deep, env,
                                                                    solver, monkeypatch):
    local = _deep_local(deep, solver)
    tasks = _submissions(monkeypatch)
    out = env.out / "ray.pt"
    r = _deep_prune(deep, out, "--solver", solver, "--executor", "ray")
    assert r.exit_code == 0, r.stderr
    assert sorted(tasks) == [(i, 0) for i in range(4)]  # every layer its own task, once
    assert _sha(out) == _sha(local)
    assert _numbers(f"{out}.json") == _numbers(f"{local}.json")


def test_killed_layer_task_is_retried_with_the_identical_result(ray_cluster, deep, env,
                                                                monkeypatch):
    """The worker running layer 2's task is SIGKILLed: the task runs once more (from the same
    object reference) and the checkpoint is the local one."""
    local = _deep_local(deep, "osqp")
    monkeypatch.setattr(RayLayers, "_faults", {(2, 0): "kill"})
    tasks = _submissions(monkeypatch)
    out = env.out / "ray.pt"
    r = _deep_prune(deep, out, "--executor", "ray")
    assert r.exit_code == 0, r.stderr
    assert sorted(tasks) == [(0, 0), (1, 0), (2, 0), (2, 1), (3, 0)]
    assert _sha(out) == _sha(local)
    assert _numbers(f"{out}.json") == _numbers(f"{local}.json")


def test_layer_task_failing_twice_ends_the_run_and_writes_nothing(ray_cluster, deep, env,
                                                                  monkeypatch):
    monkeypatch.setattr(RayLayers, "_faults", {(1, 0): "raise", (1, 1): "kill"})
    out = env.out / "ray.pt"
    work = env.out / "work"
    r = _deep_prune(deep, out, "--executor", "ray", "--workdir", work)
    assert r.exit_code == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("nettrim: error:")]
    assert len(errors) == 1 and "layer 2" in errors[0] and "failed 2 times" in errors[0], \
        r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not (env.out / "ray.pt.json").exists()
    # the layers that did finish are kept for --resume; the failed one is not recorded
    assert not (work / "layer-001.npz").exists()


def test_interrupted_ray_run_resumes_to_the_identical_checkpoint(ray_cluster, deep, env,
                                                                 monkeypatch):
    """Ctrl-C once the first finished layer is recorded: exit 130, no output, the other tasks
    cancelled; --resume solves only the layers not recorded and writes the local checkpoint."""
    from nettrim_cli.workdir import WorkDir

    local = _deep_local(deep, "osqp")
    real_save = WorkDir.save_layer
    saved = []

    def save_then_interrupt(self, i, arrays, meta):
        real_save(self, i, arrays, meta)
        saved.append(i)
        raise KeyboardInterrupt

    monkeypatch.setattr(WorkDir, "save_layer", save_then_interrupt)
    out = env.out / "ray.pt"
    work = env.out / "work"
    r = _deep_prune(deep, out, "--executor", "ray", "--workdir", work)
    assert r.exit_code == 130, r.stderr
    assert not out.exists() and len(saved) == 1
    assert "--resume" in r.stderr
    monkeypatch.setattr(WorkDir, "save_layer", real_save)
    tasks = _submissions(monkeypatch)
    r = _deep_prune(deep, out, "--executor", "ray", "--workdir", work, "--resume")
    assert r.exit_code == 0, r.stderr
    assert sorted(k for k, _ in tasks) == sorted(set(range(4)) - set(saved))
    assert _sha(out) == _sha(local)
    assert not work.exists()


def test_few_layers_share_the_cpus_through_column_actors(ray_cluster, monkeypatch):
    """One layer on a 2-CPU cluster gets both CPUs: a coordinator task hands its columns to
    two column actors; the answer is the local one, bit for bit."""
    prog = _program(seed=6, P=150, N=10, M=8)
    ref = solve_layer(_program(seed=6, P=150, N=10, M=8), SolverSettings(), workers=1)
    s = SolverSettings()
    with RayLayers(OSQPSolver(), s, {0: (150, 10, 8)}) as pool:
        assert pool.cpus == {0: 2}
        pool.submit(0, prog)
        [(key, sol, _)] = list(pool.results())
    assert key == 0 and sol.workers == 2
    assert np.array_equal(ref.Wa, sol.Wa) and ref.lam == sol.lam and ref.status == sol.status


def test_cpu_shares_follow_the_layer_costs():
    assert ray_layers.allocate([5.0, 1.0, 1.0], 2) == [1, 1, 1]  # more layers than CPUs
    assert ray_layers.allocate([6.0, 2.0, 1.0], 8) == [5, 2, 1]
    assert ray_layers.allocate([6.0, 2.0], 8, limits=[3, 10]) == [3, 5]
    assert ray_layers.allocate([], 4) == []


# -- threading: layers large enough for BLAS to split their products over threads ------------

def _wide(seed: int, P: int = 600, N: int = 160, M: int = 4) -> LayerProgram:
    """A last layer (no activation) whose 600 x 161 design BLAS multiplies with threads."""
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.standard_normal((P, N)), 0)
    W = rng.standard_normal((M, N)) / np.sqrt(N)
    b = rng.standard_normal(M) * 0.1
    Y = X @ W.T + b
    return LayerProgram(X=X, Y=Y, W0=W, b0=b, activation="none",
                        epsilon=0.05 * np.linalg.norm(Y))


def _threads_change_the_gram(program: LayerProgram) -> bool:
    Xs = ScaledLayer(program).Xs
    with threadpool_limits(1):
        one = Xs.T @ Xs
    with threadpool_limits(2):
        two = Xs.T @ Xs
    return not np.array_equal(one, two)


def test_threaded_layers_give_the_local_bits_in_ray_tasks_and_actors(ray_cluster):
    """The issue's case at test size: layers whose products BLAS splits over threads (their
    Gram matrix differs between one thread and two) give the local run's float64 weights,
    lambda and constraint bit for bit in a Ray task of one CPU (where Ray sets
    OMP_NUM_THREADS=1), and through a coordinator's column actors -- while the local run is
    made with two BLAS threads around it."""
    if not _threads_change_the_gram(_wide(0)):
        pytest.skip("this BLAS sums a 600 x 161 Gram matrix alike with one thread and two")
    s = SolverSettings()
    with threadpool_limits(2):
        ref = {i: solve_layer(_wide(i), s, workers=1) for i in range(3)}
    # three layers on two CPUs: one task of one CPU per layer, solved in the task
    with RayLayers(OSQPSolver(), s, {i: (600, 160, 4) for i in range(3)}) as pool:
        assert set(pool.cpus.values()) == {1}
        for i in pool.order:
            pool.submit(i, _wide(i))
        got = {key: sol for key, sol, _ in pool.results()}
    # one layer: both CPUs, a coordinator task handing the columns to two column actors
    with RayLayers(OSQPSolver(), s, {0: (600, 160, 4)}) as pool:
        assert pool.cpus == {0: 2}
        pool.submit(0, _wide(0))
        [(_, actors, _)] = list(pool.results())
    assert actors.workers == 2
    for r, sol in [*((ref[i], got[i]) for i in range(3)), (ref[0], actors)]:
        assert np.array_equal(r.Wa, sol.Wa), f"{int((r.Wa != sol.Wa).sum())} weights differ"
        assert r.lam == sol.lam and r.constraint == sol.constraint
