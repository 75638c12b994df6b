"""`nettrim report`: show a prune report as a table, JSON or CSV, and draw its plots."""

from __future__ import annotations

import sys

import click

from nettrim_cli.cli.common import (
    handle_errors,
    text_console,
)
from nettrim_cli.errors import BadInput
from nettrim_cli.report import read_report_file


@click.command()
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
        data = read_report_file(report_path)
    if ckpt_path and not plot_dir:
        raise BadInput("--checkpoint is used only with --plot DIR")
    if plot_dir:
        _plot_report(data, plot_dir, ckpt_path, trust_checkpoint, force)
    if fmt == "json":
        sys.stdout.write(report_json(data))
    elif fmt == "csv":
        sys.stdout.write(render_csv(data))
    else:
        console = text_console()
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

