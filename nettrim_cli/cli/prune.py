"""`nettrim prune`: look the method up, run it, write the checkpoint and the report."""

from __future__ import annotations

import logging
import os
import time

import click

from nettrim_cli import __version__
from nettrim_cli.atomic import check_output_path, sha256_file
from nettrim_cli.cli.common import (
    check_two_outputs,
    handle_errors,
    load_ckpt,
    progress_bars,
    read_report_file,
    stderr_console,
    with_ckpt_options,
    write_checkpoint_and_json,
)
from nettrim_cli.errors import BadInput, NettrimError

log = logging.getLogger("nettrim")


def _solver_fn(name: str, device: str = "cpu", dtype: str = "float64"):
    from nettrim_cli.solvers import make_solver

    if name == "admm":
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BadInput("--device cuda: no CUDA device is available to torch here; use "
                           "--device cpu")
        return make_solver(name, device=device, dtype=dtype)
    return make_solver(name)


@click.command()
@click.argument("model")
@click.option("--acts", required=True, help="The activation dump from `nettrim dump`.")
@click.option("-o", "--output", required=True, help="Pruned checkpoint to write ('-': stdout).")
@click.option("--report", "report_path", help="JSON report to write ('-': stdout).")
@click.option("--config", "config_path", help="A TOML preset (see configs/); flags override it.")
@click.option("--mode", type=click.Choice(["parallel", "cascade"]),
              help="Algorithm 1 (parallel) or 2 (cascade). Default: cascade.")
@click.option("--epsilon", type=float,
              help="Relative eps: eps_l = e*||Y_l||_F (parallel), eps_1 = e*||Y_1||_F "
                   "(cascade). Default 0.05.")
@click.option("--gamma", type=float, help="Cascade inflation rate (eq. 7), >= 1. Default 1.1.")
@click.option("--lambda", "lam", type=float, help="Solve eq. 14 with this fixed lambda.")
@click.option("--scope", type=click.Choice(["layer", "column"]),
              help="One lambda per layer (exact program 4, default) or per column.")
@click.option("--solver", type=click.Choice(["osqp", "admm"]),
              help="Layer solver: osqp (column by column, the reference; default) or admm "
                   "(whole layer at once, torch).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Device for --solver admm.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64",
              show_default=True, help="Precision for --solver admm.")
@click.option("--workers", type=int,
              help="Worker processes for the columns (default: all cores); results do not "
                   "depend on it.")
@click.option("--executor", type=click.Choice(["local", "ray"]),
              help="Solve the columns in local processes (default) or as Ray actors on a Ray "
                   "cluster (pip install 'nettrim[ray]'); the same result either way.")
@click.option("--address", metavar="HOST:PORT",
              help="The Ray cluster for --executor ray (HOST:PORT, ray://HOST:PORT or auto; "
                   "default: RAY_ADDRESS if set, else a new local Ray instance).")
@click.option("--osqp-algebra", type=click.Choice(["builtin", "cuda"]),
              help="OSQP's linear algebra: builtin (CPU, default) or cuda (pip install "
                   "'osqp[cu12]', an NVIDIA GPU).")
@click.option("--strict", is_flag=True,
              help="Exit 1 and write nothing if any column is not solved.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--workdir", metavar="DIR",
              help="Record finished layers and columns here as they finish (default: "
                   "OUTPUT.nettrim-work beside the output; removed when the prune finishes).")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run recorded in the work folder.")
@click.option("--method", type=click.Choice(["netrim", "magnitude", "wanda", "sparsegpt"]),
              default="netrim", show_default=True,
              help="Net-Trim, or a one-shot baseline pruned to --match or --sparsity.")
@click.option("--match", "match_path", metavar="REPORT.json",
              help="Baselines: keep exactly as many weights per layer as this report's layers.")
