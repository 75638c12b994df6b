"""`nettrim prune`: look the method up, run it, write the checkpoint and the report."""

from __future__ import annotations

import contextlib
import time

import click
from click.core import ParameterSource

from nettrim_cli.atomic import sha256_file
from nettrim_cli.cli.common import (
    check_two_outputs,
    handle_errors,
    load_ckpt,
    stderr_console,
    with_ckpt_options,
    write_checkpoint_and_json,
)
from nettrim_cli.cli.progress import RunProgress, quiet_requested
from nettrim_cli.cli.training_options import TRAINING_FLAGS, training_options
from nettrim_cli.errors import BadInput, interrupt_behind
from nettrim_cli.methods import METHODS
from nettrim_cli.methods.base import RunHooks


@click.command()
@click.argument("model")
@click.option("--acts", help="The activation dump from `nettrim dump` (required except for "
              "the training-based methods lc and magnitude-iterative, which train on --data).")
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
@click.option("--solver", type=click.Choice(["auto", "osqp", "admm"]),
              help="Layer solver: auto (default: whole layer at once, certified on small "
                   "layers, fast on large ones), osqp (column by column with a lambda search, "
                   "the reference; chosen by --scope or --osqp-algebra) or admm (whole-layer "
                   "ADMM as configured by a preset's [admm]).")
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
@click.option("--patches", type=click.IntRange(1),
              help="Conv layers: patches (image x position) sampled for each layer's program "
                   "(default: up to 20000, fewer for wide layers; the preset key 'patches').")
@click.option("--refit/--no-refit", default=None,
              help="Net-Trim: refit every layer's kept weights on their support (the layer "
                   "program with its zeros fixed: lower discrepancy, the same zeros). Default: "
                   "the preset's 'refit', else on.")
@click.option("--reweight", type=click.IntRange(0), metavar="K",
              help="Net-Trim: K rounds of reweighted l1 after each layer's solve (sparser at "
                   "the same eps, about K more solves; 0: off, the default; preset key "
                   "'reweight').")
@click.option("--strict", is_flag=True,
              help="Exit 1 and write nothing if any column is not solved.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--workdir", metavar="DIR",
              help="Record finished layers and columns here as they finish (default: "
                   "OUTPUT.nettrim-work beside the output; removed when the prune finishes).")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run recorded in the work folder.")
@click.option("--method", type=click.Choice(list(METHODS)),
              default="netrim", show_default=True,
              help="Net-Trim, a one-shot baseline (magnitude, wanda, sparsegpt) or a "
                   "training-based one (lc, magnitude-iterative), pruned to --match or "
                   "--sparsity.")
@click.option("--match", "match_path", metavar="REPORT.json",
              help="Baselines: keep exactly as many weights per layer as this report's layers.")
@click.option("--sparsity", type=float,
              help="Net-Trim: find the per-layer eps (one eps with --allocation uniform) "
                   "that prune this fraction of all the pruned layers' weights (within 0.5 "
                   "points). Baselines: prune this fraction of every "
                   "layer's weights, in [0, 1). lc, magnitude-iterative: of every layer's "
                   "weights (of all pruned layers together with --allocation joint), in (0, 1).")
@training_options
@click.option("-q", "--quiet", is_flag=True,
              help="No progress display, no summary table (errors and warnings only).")
