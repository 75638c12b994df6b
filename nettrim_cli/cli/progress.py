"""What the user sees while `nettrim prune` runs: the core calls back (``RunHooks``), this
module draws.

On a terminal: a rich display with a bar for the layers and one for the current layer's stage
(ADMM iterations, OSQP columns, polish rounds), each with the elapsed time and the time left
estimated from done against the expected count (for ADMM the iteration cap: an upper bound,
since it stops as soon as the support has settled). Off a terminal (a log file, nohup, CI):
one line when a layer starts, one when it ends, and one at least every ``interval`` seconds
while a layer runs. ``quiet`` silences both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import click


def _line(text: str) -> None:
    click.echo(f"nettrim: {text}", err=True)


class RunProgress:
    """The progress display of one run (a context manager); ``on_layer`` and ``on_columns``
    are the callbacks the method's ``RunHooks`` take."""

    def __init__(self, console, quiet: bool, interval: float = 30.0,
                 echo: Callable[[str], None] = _line, unit: str = "layer") -> None:
        self.console, self.quiet, self.interval, self.echo = console, quiet, interval, echo
        self.unit = f"{unit} " if unit else ""  # what on_layer counts (LC: its steps, named)
        self.tty = bool(console.is_terminal) and not quiet
        self.lines = not quiet and not self.tty
        self.layer: tuple[int, int, str] | None = None
        self.stage: tuple[str, int, int] | None = None
        self.t_layer = self.t_line = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.prog = None

    def __enter__(self) -> RunProgress:
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.prog = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("left"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
            self.prog.__enter__()
            self.ltask = self.prog.add_task("layers", total=1)
            self.ctask = self.prog.add_task("starting", total=1)
        elif self.lines:
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._end_layer()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self.prog is not None:
            self.prog.__exit__(exc_type, exc, tb)

    def _name(self) -> str:
        i, n, name = self.layer
        return f"{self.unit}{i + 1}/{n} ({name})"

    def _end_layer(self) -> None:
        if self.layer is not None and self.lines:
            with self._lock:
                self.echo(f"{self._name()}: done in {time.monotonic() - self.t_layer:.1f} s")
                self.t_line = time.monotonic()

    def on_layer(self, i: int, n: int, name: str) -> None:
        """A unit starts (the previous one, if any, has ended)."""
        self._end_layer()
        self.layer, self.stage = (i, n, name), None
        self.t_layer = time.monotonic()
        if self.prog is not None:
            self.prog.update(self.ltask, completed=i, total=n, description=f"{self.unit}{name}")
            self.prog.reset(self.ctask, total=1, description="starting")
        if self.lines:
            with self._lock:
                self.echo(f"{self._name()}: started")
                self.t_line = time.monotonic()

    def on_columns(self, stage: str, done: int, total: int) -> None:
        """Progress within the unit: ``done`` of ``total`` in ``stage``."""
        if self.stage is not None and self.stage[0] != stage and self.prog is not None:
            self.prog.reset(self.ctask, total=total, description=stage)
        self.stage = (stage, done, total)
        if self.prog is not None:
            self.prog.update(self.ctask, completed=done, total=total, description=stage)

    def on_step(self, line: str) -> None:
        """One line after a stage of a run of many (e.g. a trial of the sparsity search): the
        stage's last unit has ended, so its "done" line comes first."""
        if self.quiet:
            return
        self._end_layer()
        self.layer, self.stage = None, None
        if self.prog is not None:
            self.prog.console.print(f"nettrim: {line}", highlight=False)
        else:
            with self._lock:
                self.echo(line)
                self.t_line = time.monotonic()

    def _heartbeat(self) -> None:
        """Off a terminal: a line at least every ``interval`` seconds during a layer."""
        step = min(1.0, self.interval / 4)
        while not self._stop.wait(step):
            with self._lock:
                now = time.monotonic()
                if self.layer is None or now - self.t_line < self.interval:
                    continue
                where = ("" if self.stage is None
                         else f", {self.stage[0]} {self.stage[1]}/{self.stage[2]}")
                self.echo(f"{self._name()}: running{where}, {now - self.t_layer:.0f} s")
                self.t_line = now


# -v / -q: accepted before the command (``nettrim -q prune ...``) and after it
# (``nettrim prune ... -q``) for every command; either place sets the same run-wide flags.
QUIET, VERBOSE = "nettrim.quiet", "nettrim.verbose"


def _set_flag(key: str):
    def callback(ctx: click.Context, param, value: bool) -> bool:  # noqa: ARG001
        if value:
            ctx.find_root().meta[key] = True
            logging.getLogger().setLevel(logging.ERROR if key == QUIET else logging.INFO)
        return value

    return callback


def add_verbosity_options(command: click.Command) -> click.Command:
    """Give ``command`` -v/--verbose and, unless it has its own, -q/--quiet (both also
    recorded for ``quiet_requested``)."""
    names = {p.name for p in command.params}
    if "verbose" not in names:
        command.params.append(click.Option(["-v", "--verbose"], is_flag=True,
                                           expose_value=False, callback=_set_flag(VERBOSE),
                                           help="Log more to stderr."))
    if "quiet" not in names:
        command.params.append(click.Option(["-q", "--quiet"], is_flag=True,
                                           expose_value=False, callback=_set_flag(QUIET),
                                           help="Errors and warnings only."))
    return command


def quiet_requested(quiet: bool = False) -> bool:
    """True when -q was given to the command (``quiet``) or anywhere else on the line."""
    ctx = click.get_current_context(silent=True)
    return bool(quiet or (ctx is not None and ctx.find_root().meta.get(QUIET)))
