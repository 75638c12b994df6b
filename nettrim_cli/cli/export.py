"""`nettrim export`: write a pruned checkpoint with its pruned weights stored sparse."""

from __future__ import annotations

import click

from nettrim_cli.atomic import check_output_path
from nettrim_cli.cli.common import handle_errors, stderr_console, with_ckpt_options


@click.command(name="export")
@click.argument("pruned", metavar="PRUNED")
@click.option("-o", "--output", required=True, help="The export to write ('-': stdout).")
@click.option("--format", "fmt", default=None,
              help="torch: a torch.save file that plain torch.load(weights_only=True) reads; "
                   "safetensors: plain tensors plus a description in the header. Default: "
                   "safetensors for a .safetensors checkpoint, torch for any other.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@with_ckpt_options
@handle_errors
def export(pruned, output, fmt, force, arch, trust_checkpoint):
    """Store a pruned checkpoint's pruned weights (Linear and conv) sparse, everything else as
    it was. Any command that takes a checkpoint takes the export too; the README shows how to
    load it into your model with plain torch.

    Example: nettrim export pruned.pt -o pruned.sparse.pt
    """
    from nettrim_cli.export.writer import export_file, make_format

    if fmt is not None:
        make_format(fmt)  # an unknown format is refused before anything is read
    check_output_path(output, force, inputs=(pruned,))
    s = export_file(pruned, output, fmt, arch=arch, trust=trust_checkpoint)
    size = f"{s.output_bytes:,} bytes"
    if s.input_bytes:
        size += f", {s.ratio:.1%} of {pruned} ({s.input_bytes:,} bytes)"
    stderr_console().print(
        f"nettrim: wrote {output} ({s.format}): {s.sparse_weights} weights stored sparse "
        f"({s.sparsity:.1%} zeros), {s.dense_tensors} other tensors as they were; {size}",
        highlight=False, soft_wrap=True)
