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
    from nettrim_cli.solvers import make_solver

    if name == "admm":
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BadInput("--device cuda: no CUDA device is available to torch here; use "
                           "--device cpu")
        return make_solver(name, device=device, dtype=dtype)
    return make_solver(name)


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
    ckpt = _load(model, arch, trust_checkpoint)
    t0 = time.perf_counter()
    console = _stderr_console()
    with DumpReader(acts) as dump:
        sample = torch.as_tensor(dump.inputs(slice(0, min(8, dump.n_samples))))
        ckpt.layers = trace_layers(ckpt.model, sample, acts, model_path=model)
        dump.check_against(ckpt.model, ckpt.layers, model_path=model)
        acts_sha = sha256_file(acts)
        work = _workdir(workdir, resume, output, ckpt.sha256, acts_sha, settings,
                        solver_name, device, dtype)
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
    _write_checkpoint_and_json(ckpt, pruned_copy(ckpt, result.weights), output, report_path,
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


@main.command()
@click.argument("report_path", metavar="REPORT")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("--plot", "plot_dir", metavar="DIR",
              help="Also draw per-layer sparsity and discrepancy bar charts (PNG) into DIR "
                   "(needs matplotlib: pip install 'nettrim[plots]').")
@click.option("--checkpoint", "ckpt_path", metavar="PRUNED.pt",
              help="With --plot: the pruned checkpoint, to draw each layer's sparsity pattern.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow arbitrary unpickling of --checkpoint (runs code from the file).")
@click.option("--force", is_flag=True, help="Overwrite existing plot files.")
@handle_errors
def report(report_path, fmt, plot_dir, ckpt_path, trust_checkpoint, force):
    """Show a prune report ('-' reads stdin) as a table, JSON or CSV.

    Example: nettrim report report.json --format csv;
    nettrim report report.json --plot figs/ --checkpoint pruned.pt
    """
    from nettrim_cli.report import load_report, render_csv, render_table, report_json

    if report_path == "-":
        data = load_report(report_path, sys.stdin.read())
    else:
        data = _read_report_file(report_path)
    if ckpt_path and not plot_dir:
        raise BadInput("--checkpoint is used only with --plot DIR")
    if plot_dir:
        _plot_report(data, plot_dir, ckpt_path, trust_checkpoint, force)
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



def _plot_report(data: dict, plot_dir: str, ckpt_path: str | None, trust: bool,
                 force: bool) -> None:
    from pathlib import Path

    from nettrim_cli.report import _pyplot, pattern_weights, plot_names, write_plots

    _pyplot()  # matplotlib missing: exit 2 before anything is read or written
    d = Path(plot_dir)
    if d.exists() and not d.is_dir():
        raise BadInput("--plot: not a directory", plot_dir)
    if not d.parent.is_dir():
        raise BadInput("--plot: parent directory does not exist", plot_dir)
    weights = pattern_weights(ckpt_path, data, trust) if ckpt_path else None
    names = plot_names(data, weights)
    if d.exists() and not force:
        for name in names:
            if (d / name).exists():
                raise BadInput("output exists; pass --force to overwrite it", str(d / name))
    d.mkdir(exist_ok=True)
    written = write_plots(data, str(d), weights)
    click.echo(f"nettrim: wrote {len(written)} plot(s) to {plot_dir}", err=True)


def _read_report_file(path: str) -> dict:
    from nettrim_cli.report import load_report

    if not os.path.exists(path):
        raise BadInput("no such file", path)
    if os.path.isdir(path):
        raise BadInput("is a directory, not a report", path)
    try:
        with open(path) as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read report ({e})", path) from e
    return load_report(path, text)


def _write_checkpoint_and_json(ckpt, model, output: str, json_path: str | None, doc: dict,
                               out_key: tuple[str, ...]) -> None:
    """Write ``model`` (in ``ckpt``'s form) to ``output`` and ``doc`` as JSON to
    ``json_path``, each atomically or to stdout ('-'); ``doc[out_key...]`` gets the
    checkpoint's path and sha256 first."""
    import hashlib

    from nettrim_cli.checkpoint import save_checkpoint
    from nettrim_cli.report import report_json

    data = b""
    slot = doc
    for k in out_key[:-1]:
        slot = slot.setdefault(k, {})
    with contextlib.ExitStack() as stack:
        if output == "-":
            buf = io.BytesIO()
            save_checkpoint(ckpt, model, buf)
            data = buf.getvalue()
            slot[out_key[-1]] = {"path": "-", "sha256": hashlib.sha256(data).hexdigest()}
        else:
            tmp = stack.enter_context(atomic_path(output))
            save_checkpoint(ckpt, model, tmp)
            slot[out_key[-1]] = {"path": output, "sha256": sha256_file(tmp)}
        text = report_json(doc)
        if json_path and json_path != "-":
            jtmp = stack.enter_context(atomic_path(json_path))
            with open(jtmp, "w") as fh:
                fh.write(text)
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    if json_path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()


def _check_two_outputs(output: str, other: str | None, flag: str, force: bool,
                       inputs: tuple) -> None:
    if output == "-" and other == "-":
        raise BadInput(f"only one of -o and {flag} can be '-' (stdout)")
    check_output_path(output, force, inputs=inputs)
    if other:
        check_output_path(other, force, inputs=inputs)
        if other != "-" and output != "-" and os.path.abspath(other) == os.path.abspath(output):
            raise BadInput(f"{flag} and -o name the same file", other)


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
    _check_two_outputs(output, report_path, "--report", force, (model, acts, match_path))
    matched = _read_report_file(match_path) if match_path else None
    ckpt = _load(model, arch, trust_checkpoint)
    console = _stderr_console()
    t0 = time.perf_counter()
    with DumpReader(acts) as dump:
        sample = torch.as_tensor(dump.inputs(slice(0, min(8, dump.n_samples))))
        ckpt.layers = trace_layers(ckpt.model, sample, acts, model_path=model)
        dump.check_against(ckpt.model, ckpt.layers, model_path=model)
        if matched is not None:
            counts = baselines.counts_from_report(matched, ckpt.prunable, match_path)
        else:
            counts = baselines.counts_for_sparsity(ckpt.prunable, sparsity)
        with _progress(console, quiet) as prog:
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
    _write_checkpoint_and_json(ckpt, pruned_copy(ckpt, result.weights), output, report_path,
                               report, ("outputs", "checkpoint"))
    if not quiet:
        render_table(report, console)


def _eval_text(doc: dict, fmt: str, width: int = 100) -> str:
    import csv

    if fmt == "json":
        from nettrim_cli.report import report_json

        return report_json(doc)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["noise", "accuracy", "loss"], lineterminator="\n")
        w.writeheader()
        for r in doc["results"]:
            w.writerow({k: "" if r[k] is None else r[k] for k in ("noise", "accuracy", "loss")})
        return buf.getvalue()
    from rich.console import Console
    from rich.table import Table

    t = Table(title="nettrim eval", title_justify="left")
    for col in ("noise", "accuracy", "loss"):
        t.add_column(col, justify="right")
    for r in doc["results"]:
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        t.add_row(f"{r['noise']:g}", f"{100 * r['accuracy']:.2f}%", loss)
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False).print(t)
    return buf.getvalue() + (f"{doc['model']['path']} on {doc['data']['path']}: "
                             f"{doc['samples']} samples, noise seed {doc['seed']}\n")


