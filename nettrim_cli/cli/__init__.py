"""The `nettrim` command line: parse, call the core, render. No arithmetic here. One module
per command; this one holds the group and registers them.

Exit codes: 0 success; 1 failure (solver failure under --strict, internal error);
2 usage error or bad input; 130 interrupted (Ctrl-C). Errors are one line on stderr.
"""

from __future__ import annotations

import logging
import sys
import warnings

import click

from nettrim_cli import __version__
from nettrim_cli.cli.dump import dump
from nettrim_cli.cli.eval import eval_cmd
from nettrim_cli.cli.export import export
from nettrim_cli.cli.finetune import finetune
from nettrim_cli.cli.progress import QUIET, add_verbosity_options
from nettrim_cli.cli.prune import prune
from nettrim_cli.cli.report import report
from nettrim_cli.errors import EXIT_BAD_INPUT
from nettrim_cli.execution.memory import keep_freed_memory


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nettrim")
@click.option("-v", "--verbose", is_flag=True, help="Log more to stderr.")
@click.option("-q", "--quiet", is_flag=True,
              help="Errors and warnings only (also accepted after the command).")
@click.pass_context
def main(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Prune trained PyTorch ReLU networks with Net-Trim (convex, layer by layer).

    -v and -q work before the command or after it (nettrim prune ... -q)."""
    logging.basicConfig(level=logging.ERROR if quiet else logging.INFO if verbose
                        else logging.WARNING, format="nettrim: %(message)s", stream=sys.stderr)
    if quiet:
        ctx.meta[QUIET] = True
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"nettrim: warning: {msg}\n"


for _command in (dump, prune, report, eval_cmd, finetune, export):
    main.add_command(add_verbosity_options(_command))



def run() -> None:
    """The ``nettrim`` command: a process of its own, so freed memory is kept for reuse
    (``execution/memory.py``) before the commands run."""
    keep_freed_memory()
    main()


__all__ = ["main", "run", "EXIT_BAD_INPUT"]
