"""`nettrim eval`: accuracy and loss of a checkpoint on labelled data, with noise."""

from __future__ import annotations

import io
import sys

import click

from nettrim_cli.atomic import check_output_path, sha256_file
from nettrim_cli.cli.common import (
    handle_errors,
    load_ckpt,
    text_console,
    with_ckpt_options,
)


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


@click.command(name="eval")
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
@click.option("--sparse", is_flag=True,
              help="Run pruned Linear layers (>= 85% zeros) as sparse CSR products on CPU, "
                   "the opt-in inference path of nettrim_cli.export.sparse_model.")
@with_ckpt_options
@handle_errors
def eval_cmd(model, data_path, noise, seed, batch_size, fmt, output, force, sparse, arch,
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
        model_dtype,
        parse_noise,
    )
    from nettrim_cli.report import _clean

    levels = parse_noise(noise)
    if output:
        check_output_path(output, force, inputs=(model, data_path))
    ckpt = load_ckpt(model, arch, trust_checkpoint)
    x, y = load_labelled(data_path)
    check_fits(ckpt.model, x, y, data_path, model)
    run, inference = (_sparse(ckpt.model, model) if sparse else (ckpt.model, None))
    results = evaluate(run, x, y, levels, seed, batch_size, dtype=model_dtype(ckpt.model))
    doc = _clean({"format": EVAL_FORMAT, "version": EVAL_VERSION,
                  "model": {"path": model, "sha256": ckpt.sha256},
                  "data": {"path": data_path, "sha256": sha256_file(data_path)},
                  "samples": int(len(x)), "seed": seed, "results": results,
                  **({"inference": inference} if inference else {})})
    if fmt == "table" and not output:
        console = text_console()
        console.print(_eval_text(doc, "table", width=console.width), end="")
        return
    text = _eval_text(doc, fmt)
    if output and output != "-":
        write_bytes_atomic(output, text.encode())
    else:
        sys.stdout.write(text)



def _sparse(model, path: str):
    """The model with its pruned Linear layers as sparse products, what the JSON records about
    it, and one line on stderr saying which layers run sparse (none is said too)."""
    from nettrim_cli.export.inference import DEFAULT_MIN_SPARSITY, sparse_layers, sparse_model

    sparse, dense = sparse_layers(model)
    if sparse:
        line = (f"--sparse: {len(sparse)} of {len(sparse) + len(dense)} Linear layers run as "
                f"sparse products ({', '.join(sparse)})")
        line += f"; dense: {', '.join(dense)}" if dense else ""
    else:
        line = (f"--sparse: no Linear layer of {path} has {DEFAULT_MIN_SPARSITY:.0%} zeros or "
                "more (in float32/float64), so every layer runs dense")
    click.echo(f"nettrim: note: {line}; conv layers stay dense", err=True)
    return sparse_model(model), {"sparse": True, "sparse_layers": sparse, "dense_layers": dense,
                                 "min_sparsity": DEFAULT_MIN_SPARSITY}
