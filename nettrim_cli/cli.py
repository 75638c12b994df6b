"""The `nettrim` command line: parse, call the core, render. No arithmetic here.

Exit codes: 0 success; 1 failure (solver failure under --strict, internal error);
2 usage error or bad input; 130 interrupted (Ctrl-C). Errors are one line on stderr.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import time
import warnings

import click

from nettrim_cli import __version__
from nettrim_cli.atomic import atomic_path, check_output_path, sha256_file
from nettrim_cli.errors import EXIT_BAD_INPUT, EXIT_FAILURE, BadInput, NettrimError

log = logging.getLogger("nettrim")


def _stderr_console():
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=140)


def _fail(message: str, code: int) -> None:
    click.echo(f"nettrim: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """One line on stderr and a documented exit code for every error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NettrimError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            click.echo("nettrim: interrupted; no output was written", err=True)
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except MemoryError:
            _fail("out of memory", EXIT_FAILURE)
        except Exception as e:  # noqa: BLE001 - last resort: still one line, exit 1
            if os.environ.get("NETTRIM_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (set NETTRIM_DEBUG=1 for a "
                  "traceback)", EXIT_FAILURE)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nettrim")
@click.option("-v", "--verbose", is_flag=True, help="Log more to stderr.")
def main(verbose: bool) -> None:
    """Prune trained PyTorch ReLU networks with Net-Trim (convex, layer by layer)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="nettrim: %(message)s", stream=sys.stderr)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"nettrim: warning: {msg}\n"


def _load(model: str, arch: str | None, trust: bool):
    from nettrim_cli.checkpoint import load_checkpoint

    return load_checkpoint(model, arch=arch, trust=trust)


ckpt_options = [
    click.option("--arch", metavar="PKG.MODULE:FACTORY",
                 help="Build the model for a state_dict checkpoint."),
    click.option("--trust-checkpoint", is_flag=True,
                 help="Allow arbitrary unpickling (runs code from the file)."),
]


def with_ckpt_options(fn):
    for opt in reversed(ckpt_options):
        fn = opt(fn)
    return fn


@main.command()
@click.argument("model")
@click.option("--inputs", "inputs_path", required=True,
              help="Calibration inputs: .npy, .npz (key 'inputs' or 'x') or .h5 (/inputs).")
@click.option("--labels", "labels_path", help="Optional labels (.npy, .npz or .h5 /labels).")
@click.option("-o", "--output", required=True, help="The HDF5 dump to write.")
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(1))
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@with_ckpt_options
@handle_errors
def dump(model, inputs_path, labels_path, output, batch_size, force, arch, trust_checkpoint):
    """Record each prunable layer's input and pre-activation on calibration data (HDF5).

    Example: nettrim dump model.pt --inputs calib.npy --labels y.npy -o acts.h5
    """
    import numpy as np
    import torch

    from nettrim_cli.checkpoint import trace_layers
    from nettrim_cli.dump import load_array_file, write_dump

    if output == "-":
        raise BadInput("an HDF5 dump cannot be written to stdout; give a file name", output)
    check_output_path(output, force, inputs=(model, inputs_path, labels_path))
    ckpt = _load(model, arch, trust_checkpoint)
    with np.errstate(over="ignore"):  # checked just below
        x = load_array_file(inputs_path, "inputs").astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise BadInput("inputs overflow float32 (magnitudes above 3.4e38)", inputs_path)
    y = load_array_file(labels_path, "labels") if labels_path else None
    if y is not None and y.shape[0] != x.shape[0]:
        raise BadInput(f"labels hold {y.shape[0]} samples but inputs hold {x.shape[0]}",
                       labels_path)
    layers = trace_layers(ckpt.model, torch.as_tensor(x[: min(8, len(x))]), inputs_path,
                          model_path=model)
    console = _stderr_console()
    t0 = time.perf_counter()
    with _progress(console) as prog, atomic_path(output) as tmp:
        task = prog.add_task("dump", total=x.shape[0])
        write_dump(tmp, ckpt.model, layers, x, y, ckpt.sha256, batch_size, source=model,
                   progress=lambda _s, done, total: prog.update(task, completed=done))
    pr = [la for la in layers if la.prunable]
    console.print(f"nettrim: wrote {output}: {x.shape[0]} samples, {len(pr)} prunable layers "
                  f"({', '.join(f'{la.name}:{la.activation}' for la in pr)}) in "
                  f"{time.perf_counter() - t0:.1f} s")


@contextlib.contextmanager
def _progress(console, quiet: bool = False):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True,
                    disable=quiet or not console.is_terminal)
    with prog:
        yield prog


def _solver_fn(name: str, device: str = "cpu", dtype: str = "float64"):
    if name == "osqp":
        from nettrim_cli.solvers.search import solve_layer

        return solve_layer
    if name == "admm":
        import torch

        from nettrim_cli.solvers import admm

        if device == "cuda" and not torch.cuda.is_available():
            raise BadInput("--device cuda: no CUDA device is available to torch here; use "
                           "--device cpu")
        return lambda program, settings, progress: admm.solve_layer(
            program, settings, progress, device=device, dtype=dtype)
    raise BadInput(f"unknown solver {name!r}")


@main.command()
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
@click.option("--strict", is_flag=True,
              help="Exit 1 and write nothing if any column is not solved.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@with_ckpt_options
@handle_errors
def prune(model, acts, output, report_path, config_path, mode, epsilon, gamma, lam, scope,
          solver, device, dtype, workers, strict, force, quiet, arch, trust_checkpoint):
    """Prune a checkpoint with Net-Trim; write the pruned checkpoint and a JSON report.

    Example: nettrim prune model.pt --acts acts.h5 --mode cascade --gamma 1.1
    -o pruned.pt --report report.json
    """
    import torch

    from nettrim_cli.checkpoint import pruned_copy, save_checkpoint, trace_layers
    from nettrim_cli.config import build_settings, load_config
    from nettrim_cli.dump import DumpReader
    from nettrim_cli.report import build_report, report_json
    from nettrim_cli.trim import prune as run_prune

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
             "solver": solver, "workers": workers}
    settings, solver_name = build_settings(config, flags, source=config_path or "flags")
    ckpt = _load(model, arch, trust_checkpoint)
    t0 = time.perf_counter()
    console = _stderr_console()
    with DumpReader(acts) as dump:
        sample = torch.as_tensor(dump.inputs(slice(0, min(8, dump.n_samples))))
        ckpt.layers = trace_layers(ckpt.model, sample, acts, model_path=model)
        dump.check_against(ckpt.model, ckpt.layers, model_path=model)
        with _progress(console, quiet) as prog:
            ltask = prog.add_task("layers", total=len(ckpt.prunable))
            ctask = prog.add_task("columns", total=1)

            def on_layer(i, n, name):
                prog.update(ltask, completed=i, description=f"layer {name}")
                if quiet:
                    return
                log.info("layer %d/%d: %s", i + 1, n, name)

            def on_columns(stage, done, total):
                prog.update(ctask, completed=done, total=total, description=stage)

            result = run_prune(ckpt, dump, settings, _solver_fn(solver_name, device, dtype),
                               on_layer, on_columns)
        acts_sha = sha256_file(acts)
    seconds = time.perf_counter() - t0
    failed = [(o.info.name, f) for o in result.layers if o.solution
              for f in o.solution.failed]
    if failed and strict:
        for name, f in failed[:20]:
            click.echo(f"nettrim: layer {name} column {f['column']}: {f['status']}", err=True)
        raise NettrimError(f"{len(failed)} column(s) not solved; --strict: nothing written")
    inputs = {"model": {"path": model, "sha256": ckpt.sha256},
              "acts": {"path": acts, "sha256": acts_sha}}
    if config_path:
        inputs["config"] = {"path": config_path, "sha256": sha256_file(config_path)}
    report = build_report(result, inputs, solver_name, seconds)
    pruned_model = pruned_copy(ckpt, result.weights)
    with contextlib.ExitStack() as stack:
        if output == "-":
            buf = io.BytesIO()
            save_checkpoint(ckpt, pruned_model, buf)
            data = buf.getvalue()
            import hashlib

            report["outputs"]["checkpoint"] = {"path": "-",
                                               "sha256": hashlib.sha256(data).hexdigest()}
        else:
            tmp = stack.enter_context(atomic_path(output))
            save_checkpoint(ckpt, pruned_model, tmp)
            report["outputs"]["checkpoint"] = {"path": output, "sha256": sha256_file(tmp)}
        text = report_json(report)
        if report_path and report_path != "-":
            rtmp = stack.enter_context(atomic_path(report_path))
            with open(rtmp, "w") as fh:
                fh.write(text)
    # the files are in place; now the streams
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    if report_path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    if not quiet:
        from nettrim_cli.report import render_table

        render_table(report, console)
    if failed:
        click.echo(f"nettrim: warning: {len(failed)} column(s) kept their original weights "
                   "(see failed_columns in the report)", err=True)


@main.command()
@click.argument("report_path", metavar="REPORT")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@handle_errors
def report(report_path, fmt):
    """Show a prune report ('-' reads stdin) as a table, JSON or CSV.

    Example: nettrim report report.json --format csv
    """
    from nettrim_cli.report import load_report, render_csv, render_table, report_json

    if report_path == "-":
        text = sys.stdin.read()
    else:
        if not os.path.exists(report_path):
            raise BadInput("no such file", report_path)
        try:
            with open(report_path) as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"cannot read report ({e})", report_path) from e
    data = load_report(report_path, text)
    if fmt == "json":
        sys.stdout.write(report_json(data))
    elif fmt == "csv":
        sys.stdout.write(render_csv(data))
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console = Console(width=140)
        render_table(data, console)


__all__ = ["main", "EXIT_BAD_INPUT"]
