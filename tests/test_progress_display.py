"""What the user sees (issue 13): progress lines off a terminal (a line per layer at start
and end, and one at least every interval during a long layer), -q silencing them, -v/-q
accepted after every command, and the summary table at 80 columns with every number whole."""

from __future__ import annotations

import io
import re
import time

import pytest
from conftest import invoke
from rich.console import Console

from nettrim_cli.cli import main
from nettrim_cli.cli.progress import RunProgress
from nettrim_cli.report import render_table


def _report() -> dict:
    layer = {"name": "features.classifier.12", "activation": "relu", "shape": [1000, 3136],
             "params": 3136000, "nonzeros_before": 3136000, "nonzeros_after": 123456,
             "sparsity": 0.96063, "epsilon": 1234.5678, "lambda": 0.000123456,
             "discrepancy": 1233.9, "relative_discrepancy": 0.0499, "kind": "linear",
             "solver": {"seconds": 12345.6, "failed_columns": [{"column": 1}] * 17}}
    return {"method": "netrim", "mode": "parallel", "layers": [layer, dict(layer, name="2")],
            "network": {"params": 3136000, "nonzeros_before": 3136000,
                        "nonzeros_after": 123456, "pruned_fraction": 0.96, "discrepancy": 1.0,
                        "relative_discrepancy": 0.01}}


def test_the_summary_fits_80_columns_with_every_number_whole():
    buf = io.StringIO()
    render_table(_report(), Console(file=buf, width=80, force_terminal=False))
    text = buf.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text
    for number in ("123456", "96.1%", "1.23e+03", "5.0%", "17", "12345.6", "1000x3136"):
        assert number in text, number
    # a wide terminal gets every column, lambda and the absolute discrepancy included
    wide = io.StringIO()
    render_table(_report(), Console(file=wide, width=160, force_terminal=False))
    assert "0.000123" in wide.getvalue() and "3136000>123456" in wide.getvalue()


def test_off_a_terminal_a_line_per_layer_and_a_heartbeat():
    lines: list[str] = []
    console = Console(file=io.StringIO(), force_terminal=False)
    with RunProgress(console, quiet=False, interval=0.2, echo=lines.append) as shown:
        shown.on_layer(0, 2, "fc1")
        shown.on_columns("admm iterations", 40, 2000)
        time.sleep(0.7)  # a long layer: at least one "running" line
        shown.on_layer(1, 2, "fc2")
    assert lines[0] == "layer 1/2 (fc1): started"
    running = [ln for ln in lines if "running" in ln]
    assert running and running[0].startswith("layer 1/2 (fc1): running, admm iterations 40/2000")
    assert re.fullmatch(r"layer 1/2 \(fc1\): done in [0-9.]+ s", lines[len(running) + 1])
    assert lines[-2] == "layer 2/2 (fc2): started"
    assert re.fullmatch(r"layer 2/2 \(fc2\): done in [0-9.]+ s", lines[-1])


def test_a_step_line_comes_after_its_last_layer_is_done():
    """Off a terminal, a sparsity-search trial ends with its last layer: that layer's "done"
    line first, then the trial's line, and no second "done" at the end of the run."""
    lines: list[str] = []
    console = Console(file=io.StringIO(), force_terminal=False)
    with RunProgress(console, quiet=False, interval=30.0, echo=lines.append) as shown:
        shown.on_layer(0, 1, "fc1")
        shown.on_step("sparsity search, trial 1: eps 0.05")
        shown.on_layer(0, 1, "fc1")
        shown.on_step("sparsity search, trial 2: eps 0.03")
    assert [ln.split(":")[0] for ln in lines] == [
        "layer 1/1 (fc1)", "layer 1/1 (fc1)", "sparsity search, trial 1",
        "layer 1/1 (fc1)", "layer 1/1 (fc1)", "sparsity search, trial 2"]
    assert lines[1].startswith("layer 1/1 (fc1): done in")
    assert lines[4].startswith("layer 1/1 (fc1): done in")


def test_quiet_prints_nothing():
    lines: list[str] = []
    console = Console(file=io.StringIO(), force_terminal=False)
    with RunProgress(console, quiet=True, interval=0.05, echo=lines.append) as shown:
        shown.on_layer(0, 1, "fc1")
        time.sleep(0.2)
    assert lines == []


@pytest.mark.parametrize("flag", ["-v", "-q", "--verbose", "--quiet"])
def test_every_command_takes_verbosity_after_it(flag):
    for name, command in main.commands.items():
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        assert flag in opts, (name, flag)


def test_prune_off_a_terminal_and_with_q_after_the_command(assets, tmp_path):
    a = assets
    r = invoke("prune", a.model, "--acts", a.acts, "--mode", "parallel", "--epsilon", "0.1",
               "-o", tmp_path / "p.pt")
    assert r.exit_code == 0, r.stderr
    assert "layer 1/2 (1): started" in r.stderr and "layer 2/2 (3): done in" in r.stderr
    r = invoke("prune", a.model, "--acts", a.acts, "--mode", "parallel", "--epsilon", "0.1",
               "-o", tmp_path / "q.pt", "-q")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    r = invoke("-q", "prune", a.model, "--acts", a.acts, "--epsilon", "0.1", "-o",
               tmp_path / "q2.pt")
    assert r.exit_code == 0 and r.stderr == ""
