"""Sparse export of pruned checkpoints and sparse CPU inference (``nettrim export``).

  bitmask.py    a pruned weight as kept values plus packed keep bits (bit-for-bit round trip)
  archive.py    Export: the checkpoint with its pruned weights encoded, and back (densify)
  formats.py    file formats as registry entries: torch (default, plain torch.load) and
                safetensors; each checks a file it reads
  reader.py     read_export, and load_object for checkpoint loading (exports load everywhere)
  writer.py     export_file, the command's core
  inference.py  SparseLinear, SparseChain and sparse_model
"""

from __future__ import annotations

from nettrim_cli.export.archive import Export, export_checkpoint
from nettrim_cli.export.bitmask import SparseWeight, pack, unpack
from nettrim_cli.export.formats import DEFAULT_FORMAT, FORMATS
from nettrim_cli.export.inference import SparseChain, SparseLinear, sparse_model
from nettrim_cli.export.reader import load_object, read_export
from nettrim_cli.export.writer import ExportSummary, export_file

__all__ = ["DEFAULT_FORMAT", "FORMATS", "Export", "ExportSummary", "SparseChain", "SparseLinear",
           "SparseWeight", "export_checkpoint", "export_file", "load_object", "pack",
           "read_export", "sparse_model", "unpack"]
