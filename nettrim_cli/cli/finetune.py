"""`nettrim finetune`: train a pruned checkpoint with its zeros frozen."""

from __future__ import annotations

import time

import click

from nettrim_cli import __version__
from nettrim_cli.atomic import sha256_file
from nettrim_cli.cli.common import (
    check_two_outputs,
    handle_errors,
    load_ckpt,
    progress_bars,
    stderr_console,
    with_ckpt_options,
    write_checkpoint_and_json,
)
from nettrim_cli.cli.progress import quiet_requested
from nettrim_cli.recipe import DEFAULT_EPOCHS, DEFAULT_LR, SCHEDULES


@click.command()
@click.argument("pruned", metavar="PRUNED")
@click.option("--data", "data_path", required=True,
              help="Labelled training data (.h5 /inputs and /labels, or .npz inputs/labels).")
@click.option("--epochs", default=DEFAULT_EPOCHS, show_default=True, type=click.IntRange(0),
              help="Passes over the data (the default recipe: see the README).")
@click.option("-o", "--output", required=True, help="Fine-tuned checkpoint ('-': stdout).")
@click.option("--lr", default=DEFAULT_LR, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Initial learning rate.")
@click.option("--schedule", type=click.Choice(list(SCHEDULES)), default="cosine",
              show_default=True,
              help="Learning rate: cosine decay to 0 over the epochs, or constant.")
@click.option("--val-split", default=0.0, show_default=True, type=click.FloatRange(0, 1,
              max_open=True),
              help="Hold out this fraction (seeded) and keep the epoch best on it.")
@click.option("--patience", type=click.IntRange(1),
              help="With --val-split: stop after this many epochs without a better "
                   "validation accuracy.")
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
def finetune(pruned, data_path, epochs, output, lr, schedule, val_split, patience, batch_size,
             seed, optimizer, weight_decay, summary_path, force, quiet, arch, trust_checkpoint):
    """Train a pruned checkpoint with its zero weights frozen at zero.

    Example: nettrim finetune pruned.pt --data train.npz -o tuned.pt --summary tuned.json
    """
    from nettrim_cli.evaluate import check_fits, load_labelled
    from nettrim_cli.finetune import finetune as run_finetune
    from nettrim_cli.recipe import Recipe

    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, optimizer=optimizer,
                    weight_decay=weight_decay, schedule=schedule, val_split=val_split,
                    patience=patience)
    check_two_outputs(output, summary_path, "--summary", force, (pruned, data_path))
    ckpt = load_ckpt(pruned, arch, trust_checkpoint)
    x, y = load_labelled(data_path)
    check_fits(ckpt.model, x, y, data_path, pruned)
    console = stderr_console()
    quiet = quiet_requested(quiet)
    with progress_bars(console, quiet) as prog:
        task = prog.add_task("epoch", total=max(1, epochs * len(x)))

        def on_batch(epoch, done, n, loss):
            prog.update(task, completed=epoch * n + done,
                        description=f"epoch {epoch + 1}/{epochs} loss {loss:.4f}")

        started = time.perf_counter()

        def epoch_line(epoch, loss, val):  # off a terminal: one log line per epoch
            click.echo(f"nettrim: epoch {epoch + 1}/{epochs}: loss {loss:.4f}"
                       + ("" if val is None else f", validation accuracy {100 * val:.2f}%")
                       + f" ({time.perf_counter() - started:.1f} s elapsed)", err=True)

        lines = None if quiet or console.is_terminal else epoch_line
        figures = run_finetune(ckpt.model, x, y, recipe, on_batch, lines)
    summary = {
        "format": "nettrim-finetune", "version": 1, "nettrim_version": __version__,
        "inputs": {"model": {"path": pruned, "sha256": ckpt.sha256},
                   "data": {"path": data_path, "sha256": sha256_file(data_path)}},
        "outputs": {},
        "epochs": epochs,
        "settings": {"lr": lr, "schedule": schedule, "batch_size": batch_size, "seed": seed,
                     "optimizer": optimizer, "momentum": 0.9 if optimizer == "sgd" else None,
                     "weight_decay": weight_decay, "val_split": val_split,
                     "patience": patience},
        "samples": int(len(x)),
        **figures,
    }
    from nettrim_cli.report import _clean

    summary = _clean(summary)
    write_checkpoint_and_json(ckpt, ckpt.model, output, summary_path, summary,
                               ("outputs", "checkpoint"))
    if not quiet:
        cost = figures["cost"]
        kept = figures.get("validation")
        if kept is not None:
            click.echo(f"nettrim: kept epoch {kept['best_epoch']} (validation accuracy "
                       f"{100 * max(kept['accuracy_per_epoch']):.2f}% on {kept['samples']} "
                       "held-out samples)" + (", stopped early" if kept["stopped_early"] else ""),
                       err=True)
        click.echo(f"nettrim: fine-tuned {cost['epochs']} epoch(s) x {cost['samples']} samples "
                   f"in {figures['seconds']:.1f} s of training: "
                   f"training accuracy {100 * figures['train_accuracy_before']:.2f}% -> "
                   f"{100 * figures['train_accuracy']:.2f}%, nonzero weights "
                   f"{figures['nonzeros_before']} -> {figures['nonzeros_after']}", err=True)

