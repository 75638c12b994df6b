"""`nettrim dump`: record each prunable layer's input and output on calibration data."""

from __future__ import annotations

import time

import click

from nettrim_cli.atomic import atomic_path, check_output_path
from nettrim_cli.cli.common import (
    handle_errors,
    load_ckpt,
    progress_bars,
    stderr_console,
    with_ckpt_options,
)
from nettrim_cli.cli.progress import quiet_requested
from nettrim_cli.errors import BadInput


@click.command()
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

    from nettrim_cli.dump import load_array_file, write_dump
    from nettrim_cli.graph import trace_layers

    if output == "-":
        raise BadInput("an HDF5 dump cannot be written to stdout; give a file name", output)
    check_output_path(output, force, inputs=(model, inputs_path, labels_path))
    ckpt = load_ckpt(model, arch, trust_checkpoint)
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
    console = stderr_console()
    t0 = time.perf_counter()
    quiet = quiet_requested()
    with progress_bars(console, quiet) as prog, atomic_path(output) as tmp:
        task = prog.add_task("dump", total=x.shape[0])
        write_dump(tmp, ckpt.model, layers, x, y, ckpt.sha256, batch_size, source=model,
                   progress=lambda _s, done, total: prog.update(task, completed=done))
    pr = [la for la in layers if la.prunable]
    if not quiet:
        console.print(f"nettrim: wrote {output}: {x.shape[0]} samples, {len(pr)} prunable "
                      f"layers ({', '.join(f'{la.name}:{la.activation}' for la in pr)}) in "
                      f"{time.perf_counter() - t0:.1f} s")
    for la in pr:
        if la.note:
            click.echo(f"nettrim: warning: layer {la.name}: {la.note}", err=True)