@with_ckpt_options
@handle_errors
def prune(model, acts, output, report_path, force, quiet, arch, trust_checkpoint, method,
          **options):
    """Prune a checkpoint with Net-Trim (or a baseline); write the pruned checkpoint and a
    JSON report.

    Example: nettrim prune model.pt --acts acts.h5 --mode cascade --gamma 1.1
    -o pruned.pt --report report.json

    Training-based: nettrim prune model.pt --method lc --data train.h5 --sparsity 0.9
    -o lc.pt --report lc.json
    """
    from nettrim_cli.methods import method_class

    cls = method_class(method)
    ctx = click.get_current_context()
    given = {flag: param for flag, param in OPTION_PARAMS.items()
             if ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE}
    wrong = [flag for flag in given if flag not in cls.options]
    if wrong:
        hint = f"; {cls.hint}" if cls.hint else ""
        raise BadInput(f"{', '.join(wrong)}: not an option of --method {method}{hint}")
    if acts is None and cls.needs_acts:
        raise BadInput(f"--method {method} needs --acts (the activation dump from `nettrim "
                       "dump`)")
    chosen = cls(**{OPTION_PARAMS[f]: options[OPTION_PARAMS[f]] for f in cls.options
                    if OPTION_PARAMS[f] in options})
    chosen.note = lambda text: click.echo(f"nettrim: {text}", err=True)
    files = chosen.input_files()
    inputs = (model, *([acts] if acts else []), *files.values())
    check_two_outputs(output, report_path, "--report", force, inputs)
    chosen.load()
    _run(chosen, model, acts, output, report_path, files, quiet_requested(quiet), arch,
         trust_checkpoint)


def _run(method, model: str, acts: str, output: str, report_path: str | None,
         files: dict[str, str], quiet: bool, arch: str | None, trust: bool) -> None:
    """Load the inputs, run the method, write the checkpoint and the report."""
    import torch

    from nettrim_cli.checkpoint import pruned_copy
    from nettrim_cli.dump import DumpReader
    from nettrim_cli.graph import trace_layers
    from nettrim_cli.report import build_report, render_table

    ckpt = load_ckpt(model, arch, trust)
    t0 = time.perf_counter()
    console = stderr_console()
    with DumpReader(acts) if acts else contextlib.nullcontext() as dump:
        if dump is not None:
            sample = dump.inputs(slice(0, min(8, dump.n_samples)))
        else:
            sample = method.sample(ckpt, model)
        ckpt.layers = trace_layers(ckpt.model, torch.as_tensor(sample), acts or "",
                                   model_path=model)
        acts_sha = None
        if dump is not None:
            dump.check_against(ckpt.model, ckpt.layers, model_path=model)
            acts_sha = sha256_file(acts)
        method.start(ckpt, acts_sha, output)
        with RunProgress(console, quiet,
                         unit="layer" if method.needs_acts else "") as shown:
            try:
                result = method.run(ckpt, dump, RunHooks(on_layer=shown.on_layer,
                                                         on_columns=shown.on_columns,
                                                         on_step=shown.on_step))
            except (BadInput, KeyboardInterrupt) as e:
                method.abandoned(e)
                raise
            except Exception as e:
                stop = interrupt_behind(e)
                if stop is None:
                    raise
                method.abandoned(stop)
                raise stop from None
    seconds = time.perf_counter() - t0
    method.check(result)
    inputs = {"model": {"path": model, "sha256": ckpt.sha256}}
    if acts:
        inputs["acts"] = {"path": acts, "sha256": acts_sha}
    for role, path in files.items():
        inputs[role] = {"path": path, "sha256": sha256_file(path)}
    report = build_report(result, ckpt.layers, inputs, seconds)
    # the files are written atomically first, then the streams ('-')
    write_checkpoint_and_json(ckpt, pruned_copy(ckpt, result.weights, result.model), output,
                              report_path, report, ("outputs", "checkpoint"))
    method.finished()
    if not quiet:
        render_table(report, console)
    notes = [f"layer {la.name}: {la.note}" for la in ckpt.prunable if la.note]
    for line in notes + method.warnings(result):
        click.echo(f"nettrim: warning: {line}", err=True)


# every prune option a method may declare, by flag: the parameter it arrives as
OPTION_PARAMS = {
    "--config": "config_path", "--mode": "mode", "--epsilon": "epsilon", "--gamma": "gamma",
    "--lambda": "lam", "--scope": "scope", "--solver": "solver", "--device": "device",
    "--dtype": "dtype", "--workers": "workers", "--executor": "executor",
    "--address": "address", "--osqp-algebra": "osqp_algebra", "--strict": "strict",
    "--workdir": "workdir", "--resume": "resume", "--match": "match_path",
    "--sparsity": "sparsity", "--patches": "patches", "--refit": "refit",
    "--reweight": "reweight",
    **{flag: param for flag, param, _ in TRAINING_FLAGS},
}
