"""`make bench`: the plain paper formulation of eq. 14 against the optimised OSQP path, on the
same columns of a fixed Fashion-MNIST layer, in one process and one run; then whole layers
(300 -> 300 ReLU, 300 -> 10 linear) at one eps with the OSQP lambda search against the
whole-layer ADMM solver (defaults, and configs/fast.toml in float32 and float64); ADMM's block
weight r on the 300 -> 300 layer; and the peak memory of the optimised OSQP path on a
1000 x 1000 layer with 60,000 samples.

Plain: eq. 14 exactly as written (u = u+ - u-, every inactive sample a constraint row), one
OSQP set-up per column, one process. Optimised: constraint screening, the epigraph form, worker
processes. Both solve the same columns at the same lambda with the same OSQP tolerances
(1e-5) and polishing, and the script prints the ratio, the eq. 11 objective difference, the
largest weight difference and the worst inactive-constraint violation.

Usage: python benchmarks/bench.py [--columns 16] [--quick] [--out benchmarks/results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nettrim_cli.datasets import accuracy, load_fashion_mnist, mlp, train
from nettrim_cli.dump import DumpReader, write_dump
from nettrim_cli.graph import trace_layers
from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.admm import ADMMSettings
from nettrim_cli.solvers.base import OSQPSettings, SolverSettings
from nettrim_cli.solvers.search import solve_layer

CACHE = Path(".cache/bench")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def nn2_layer(n_train: int = 10000) -> tuple[LayerProgram, float]:
    """The 300 -> 300 layer of NN2-10K (784-300-300-10, seed 0) on its 10,000 samples."""
    CACHE.mkdir(parents=True, exist_ok=True)
    ckpt, acts = CACHE / "nn2_10k.pt", CACHE / "nn2_10k_acts.h5"
    x, y = load_fashion_mnist("train")
    x, y = x[:n_train], y[:n_train]
    if not ckpt.exists():
        torch.manual_seed(0)
        model = train(mlp((784, 300, 300, 10)), x, y, epochs=10, seed=0)
        torch.save(model, ckpt)
    model = torch.load(ckpt, weights_only=False)  # our own cache file
    if not acts.exists():
        layers = trace_layers(model, torch.as_tensor(x[:4]))
        write_dump(str(acts), model, layers, x, y, "bench")
    xt, yt = load_fashion_mnist("test")
    acc = accuracy(model, xt, yt)
    with DumpReader(str(acts)) as d:
        X = d.layer_input(1)
        Y = np.maximum(d.layer_preact(1), 0)
    lin = model[2]
    W = lin.weight.detach().double().numpy()
    b = lin.bias.detach().double().numpy()
    return LayerProgram(X=X, Y=Y, W0=W, b0=b, lam=1.0, name="2"), acc


def objective(prog: LayerProgram, m: int, wa: np.ndarray, lam: float) -> float:
    act = prog.active(m)
    r = prog.Xa[act] @ wa - prog.Y[act, m]
    return float(np.abs(wa[: prog.n_in]).sum() + lam * r @ r)


def run_columns(prog: LayerProgram, cols: list[int], lam: float, osqp: OSQPSettings,
                workers: int) -> tuple[np.ndarray, float, dict]:
    sub = LayerProgram(X=prog.X, Y=prog.Y[:, cols], W0=prog.W0[cols], b0=prog.b0[cols],
                       lam=lam, name=prog.name)
    sub._Xa = prog.Xa
    s = SolverSettings(osqp=osqp)
    t = time.perf_counter()
    sol = solve_layer(sub, s, workers=workers)
    return sol.Wa, time.perf_counter() - t, sol.summary()


def nn2_program(li: int, eps_r: float) -> LayerProgram:
    """Layer ``li`` (0, 1, 2) of the NN2-10K bench model on its 10,000 samples at
    eps = eps_r ||Y||_F: ReLU for the hidden layers, no activation for the last."""
    nn2_layer()  # builds the cached model and dump
    model = torch.load(CACHE / "nn2_10k.pt", weights_only=False)  # our own cache file
    with DumpReader(str(CACHE / "nn2_10k_acts.h5")) as d:
        X = d.layer_input(li)
        Z = d.layer_preact(li)
    lin = model[2 * li]
    act = "none" if li == 2 else "relu"
    Y = Z.astype(np.float64) if act == "none" else np.maximum(Z, 0).astype(np.float64)
    eps = eps_r * float(np.linalg.norm(Y))
    return LayerProgram(X=X, Y=Y, W0=lin.weight.detach().double().numpy(),
                        b0=lin.bias.detach().double().numpy(), activation=act, epsilon=eps,
                        name=str(li))


def fast_admm() -> ADMMSettings:
    """The [admm] section of configs/fast.toml (also make experiments' settings)."""
    from nettrim_cli.config import load_config

    return ADMMSettings(**load_config(str(Path(__file__).parent.parent / "configs" /
                                          "fast.toml"))["admm"])


def _admm_iters(sol) -> str:
    h = [e for e in sol.history if e["stage"] == "admm"]
    if not h:
        return "-"
    return f"{h[-1]['iterations']}{'' if h[-1]['converged'] else ' (cap)'}"


def whole_layers(eps_r: float) -> list[str]:
    """Whole layers at eps = eps_r ||Y||_F: the optimised OSQP path (lambda search, all
    cores) against the whole-layer ADMM solver, same programs, one run."""
    from nettrim_cli.solvers.admm import solve_layer as admm_solve

    fast = fast_admm()
    out = []
    for li, what in ((1, "300 -> 300 (ReLU)"), (2, "300 -> 10 (no activation)")):
        layer = nn2_program(li, eps_r)
        N = layer.n_in
        out += ["", f"Layer {li} of NN2-10K, {what}, {layer.n_samples} samples, "
                f"eps = {eps_r} ||Y||_F:", "",
                "| solver | seconds | ADMM iterations | nonzeros | sparsity | constraint / eps "
                "| discrepancy | status |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        res = {}
        for name, fn in (
                ("osqp (optimised, lambda search, all cores)",
                 lambda layer=layer: solve_layer(layer, SolverSettings())),
                ("admm float64, defaults (tight, polished: KKT-certified)",
                 lambda layer=layer: admm_solve(layer, SolverSettings())),
                ("admm float32, configs/fast.toml",
                 lambda layer=layer: admm_solve(layer, SolverSettings(), dtype="float32",
                                    admm_settings=fast)),
                ("admm float64, configs/fast.toml",
                 lambda layer=layer: admm_solve(layer, SolverSettings(), dtype="float64",
                                    admm_settings=fast))):
            print(f"layer {li}: {name} ...", file=sys.stderr)
            t = time.perf_counter()
            sol = fn()
            secs = time.perf_counter() - t
            w = sol.Wa[:, :N]
            nnz = int(np.count_nonzero(w))
            res[name] = (secs, nnz)
            iters = "-" if name.startswith("osqp") else _admm_iters(sol)
            out.append(f"| {name} | {secs:.1f} | {iters} | {nnz} | {1 - nnz / w.size:.4f} | "
                       f"{sol.constraint / layer.epsilon:.4f} | "
                       f"{layer.discrepancy(sol.Wa):.4g} | {sol.summary()['status_counts']} |")
            print(f"  {secs:.1f} s, {nnz} nonzeros", file=sys.stderr)
        (t_o, n_o), *admm_rows = res.values()
        out.append("")
        for (t_a, n_a), name in zip(admm_rows, list(res)[1:], strict=True):
            out.append(f"- {name}: {t_o / t_a:.1f}x faster than OSQP; sparsity "
                       f"{100 * (n_o - n_a) / w.size:+.2f} percentage points against OSQP's "
                       "(positive: ADMM sparser).")
    return out + [""]


def ratio_sweep(eps_r: float) -> list[str]:
    """configs/fast.toml on layer 1 with the block weight r of ADMMSettings.ratio varied."""
    from dataclasses import replace

    from nettrim_cli.solvers.admm import solve_layer as admm_solve

    layer = nn2_program(1, eps_r)
    N = layer.n_in
    out = ["", "ADMM block weight r (`ratio`), configs/fast.toml in float32 on layer 1 "
           "(the default is 0.03):", "",
           "| ratio | seconds | ADMM iterations | nonzeros | constraint / eps |",
           "|---:|---:|---:|---:|---:|"]
    for r in (1.0, 0.3, 0.1, 0.03, 0.01):
        print(f"ratio {r} ...", file=sys.stderr)
        t = time.perf_counter()
        sol = admm_solve(layer, SolverSettings(), dtype="float32",
                         admm_settings=replace(fast_admm(), ratio=r))
        secs = time.perf_counter() - t
        nnz = int(np.count_nonzero(sol.Wa[:, :N]))
        out.append(f"| {r} | {secs:.1f} | {_admm_iters(sol)} | {nnz} | "
                   f"{sol.constraint / layer.epsilon:.4f} |")
    return out + [""]


def status_counts(rows: list) -> dict:
    out: dict[str, int] = {}
    for r in rows:
        for k, v in r[3]["status_counts"].items():
            out[k] = out.get(k, 0) + v
    return out


def _peak_rss_mb() -> float:
    """VmHWM of this process: unlike ru_maxrss it is not inherited across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_probe(P: int, N: int, M: int, cols: int) -> dict:
    """Run in a child process: peak RSS of the optimised path on a synthetic layer."""
    rng = np.random.default_rng(0)
    X = np.maximum(rng.standard_normal((P, N), dtype=np.float32), 0).astype(np.float64)
    W = rng.standard_normal((M, N)) / np.sqrt(N)
    b = 0.1 * rng.standard_normal(M)
    cols_idx = list(range(cols))
    Y = np.maximum(X @ W[cols_idx].T + b[cols_idx], 0)
    prog = LayerProgram(X=X, Y=Y, W0=W[cols_idx], b0=b[cols_idx], lam=0.05)
    base = _peak_rss_mb()
    t = time.perf_counter()
    sol = solve_layer(prog, SolverSettings(osqp=OSQPSettings()), workers=1)
    peak = _peak_rss_mb()
    return {"P": P, "N": N, "columns": cols, "seconds": time.perf_counter() - t,
            "peak_rss_mb": peak, "rss_before_solve_mb": base,
            "status": sol.summary()["status_counts"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--columns", type=int, default=16)
    ap.add_argument("--lam", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true", help="fewer columns, smaller memory probe")
    ap.add_argument("--eps", type=float, default=0.05, help="relative eps for the whole layer")
    ap.add_argument("--out", default="benchmarks/results.md")
    ap.add_argument("--probe", nargs=4, type=int, metavar=("P", "N", "M", "COLS"))
    a = ap.parse_args()
    if a.probe:
        print(json.dumps(memory_probe(*a.probe)))
        return
    ncol = 6 if a.quick else a.columns
    prog, acc = nn2_layer()
    live = [m for m in range(prog.n_out) if (prog.Y[:, m] > 0).any()]
    cols = live[:ncol]
    lines = [f"# nettrim benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}.", "",
             f"Layer: the 300 -> 300 layer of NN2-10K (784-300-300-10 on 10,000 Fashion-MNIST "
             f"training images, seed 0, test accuracy {100 * acc:.2f}%), {prog.n_samples} "
             f"samples, columns {cols[0]}..{cols[-1]} ({len(cols)} live columns), "
             f"lambda = {a.lam}, OSQP eps_abs = eps_rel = 1e-5, polishing on.", ""]
    # the same OSQP settings for both paths; no retry, so a column the plain formulation
    # cannot finish costs it max_iter iterations once (reported), not an hour of retries
    tol = {"eps_abs": 1e-5, "eps_rel": 1e-5, "max_iter": 4000, "retry_factor": 1.0}
    plain = OSQPSettings(**tol, screening=False, formulation="split")
    fast = OSQPSettings(**tol)
    rows_p, rows_f = [], []
    for m in cols:
        Wp, tp, sp_ = run_columns(prog, [m], a.lam, plain, workers=1)
        Wf, tf, sf = run_columns(prog, [m], a.lam, fast, workers=1)
        rows_p.append((m, Wp[0], tp, sp_))
        rows_f.append((m, Wf[0], tf, sf))
        print(f"  column {m}: plain {tp:.2f} s {list(sp_['status_counts'])}, optimised "
              f"{tf:.3f} s {list(sf['status_counts'])}", file=sys.stderr)
    nw = os.cpu_count() or 1
    Wall, tall, sall = run_columns(prog, cols, a.lam, fast, workers=nw)
    print(f"optimised, {nw} workers, all columns: {tall:.1f} s", file=sys.stderr)
    k = len(cols)
    tp = sum(r[2] for r in rows_p)
    tf1 = sum(r[2] for r in rows_f)
    ok = [i for i, r in enumerate(rows_p) if list(r[3]["status_counts"]) == ["solved"]]
    tp_ok = sum(rows_p[i][2] for i in ok)
    tf_ok = sum(rows_f[i][2] for i in ok)
    obj_p = np.array([objective(prog, rows_p[i][0], rows_p[i][1], a.lam) for i in ok])
    obj_f = np.array([objective(prog, rows_p[i][0], Wall[i], a.lam) for i in ok])
    rel = np.abs(obj_f - obj_p) / np.abs(obj_p) if ok else np.array([np.nan])
    wdiff = max((float(np.abs(Wall[i] - rows_p[i][1]).max()) for i in ok), default=np.nan)
    viol = max(float(np.max(prog.Xa[~prog.active(m)] @ Wall[i], initial=0.0))
               for i, m in enumerate(cols))
    same = bool(np.array_equal(np.stack([r[1] for r in rows_f]), Wall))
    lines += [
        "| path | seconds | s / column | columns / s / core | ratio to plain |",
        "|---|---:|---:|---:|---:|",
        f"| plain eq. 14 (split, every inactive sample a row), 1 process | {tp:.1f} | "
        f"{tp / k:.2f} | {k / tp:.3f} | 1.0 |",
        f"| optimised (screening, epigraph), 1 worker | {tf1:.1f} | {tf1 / k:.3f} | "
        f"{k / tf1:.2f} | {tp / tf1:.1f}x |",
        f"| optimised, {nw} workers | {tall:.1f} | {tall / k:.3f} | {k / tall / nw:.2f} | "
        f"{tp / tall:.1f}x |", "",
        f"- column statuses within max_iter = 4000: plain {status_counts(rows_p)}, optimised "
        f"(1 worker) {status_counts(rows_f)}, optimised ({nw} workers) "
        f"{sall['status_counts']}. On the {len(ok)} columns the plain formulation solved: "
        f"plain {tp_ok:.1f} s, optimised (1 worker) {tf_ok:.1f} s, ratio "
        f"{tp_ok / max(tf_ok, 1e-9):.1f}x.",
        f"- eq. 11 objective, optimised vs plain, on those columns: largest relative "
        f"difference {np.max(rel):.2e} (mean {np.mean(rel):.2e}).",
        f"- largest weight difference on those columns: {wdiff:.2e} (largest weight "
        f"{np.abs(prog.W0).max():.2f}).",
        f"- worst inactive-sample constraint u^T x_p <= 0 over all {prog.n_samples} samples, "
        f"optimised: {viol:.2e} (positive means violated).",
        f"- 1-worker and {nw}-worker optimised runs give identical weights: {same}.", ""]
    if not a.quick:
        lines += whole_layers(a.eps)
        lines += ratio_sweep(a.eps)
    probe = (20000, 1000, 1000, 4) if a.quick else (60000, 1000, 1000, 8)
    print(f"memory probe {probe} ...", file=sys.stderr)
    out = subprocess.run([sys.executable, __file__, "--probe", *map(str, probe)],
                         capture_output=True, text=True, check=True)
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    lines += [f"Peak memory, optimised path, one worker, synthetic layer with {mem['N']} inputs "
              f"and {mem['P']} samples (float64), {mem['columns']} columns solved: peak RSS "
              f"{mem['peak_rss_mb']:.0f} MB (of which {mem['rss_before_solve_mb']:.0f} MB "
              f"is the layer's data before the solver starts); {mem['seconds']:.1f} s, "
              f"status {mem['status']}.", ""]
    text = "\n".join(lines)
    print(text)
    if not a.quick:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
