"""``nettrim export``'s core: load a pruned checkpoint, encode it, write it atomically, and say
what was stored sparse and how large the file is against the input."""

from __future__ import annotations

import os
from dataclasses import dataclass

from nettrim_cli.atomic import write_bytes_atomic
from nettrim_cli.export.archive import Export, export_checkpoint
from nettrim_cli.export.formats import DEFAULT_FORMAT, FORMATS, ExportFormat
from nettrim_cli.registry import lookup


@dataclass(frozen=True)
class ExportSummary:
    """What one export stored: counts and sizes for the CLI to render."""

    path: str
    format: str
    sparse_weights: int  # weights stored sparse
    dense_tensors: int  # every other state_dict tensor, stored as it was
    sparsity: float  # fraction of zeros over the weights stored sparse
    input_bytes: int
    output_bytes: int

    @property
    def ratio(self) -> float:
        """The output's size as a fraction of the input checkpoint's."""
        return self.output_bytes / self.input_bytes if self.input_bytes else float("nan")


def make_format(name: str) -> ExportFormat:
    """The format registered as ``name`` (BadInput naming the choices when unknown)."""
    return lookup(FORMATS, name, "export format")()


def export_file(src: str, dest: str, fmt: str | None = "torch", arch: str | None = None,
                trust: bool = False) -> ExportSummary:
    """Export the pruned checkpoint at ``src`` to ``dest`` (``-``: stdout) in format ``fmt``
    (None: ``safetensors`` for a ``.safetensors`` checkpoint, else the default ``torch``).

    The checkpoint is loaded and checked as every command loads one (``load_checkpoint``:
    ``arch`` builds the model of a state_dict); an unpruned one is refused. Nothing is
    written unless the whole export succeeds.
    """
    from nettrim_cli.checkpoint import load_checkpoint  # checkpoint imports this package

    if fmt is not None:
        make_format(fmt)  # an unknown name is refused before the checkpoint is read
    ckpt = load_checkpoint(src, arch=arch, trust=trust)
    if fmt is None:
        fmt = "safetensors" if ckpt.file_format == "safetensors" else DEFAULT_FORMAT
    writer = make_format(fmt)
    export = export_checkpoint(ckpt)
    data = writer.encode(export)
    write_bytes_atomic(dest, data)
    return summarize(export, src, dest, fmt, len(data))


def summarize(export: Export, src: str, dest: str, fmt: str, size: int) -> ExportSummary:
    sparse = export.sparse
    total = sum(sw.numel for sw in sparse.values())
    zeros = total - sum(sw.values.numel() for sw in sparse.values())
    try:
        input_bytes = os.path.getsize(src)
    except OSError:  # stdin
        input_bytes = 0
    return ExportSummary(path=dest, format=fmt, sparse_weights=len(sparse),
                         dense_tensors=len(export.tensors) - len(sparse),
                         sparsity=zeros / total if total else 0.0, input_bytes=input_bytes,
                         output_bytes=size)