@click.option("--sparsity", type=float,
              help="Baselines: prune this fraction of every layer's weights, in [0, 1).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@with_ckpt_options
@handle_errors
def prune(model, acts, output, report_path, config_path, mode, epsilon, gamma, lam, scope,
          solver, device, dtype, workers, strict, force, workdir, resume, quiet, arch,
          trust_checkpoint, method="netrim", match_path=None, sparsity=None, executor=None,
          address=None, osqp_algebra=None):
    """Prune a checkpoint with Net-Trim; write the pruned checkpoint and a JSON report.

    Example: nettrim prune model.pt --acts acts.h5 --mode cascade --gamma 1.1
    -o pruned.pt --report report.json
    """
    import torch

    from nettrim_cli.checkpoint import pruned_copy, trace_layers
    from nettrim_cli.config import build_settings, load_config
    from nettrim_cli.dump import DumpReader
    from nettrim_cli.report import build_report
    from nettrim_cli.trim import prune as run_prune

    if method != "netrim" or match_path is not None or sparsity is not None:
        netrim_flags = {"--config": config_path, "--mode": mode, "--epsilon": epsilon,
                        "--gamma": gamma, "--lambda": lam, "--scope": scope, "--solver": solver,
                        "--workers": workers, "--workdir": workdir, "--resume": resume or None,
                        "--strict": strict or None, "--executor": executor, "--address": address,
                        "--osqp-algebra": osqp_algebra}
        return _prune_baseline(model, acts, output, report_path, method, match_path, sparsity,
                               force, quiet, arch, trust_checkpoint, netrim_flags)
    if output == "-" and report_path == "-":
        raise BadInput("only one of -o and --report can be '-' (stdout)")
    check_output_path(output, force, inputs=(model, acts, config_path))
    if report_path:
        check_output_path(report_path, force, inputs=(model, acts, config_path))
        if report_path != "-" and output != "-" and \
                os.path.abspath(report_path) == os.path.abspath(output):
            raise BadInput("--report and -o name the same file", report_path)
    config = load_config(config_path)
    flags = {"mode": mode, "epsilon": epsilon, "gamma": gamma, "lambda": lam, "scope": scope,
             "solver": solver, "workers": workers, "executor": executor, "address": address,
             "osqp_algebra": osqp_algebra}
    settings, solver_name = build_settings(config, flags, source=config_path or "flags")
    ckpt = load_ckpt(model, arch, trust_checkpoint)
    t0 = time.perf_counter()
    console = stderr_console()
    with DumpReader(acts) as dump:
        sample = torch.as_tensor(dump.inputs(slice(0, min(8, dump.n_samples))))
        ckpt.layers = trace_layers(ckpt.model, sample, acts, model_path=model)
        dump.check_against(ckpt.model, ckpt.layers, model_path=model)
        acts_sha = sha256_file(acts)
        work = _workdir(workdir, resume, output, ckpt.sha256, acts_sha, settings,
                        solver_name, device, dtype)
        with progress_bars(console, quiet) as prog:
            ltask = prog.add_task("layers", total=len(ckpt.prunable))
            ctask = prog.add_task("columns", total=1)

            def on_layer(i, n, name):
                prog.update(ltask, completed=i, description=f"layer {name}")
                if quiet:
                    return
                log.info("layer %d/%d: %s", i + 1, n, name)

            def on_columns(stage, done, total):
                prog.update(ctask, completed=done, total=total, description=stage)

            try:
                result = run_prune(ckpt, dump, settings,
                                   _solver_fn(solver_name, device, dtype), on_layer, on_columns,
                                   workdir=work)
            except BadInput:
                if work is not None:  # the inputs are bad: nothing worth resuming
                    work.remove()
                raise
            except KeyboardInterrupt:
                if work is not None:
                    click.echo(f"nettrim: finished layers and columns are kept in {work.path}; "
                               "run the same command with --resume to continue", err=True)
                raise
    seconds = time.perf_counter() - t0
    failed = [(o.info.name, f) for o in result.layers if o.solution
              for f in o.solution.failed]
    if failed and strict:
        if work is not None:
            work.remove()  # the prune is complete: nothing is left to resume
        for name, f in failed[:20]:
            click.echo(f"nettrim: layer {name} column {f['column']}: {f['status']}", err=True)
        raise NettrimError(f"{len(failed)} column(s) not solved; --strict: nothing written")
    inputs = {"model": {"path": model, "sha256": ckpt.sha256},
              "acts": {"path": acts, "sha256": acts_sha}}
    if config_path:
        inputs["config"] = {"path": config_path, "sha256": sha256_file(config_path)}
    report = build_report(result, inputs, solver_name, seconds)
    # the files are written atomically first, then the streams ('-')
    write_checkpoint_and_json(ckpt, pruned_copy(ckpt, result.weights), output, report_path,
                               report, ("outputs", "checkpoint"))
    if work is not None:
        # removed only once the outputs are in place: a kill in between loses nothing
        work.remove()
    if not quiet:
        from nettrim_cli.report import render_table

        render_table(report, console)
    from nettrim_cli.solvers.admm import MIXED

    mixed = sum(1 for _, f in failed if f["status"] == MIXED)
    if len(failed) > mixed:
        click.echo(f"nettrim: warning: {len(failed) - mixed} column(s) kept their original "
                   "weights (see failed_columns in the report)", err=True)
    if mixed:
        click.echo(f"nettrim: warning: {mixed} column(s) were mixed with their original "
                   "weights to meet eps, so their pruned weights are small but not zero (see "
                   "failed_columns in the report)", err=True)


def _workdir(path, resume, output, model_sha, acts_sha, settings, solver_name, device, dtype):
    """The work folder of a prune (nettrim_cli.workdir), or None for stdout without --workdir.

    Its manifest holds everything that changes the result, so that a resume with other inputs
    or settings is refused; worker counts and executors do not change results and may differ.
    """
    import dataclasses

    from nettrim_cli.workdir import WorkDir, default_workdir

    path = path or default_workdir(output)
    if path is None:
        if resume:
            raise BadInput("--resume needs --workdir when the output is stdout")
        return None
    recorded = dataclasses.asdict(settings)
    for key in ("workers", "executor", "address"):
        recorded.get("solver", {}).pop(key, None)
    manifest = {"model_sha256": model_sha, "acts_sha256": acts_sha, "settings": recorded,
                "solver": solver_name, "device": device, "dtype": dtype,
                "nettrim": __version__}
    work = WorkDir(path, manifest, resume)
    if resume:
        layers, cols = work.recorded()
        click.echo(f"nettrim: resuming from {path}: {layers} layer(s) finished, {cols} "
                   "column(s) of the next one recorded", err=True)
    return work



def _prune_baseline(model, acts, output, report_path, method, match_path, sparsity, force,
                    quiet, arch, trust_checkpoint, netrim_flags) -> None:
    """`nettrim prune --method magnitude|wanda|sparsegpt`: see nettrim_cli/baselines.py."""
    import torch

    from nettrim_cli import baselines
    from nettrim_cli.checkpoint import pruned_copy, trace_layers
    from nettrim_cli.dump import DumpReader
    from nettrim_cli.report import build_baseline_report, render_table

    if method == "netrim":
        raise BadInput("--match and --sparsity are for the baselines (--method magnitude, "
                       "wanda or sparsegpt); Net-Trim is steered by --epsilon or --lambda")
    given = [k for k, v in netrim_flags.items() if v is not None]
    if given:
        raise BadInput(f"{', '.join(given)}: only for --method netrim, not {method}")
    if (match_path is None) == (sparsity is None):
        raise BadInput(f"--method {method} needs exactly one of --match REPORT.json and "
                       "--sparsity S")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise BadInput(f"--sparsity must be in [0, 1), got {sparsity}")
    check_two_outputs(output, report_path, "--report", force, (model, acts, match_path))
    matched = read_report_file(match_path) if match_path else None
    ckpt = load_ckpt(model, arch, trust_checkpoint)
    console = stderr_console()
    t0 = time.perf_counter()
    with DumpReader(acts) as dump:
        sample = torch.as_tensor(dump.inputs(slice(0, min(8, dump.n_samples))))
        ckpt.layers = trace_layers(ckpt.model, sample, acts, model_path=model)
        dump.check_against(ckpt.model, ckpt.layers, model_path=model)
        if matched is not None:
            counts = baselines.counts_from_report(matched, ckpt.prunable, match_path)
        else:
            counts = baselines.counts_for_sparsity(ckpt.prunable, sparsity)
        with progress_bars(console, quiet) as prog:
            task = prog.add_task(method, total=len(ckpt.prunable))
            result = baselines.prune_layers(
                ckpt, dump, method, counts,
                lambda i, n, name: prog.update(task, completed=i, description=f"layer {name}"))
        acts_sha = sha256_file(acts)
    inputs = {"model": {"path": model, "sha256": ckpt.sha256},
              "acts": {"path": acts, "sha256": acts_sha}}
    if match_path:
        inputs["match"] = {"path": match_path, "sha256": sha256_file(match_path)}
    settings = {"method": method, "sparsity": sparsity,
                "match": match_path, "calibration": "original network's layer inputs"}
    if method == "sparsegpt":
        settings.update(damp=baselines.SPARSEGPT_DAMP, blocksize=baselines.SPARSEGPT_BLOCK)
    report = build_baseline_report(result, ckpt.layers, inputs, settings,
                                   time.perf_counter() - t0)
    write_checkpoint_and_json(ckpt, pruned_copy(ckpt, result.weights), output, report_path,
                               report, ("outputs", "checkpoint"))
    if not quiet:
        render_table(report, console)

