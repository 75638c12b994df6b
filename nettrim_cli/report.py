"""The JSON report: build it from a prune result, read it back, render it (table, JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from typing import Any

import numpy as np

from nettrim_cli import __version__
from nettrim_cli.errors import BadInput
from nettrim_cli.trim import PruneResult

REPORT_FORMAT = "nettrim-report"
REPORT_VERSION = 1
PROGRAMS = {
    "relu": "eq. 3 (ReLU: misfit on the active set, inequalities on the inactive set)",
    "none": "least squares over all samples (no activation)",
}
CSV_COLUMNS = ["name", "kind", "activation", "program", "shape", "params", "nonzeros_before",
               "nonzeros_after", "sparsity", "epsilon", "lambda", "discrepancy",
               "relative_discrepancy", "seconds", "failed_columns"]


def _clean(x: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/Inf to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def build_report(result: PruneResult, inputs: dict[str, dict], solver: str,
                 seconds: float) -> dict:
    """The report documented in the README (format nettrim-report, version 1)."""
    s = result.settings
    layers = []
    for o in result.layers:
        info = o.info
        if o.W is None:
            layers.append({"name": info.name, "kind": info.kind, "activation": None,
                           "program": "kept (not pruned)", "note": info.note})
            continue
        sol = o.solution
        params = int(o.W.size)
        nnz_after = int(np.count_nonzero(o.W))
        lam = sol.lam
        summary = sol.summary()
        summary["seconds"] = round(o.seconds, 4)
        layers.append({
            "name": info.name,
            "kind": info.kind,
            "activation": info.activation,
            "program": PROGRAMS[info.activation],
            "shape": [int(o.W.shape[0]), int(o.W.shape[1])],
            "bias": o.b is not None,
            "params": params,
            "nonzeros_before": int(np.count_nonzero(o.W0)),
            "nonzeros_after": nnz_after,
            "sparsity": 1.0 - nnz_after / params if params else 0.0,
            "epsilon": o.epsilon,
            "lambda": lam,
            "constraint": sol.constraint,
            "discrepancy": o.discrepancy,
            "relative_discrepancy": o.discrepancy / o.y_norm if o.y_norm else 0.0,
            "output_norm": o.y_norm,
            "solver": summary,
        })
    settings = {
        "mode": s.mode, "epsilon": s.epsilon, "gamma": s.gamma if s.mode == "cascade" else None,
        "lambda": s.lam, "solver": solver, "zero_threshold": s.solver.zero_threshold,
        "osqp": asdict(s.solver.osqp), "search": asdict(s.solver.search),
    }
    return _clean({
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "nettrim_version": __version__,
        "mode": s.mode,
        "settings": settings,
        "inputs": inputs,
        "outputs": {},
        "seconds": seconds,
        "layers": layers,
        "network": result.network,
    })


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def load_report(path: str, text: str) -> dict:
    """Parse and check a report file's text (``path`` only names it in errors)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"not JSON ({e})", path) from e
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise BadInput("not a nettrim report (missing \"format\": \"nettrim-report\")", path)
    if data.get("format_version") != REPORT_VERSION:
        raise BadInput(f"report format_version {data.get('format_version')} not supported",
                       path)
    for key in ("layers", "network", "mode"):
        if key not in data:
            raise BadInput(f"report lacks {key!r}", path)
    if not isinstance(data["layers"], list):
        raise BadInput("report 'layers' is not a list", path)
    return data


def layer_rows(report: dict) -> list[dict]:
    rows = []
    for layer in report["layers"]:
        solver = layer.get("solver") or {}
        rows.append({
            "name": layer.get("name"), "kind": layer.get("kind"),
            "activation": layer.get("activation"), "program": layer.get("program"),
            "shape": "x".join(str(v) for v in layer.get("shape") or []) or None,
            "params": layer.get("params"), "nonzeros_before": layer.get("nonzeros_before"),
            "nonzeros_after": layer.get("nonzeros_after"), "sparsity": layer.get("sparsity"),
            "epsilon": layer.get("epsilon"), "lambda": layer.get("lambda"),
            "discrepancy": layer.get("discrepancy"),
            "relative_discrepancy": layer.get("relative_discrepancy"),
            "seconds": solver.get("seconds"),
            "failed_columns": len(solver.get("failed_columns") or []) if solver else None,
        })
    return rows


def render_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in layer_rows(report):
        w.writerow({k: ("" if v is None else (json.dumps(v) if isinstance(v, list) else v))
                    for k, v in row.items()})
    return buf.getvalue()


def _fmt(v: Any, pct: bool = False, secs: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "per col."
    if pct:
        return f"{100 * v:.1f}%"
    if secs:
        return f"{v:.1f}"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def render_table(report: dict, console) -> None:
    """Draw the report as rich tables on ``console``."""
    from rich.table import Table

    t = Table(title=f"nettrim {report['mode']} report", title_justify="left")
    for col in ("layer", "act", "shape", "nonzeros", "sparsity", "eps", "lambda", "disc.",
                "rel.", "failed", "s"):
        t.add_column(col, justify="left" if col in ("layer", "act") else "right",
                     no_wrap=True)
    for r in layer_rows(report):
        prog = r["activation"] or "kept"
        nz = (f"{r['nonzeros_before']}>{r['nonzeros_after']}"
              if r["nonzeros_after"] is not None else "-")
        t.add_row(str(r["name"]), prog, r["shape"] or "-", nz, _fmt(r["sparsity"], True),
                  _fmt(r["epsilon"]), _fmt(r["lambda"]), _fmt(r["discrepancy"]),
                  _fmt(r["relative_discrepancy"], True), _fmt(r["failed_columns"]),
                  _fmt(r["seconds"], secs=True))
    console.print(t)
    n = report["network"]
    lines = [
        f"weights: {n.get('nonzeros_before')} -> {n.get('nonzeros_after')} nonzero of "
        f"{n.get('params')} ({_fmt(n.get('pruned_fraction'), True)} pruned)",
        f"output discrepancy on the calibration set: {_fmt(n.get('discrepancy'))} "
        f"({_fmt(n.get('relative_discrepancy'), True)} of ||Y||)",
    ]
    if n.get("bound") is not None:
        lines.append(f"bound ({n.get('bound_formula')}): {_fmt(n.get('bound'))}; holds: "
                     f"{n.get('bound_holds')}")
    elif n.get("bound_note"):
        lines.append(f"bound: {n['bound_note']}")
    for line in lines:
        console.print(line)