@main.command(name="eval")
@click.argument("model")
@click.option("--data", "data_path", required=True,
              help="Labelled data: .h5 with /inputs and /labels (a dump made with --labels) "
                   "or .npz with inputs/labels (or x/y).")
@click.option("--noise", metavar="S1,S2,...",
              help="Gaussian noise levels (std, input units) to add, e.g. 0,0.2,0.4.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise.")
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(1))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("-o", "--output", help="Write here (atomically) instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@with_ckpt_options
@handle_errors
def eval_cmd(model, data_path, noise, seed, batch_size, fmt, output, force, arch,
             trust_checkpoint):
    """Accuracy and mean cross-entropy of a checkpoint on labelled data, optionally with
    added Gaussian noise (the paper's Figure 4).

    Example: nettrim eval pruned.pt --data test.npz --noise 0,0.2,0.4 --format csv
    """
    from nettrim_cli.atomic import write_bytes_atomic
    from nettrim_cli.evaluate import (
        EVAL_FORMAT,
        EVAL_VERSION,
        check_fits,
        evaluate,
        load_labelled,
        parse_noise,
    )
    from nettrim_cli.report import _clean

    levels = parse_noise(noise)
    if output:
        check_output_path(output, force, inputs=(model, data_path))
    ckpt = _load(model, arch, trust_checkpoint)
    x, y = load_labelled(data_path)
    check_fits(ckpt.model, x, y, data_path, model)
    results = evaluate(ckpt.model, x, y, levels, seed, batch_size)
    doc = _clean({"format": EVAL_FORMAT, "version": EVAL_VERSION,
                  "model": {"path": model, "sha256": ckpt.sha256},
                  "data": {"path": data_path, "sha256": sha256_file(data_path)},
                  "samples": int(len(x)), "seed": seed, "results": results})
    if fmt == "table" and not output:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console = Console(width=140)
        console.print(_eval_text(doc, "table", width=console.width), end="")
        return
    text = _eval_text(doc, fmt)
    if output and output != "-":
        write_bytes_atomic(output, text.encode())
    else:
        sys.stdout.write(text)


@main.command()
@click.argument("pruned", metavar="PRUNED")
@click.option("--data", "data_path", required=True,
              help="Labelled training data (.h5 /inputs and /labels, or .npz inputs/labels).")
@click.option("--epochs", required=True, type=click.IntRange(0))
@click.option("-o", "--output", required=True, help="Fine-tuned checkpoint ('-': stdout).")
@click.option("--lr", default=1e-3, show_default=True,
              type=click.FloatRange(0, min_open=True))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam",
              show_default=True, help="Adam, or SGD with momentum 0.9.")
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(0))
@click.option("--summary", "summary_path", help="JSON summary to write ('-': stdout).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@with_ckpt_options
@handle_errors
def finetune(pruned, data_path, epochs, output, lr, batch_size, seed, optimizer,
             weight_decay, summary_path, force, quiet, arch, trust_checkpoint):
    """Train a pruned checkpoint with its zero weights frozen at zero.

    Example: nettrim finetune pruned.pt --data train.npz --epochs 5 -o tuned.pt
    --summary tuned.json
    """
    from nettrim_cli import __version__
    from nettrim_cli.evaluate import check_fits, load_labelled
    from nettrim_cli.finetune import finetune as run_finetune

    _check_two_outputs(output, summary_path, "--summary", force, (pruned, data_path))
    ckpt = _load(pruned, arch, trust_checkpoint)
    x, y = load_labelled(data_path)
    check_fits(ckpt.model, x, y, data_path, pruned)
    console = _stderr_console()
    with _progress(console, quiet) as prog:
        task = prog.add_task("epoch", total=max(1, epochs * len(x)))

        def on_batch(epoch, done, n, loss):
            prog.update(task, completed=epoch * n + done,
                        description=f"epoch {epoch + 1}/{epochs} loss {loss:.4f}")

        figures = run_finetune(ckpt.model, x, y, epochs, lr, batch_size, seed, optimizer,
                               weight_decay, on_batch)
    summary = {
        "format": "nettrim-finetune", "version": 1, "nettrim_version": __version__,
        "inputs": {"model": {"path": pruned, "sha256": ckpt.sha256},
                   "data": {"path": data_path, "sha256": sha256_file(data_path)}},
        "outputs": {},
        "epochs": epochs,
        "settings": {"lr": lr, "batch_size": batch_size, "seed": seed,
                     "optimizer": optimizer, "momentum": 0.9 if optimizer == "sgd" else None,
                     "weight_decay": weight_decay},
        "samples": int(len(x)),
        **figures,
    }
    from nettrim_cli.report import _clean

    summary = _clean(summary)
    _write_checkpoint_and_json(ckpt, ckpt.model, output, summary_path, summary,
                               ("outputs", "checkpoint"))
    if not quiet:
        click.echo(f"nettrim: fine-tuned {epochs} epoch(s) in {figures['seconds']:.1f} s: "
                   f"training accuracy {100 * figures['train_accuracy_before']:.2f}% -> "
                   f"{100 * figures['train_accuracy']:.2f}%, nonzero weights "
                   f"{figures['nonzeros_before']} -> {figures['nonzeros_after']}", err=True)


__all__ = ["main", "EXIT_BAD_INPUT"]
