"""The JSON report: build it from a prune result, read it back, render it (table, JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

import numpy as np

from nettrim_cli import __version__
from nettrim_cli.errors import BadInput
from nettrim_cli.methods.base import MethodResult

REPORT_FORMAT = "nettrim-report"
REPORT_VERSION = 1
CSV_COLUMNS = ["name", "kind", "activation", "program", "shape", "params", "nonzeros_before",
               "nonzeros_after", "sparsity", "epsilon", "lambda", "discrepancy",
               "relative_discrepancy", "seconds", "failed_columns", "flops_dense",
               "flops_pruned", "rows", "rows_total", "discrepancy_all"]


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


def _kept_entry(info) -> dict:
    """A traced layer that is not pruned (norms, ...): its kind, weight shape and params."""
    return {"name": info.name, "kind": info.kind, "activation": None,
            "program": "kept (not pruned)", "note": info.note,
            "weight_shape": list(info.weight_shape), "kept_params": info.params}


def _layer_entry(info, program: str, W: np.ndarray, W0: np.ndarray, bias: bool) -> dict:
    """The per-layer fields every method reports: identity, shape and weight counts."""
    from nettrim_cli.methods.network import unit_flops

    params = int(W.size)
    nnz_after = int(np.count_nonzero(W))
    return {
        "weight_shape": list(info.weight_shape),
        "flops_dense": info.flops,
        "flops_pruned": unit_flops(info.flops, W),
        "name": info.name,
        "kind": info.kind,
        "activation": info.activation,
        "program": program,
        "shape": [int(W.shape[0]), int(W.shape[1])],
        "bias": bias,
        "params": params,
        "nonzeros_before": int(np.count_nonzero(W0)),
        "nonzeros_after": nnz_after,
        "sparsity": 1.0 - nnz_after / params if params else 0.0,
    }


def build_report(result: MethodResult, all_layers: list, inputs: dict[str, dict],
                 seconds: float) -> dict:
    """The report documented in the README (format nettrim-report, version 1) for any
    method's result. ``all_layers``: the checkpoint's traced layers, in forward order (those
    not pruned are listed as kept). What does not apply to a method (eps, lambda, the bound)
    is null."""
    pruned = {o.info.name: o for o in result.layers}
    layers = []
    for info in all_layers:
        o = pruned.get(info.name)
        if o is None:
            layers.append(_kept_entry(info))
            continue
        if o.solution is not None:
            solver = o.solution.summary()
            solver["seconds"] = round(o.seconds, 4)
        else:
            solver = {"name": result.method, "seconds": round(o.seconds, 4)}
        layers.append({
            **_layer_entry(info, o.program, o.W, o.W0, o.b is not None),
            **o.record,
            "discrepancy": o.discrepancy,
            "relative_discrepancy": o.discrepancy / o.y_norm if o.y_norm else 0.0,
            "output_norm": o.y_norm,
            "solver": solver,
        })
    return _clean({
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "nettrim_version": __version__,
        "method": result.method,
        "mode": result.mode,
        "settings": result.settings,
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
    def no_constant(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(text, parse_constant=no_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise BadInput(f"not JSON ({str(e).splitlines()[0][:200]})", path) from e
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
    _check_fields(data, path)
    return data


_NUMBER = (int, float)
_TEXT = (str,)
# the fields the renderers read, and the JSON types each may hold (None always allowed)
_LAYER_FIELDS = {**dict.fromkeys(("name", "kind", "activation", "program"), _TEXT),
                 **dict.fromkeys(("params", "nonzeros_before", "nonzeros_after", "sparsity",
                                  "epsilon", "discrepancy", "relative_discrepancy"), _NUMBER),
                 "lambda": (*_NUMBER, list), "shape": (list,), "solver": (dict,)}
_NETWORK_FIELDS = {**dict.fromkeys(("params", "nonzeros_before", "nonzeros_after",
                                    "pruned_fraction", "discrepancy", "relative_discrepancy",
                                    "bound"), _NUMBER),
                   "bound_formula": _TEXT, "bound_note": _TEXT, "bound_holds": (bool,)}


def read_report_file(path: str) -> dict:
    """Read and validate the report file at ``path`` (BadInput naming it when it is not one)."""
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


def _check_fields(data: dict, path: str) -> None:
    """A report whose fields have the wrong JSON types is refused here, naming the field,
    instead of failing half-way through rendering."""

    def check(obj: dict, spec: dict, where: str) -> None:
        for key, types in spec.items():
            v = obj.get(key)
            if v is not None and not isinstance(v, types):
                raise BadInput(f"report field {where}{key} has type {type(v).__name__}, "
                               f"expected {' or '.join(t.__name__ for t in types)}", path)

    if not isinstance(data["mode"], str):
        raise BadInput("report field 'mode' is not a string", path)
    if not isinstance(data["network"], dict):
        raise BadInput("report field 'network' is not an object", path)
    check(data["network"], _NETWORK_FIELDS, "network.")
    for i, layer in enumerate(data["layers"]):
        if not isinstance(layer, dict):
            raise BadInput(f"report field layers[{i}] is not an object", path)
        check(layer, _LAYER_FIELDS, f"layers[{i}].")
        if isinstance(layer.get("lambda"), list) and not all(
                v is None or isinstance(v, _NUMBER) for v in layer["lambda"]):
            raise BadInput(f"report field layers[{i}].lambda holds a non-number", path)
        check(layer.get("solver") or {}, {"seconds": _NUMBER, "failed_columns": (list,)},
              f"layers[{i}].solver.")


def layer_rows(report: dict) -> list[dict]:
    rows = []
    for layer in report["layers"]:
        solver = layer.get("solver") or {}
        rows.append({
            "name": layer.get("name"), "kind": layer.get("kind"),
            "activation": layer.get("activation"), "program": layer.get("program"),
            "shape": "x".join(str(v) for v in layer.get("shape") or layer.get("weight_shape")
                              or []) or None,
            "params": layer.get("params"), "nonzeros_before": layer.get("nonzeros_before"),
            "nonzeros_after": layer.get("nonzeros_after"), "sparsity": layer.get("sparsity"),
            "epsilon": layer.get("epsilon"), "lambda": layer.get("lambda"),
            "discrepancy": layer.get("discrepancy"),
            "relative_discrepancy": layer.get("relative_discrepancy"),
            "seconds": solver.get("seconds"),
            "failed_columns": len(solver.get("failed_columns") or []) if solver else None,
            "flops_dense": layer.get("flops_dense"), "flops_pruned": layer.get("flops_pruned"),
            "rows": layer.get("rows"), "rows_total": layer.get("rows_total"),
            "discrepancy_all": layer.get("discrepancy_all"),
            "kept_params": layer.get("kept_params"),
        })
    return rows


def render_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in layer_rows(report):
        w.writerow({k: ("" if v is None else (json.dumps(v) if isinstance(v, list) else v))
                    for k, v in row.items() if k in CSV_COLUMNS})
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


def _ratio(a: Any, b: Any) -> float | None:
    ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0
    return a / b if ok else None


def _count(v: Any) -> str:
    """A large count in k / M / G."""
    if not isinstance(v, (int, float)):
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.3g}{unit}"
    return str(v)


# the table's columns (heading, row key, format) at full width, and the ones kept on a
# terminal narrower than FULL_WIDTH (80 columns fit; the JSON and CSV keep every field)
FULL_WIDTH = 110
_COLUMNS = {
    "layer": ("name", None), "act": ("activation", None), "shape": ("shape", None),
    "nonzeros": ("nonzeros", None), "kept": ("nonzeros_after", None),
    "sparsity": ("sparsity", "pct"), "eps": ("epsilon", None), "lambda": ("lambda", None),
    "disc.": ("discrepancy", None), "rel.": ("relative_discrepancy", "pct"),
    "failed": ("failed_columns", None), "s": ("seconds", "secs"), "MACs": ("flops_dense", None),
}
_FULL = ("layer", "act", "shape", "nonzeros", "sparsity", "MACs", "eps", "lambda", "disc.",
         "rel.", "failed", "s")
_NARROW = ("layer", "act", "shape", "kept", "sparsity", "eps", "rel.", "failed", "s")


def _cell(r: dict, col: str) -> str:
    key, how = _COLUMNS[col]
    if col == "act":
        return r["activation"] or "kept"
    if col == "nonzeros":
        return (f"{r['nonzeros_before']}>{r['nonzeros_after']}"
                if r["nonzeros_after"] is not None
                else f"{r['kept_params']} kept" if r["kept_params"] is not None else "-")
    if col == "MACs":
        return (f"{_count(r['flops_dense'])}>{_count(r['flops_pruned'])}"
                if r["flops_dense"] is not None else "-")
    if col == "shape":
        return r["shape"] or "-"
    if col == "layer":
        return str(r["name"])
    return _fmt(r[key], pct=how == "pct", secs=how == "secs")


def render_table(report: dict, console) -> None:
    """Draw the report as rich tables on ``console``: every column from FULL_WIDTH terminal
    columns up, the narrow set (no lambda, no absolute discrepancy, kept weights only) below,
    so that an 80-column terminal shows every number whole."""
    from rich import box
    from rich.table import Table

    method = report.get("method", "netrim")
    title = (f"nettrim {report['mode']} report" if method == "netrim"
             else f"{method} baseline report (nettrim)")
    narrow = console.width < FULL_WIDTH
    cols = _NARROW if narrow else _FULL
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD)
    for col in cols:
        t.add_column(col, justify="left" if col in ("layer", "act") else "right",
                     no_wrap=col != "layer", overflow="fold")
    for r in layer_rows(report):
        t.add_row(*(_cell(r, col) for col in cols))
    console.print(t)
    n = report["network"]
    lines = [
        f"weights: {n.get('nonzeros_before')} -> {n.get('nonzeros_after')} nonzero of "
        f"{n.get('params')} ({_fmt(n.get('pruned_fraction'), True)} pruned)",
        f"output discrepancy on the calibration set: {_fmt(n.get('discrepancy'))} "
        f"({_fmt(n.get('relative_discrepancy'), True)} of ||Y||)",
    ]
    m = n.get("model")
    if isinstance(m, dict):
        pruned = m.get("pruned_layers")
        names = ", ".join(map(str, pruned)) if isinstance(pruned, list) else str(pruned or "")
        lines.insert(1, f"whole model: {m.get('nonzeros_after')} of {m.get('params')} parameters "
                        f"nonzero ({_fmt(m.get('zero_fraction'), True)} zero; every weight, bias "
                        f"and norm); pruned layers: {names}")
    if n.get("flops_dense") is not None:
        lines.insert(2, f"multiply-adds per sample (pruned units): {_count(n['flops_dense'])} "
                        f"dense -> {_count(n.get('flops_pruned'))} with the nonzero weights")
    for la in report["layers"]:
        if not isinstance(la.get("rows"), int) or la.get("rows") == la.get("rows_total"):
            continue
        lines.append(f"layer {la['name']}: program on {la['rows']} of {la.get('rows_total')} "
                     f"patches (eps {_fmt(la.get('epsilon'))}, "
                     f"{_fmt(_ratio(la.get('epsilon'), la.get('output_norm')), True)} of ||Y|| "
                     f"there); on all patches the discrepancy is "
                     f"{_fmt(la.get('discrepancy_all'))}, "
                     f"{_fmt(_ratio(la.get('discrepancy_all'), la.get('output_norm_all')), True)}"
                     " of ||Y||")
    if n.get("bound") is not None:
        lines.append(f"bound ({n.get('bound_formula')}): {_fmt(n.get('bound'))}; holds: "
                     f"{n.get('bound_holds')}")
    elif n.get("bound_note"):
        lines.append(f"bound: {n['bound_note']}")
    for line in lines:
        console.print(line)


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib, the optional extra `plots`)

PLOTS_HINT = "matplotlib is needed for --plot: pip install 'nettrim[plots]'"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise BadInput(PLOTS_HINT) from e
    return plt


def pattern_weights(path: str, report: dict, trust: bool = False) -> dict[str, np.ndarray]:
    """The weight matrices of the report's pruned layers, read from a pruned checkpoint in any
    form (checkpoint.read_state_dict; no --arch needed: only the tensors are read)."""
    from nettrim_cli.checkpoint import read_state_dict

    sd = read_state_dict(path, trust)  # every checkpoint form, safetensors and exports too
    out = {}
    for layer in report["layers"]:
        if not layer.get("shape") or layer.get("nonzeros_after") is None:
            continue
        key = f"{layer['name']}.weight"
        t = sd.get(key)
        if t is not None and t.dim() > 2:  # a conv weight: its (out, in * kernel) matrix view
            t = t.reshape(t.shape[0], -1)
        if t is None or list(t.shape) != list(layer["shape"]):
            got = "missing" if t is None else f"of shape {list(t.shape)}"
            raise BadInput(f"checkpoint does not belong to the report: {key} is {got}, the "
                           f"report says {layer['shape']}", path)
        out[layer["name"]] = t.detach().cpu().double().numpy()
    return out


def plot_names(report: dict, weights: dict | None) -> list[str]:
    names = ["sparsity.png", "discrepancy.png"]
    for name in (weights or {}):
        names.append(f"pattern_{_safe(name)}.png")
    return names


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "layer"


def write_plots(report: dict, out_dir: str, weights: dict | None = None) -> list[str]:
    """Bar charts of per-layer sparsity and relative discrepancy, and (with ``weights``) the
    nonzero pattern of each pruned weight matrix, as PNG files in ``out_dir``; each file is
    written atomically. Returns the paths written."""
    import os

    from nettrim_cli.atomic import atomic_path

    plt = _pyplot()
    rows = [r for r in layer_rows(report) if r["nonzeros_after"] is not None]
    labels = [str(r["name"]) for r in rows]
    method = report.get("method", "netrim")
    written = []

    def save(fig, name):
        dest = os.path.join(out_dir, name)
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(dest)

    for key, title, name in (("sparsity", "fraction of weights pruned", "sparsity.png"),
                             ("relative_discrepancy", "||Yhat - Y||_F / ||Y||_F",
                              "discrepancy.png")):
        fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(rows) + 2), 3.2))
        vals = [r[key] if r[key] is not None else 0.0 for r in rows]
        ax.bar(range(len(rows)), vals, color="tab:blue")
        ax.set_xticks(range(len(rows)), labels, rotation=45 if len(rows) > 6 else 0)
        ax.set_xlabel("layer")
        ax.set_ylabel(title)
        ax.set_title(f"{method}: {title}")
        save(fig, name)
    for lname, W in (weights or {}).items():
        h, w = W.shape
        scale = 6.0 / max(h, w)
        fig, ax = plt.subplots(figsize=(max(2.5, w * scale + 1), max(2.0, h * scale + 0.8)))
        ax.imshow(W != 0, cmap="Greys", interpolation="nearest", aspect="auto")
        nnz = int(np.count_nonzero(W))
        ax.set_title(f"layer {lname}: {nnz} of {W.size} nonzero")
        ax.set_xlabel("input")
        ax.set_ylabel("output")
        save(fig, f"pattern_{_safe(lname)}.png")
    return written
