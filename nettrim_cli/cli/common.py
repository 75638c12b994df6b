"""What every command shares: one-line errors with documented exit codes, the checkpoint
options, progress display, and atomic writing of a checkpoint with its JSON."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys

import click

from nettrim_cli.atomic import atomic_path, check_output_path, sha256_file
from nettrim_cli.errors import EXIT_FAILURE, BadInput, NettrimError, interrupt_behind


def text_console(stderr: bool = False):
    """rich's console for stderr or stdout; off a terminal 140 columns for tables (no number
    truncated) and no hard wrapping of text lines (a log line stays one line for grep)."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=140, soft_wrap=True)


def stderr_console():
    return text_console(stderr=True)


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
            if interrupt_behind(e) is not None:
                click.echo("nettrim: interrupted; no output was written", err=True)
                sys.exit(130)
            if os.environ.get("NETTRIM_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (set NETTRIM_DEBUG=1 for a "
                  "traceback)", EXIT_FAILURE)

    return wrapper



def load_ckpt(model: str, arch: str | None, trust: bool):
    from nettrim_cli.checkpoint import load_checkpoint

    return load_checkpoint(model, arch=arch, trust=trust)


ckpt_options = [
    click.option("--arch", metavar="PKG.MODULE:FACTORY",
                 help="Build the model for a state_dict or .safetensors checkpoint: "
                      "FACTORY() from PKG.MODULE, found in the current directory first, as "
                      "`python -m` finds modules."),
    click.option("--trust-checkpoint", is_flag=True,
                 help="Allow arbitrary unpickling (runs code from the file)."),
]


def with_ckpt_options(fn):
    for opt in reversed(ckpt_options):
        fn = opt(fn)
    return fn


@contextlib.contextmanager
def progress_bars(console, quiet: bool = False):
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


def write_checkpoint_and_json(ckpt, model, output: str, json_path: str | None, doc: dict,
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
            notes = save_checkpoint(ckpt, model, buf)
            data = buf.getvalue()
            slot[out_key[-1]] = {"path": "-", "sha256": hashlib.sha256(data).hexdigest()}
        else:
            tmp = stack.enter_context(atomic_path(output))
            notes = save_checkpoint(ckpt, model, tmp)
            slot[out_key[-1]] = {"path": output, "sha256": sha256_file(tmp)}
        text = report_json(doc)
        if json_path and json_path != "-":
            jtmp = stack.enter_context(atomic_path(json_path))
            with open(jtmp, "w") as fh:
                fh.write(text)
    for line in notes:  # e.g. an optimizer's state cleared (checkpoint.save_checkpoint)
        click.echo(f"nettrim: note: {line}", err=True)
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    if json_path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()


def check_two_outputs(output: str, other: str | None, flag: str, force: bool,
                       inputs: tuple) -> None:
    if output == "-" and other == "-":
        raise BadInput(f"only one of -o and {flag} can be '-' (stdout)")
    check_output_path(output, force, inputs=inputs)
    if other:
        check_output_path(other, force, inputs=inputs)
        if other != "-" and output != "-" and os.path.abspath(other) == os.path.abspath(output):
            raise BadInput(f"{flag} and -o name the same file", other)

