"""Reading an export: which format a file is in, its Export, and the checkpoint it densifies to.

``load_object`` is what ``checkpoint.load_checkpoint`` reads every file through, so every
command that takes a checkpoint (``nettrim eval`` first) takes an export too.
"""

from __future__ import annotations

from nettrim_cli.ckpt_forms import read_safetensors, sniff_safetensors
from nettrim_cli.export.archive import Export
from nettrim_cli.export.formats import SafetensorsFormat, TorchFormat, is_torch_export


def read_export(path: str, trust: bool = False) -> Export:
    """The Export stored at ``path`` in any format (BadInput naming ``path`` when it is not
    an export or is damaged).

    Args:
        path: an export file (``-`` reads stdin).
        trust: allow arbitrary unpickling of the skeleton and other entries (as
            ``--trust-checkpoint``); only needed when the exported checkpoint needed it.
    Example:
        >>> export = read_export("model.sparse.pt")
        >>> model, _ = export.densify("model.sparse.pt")
    """
    from nettrim_cli.checkpoint import _read_bytes  # checkpoint imports this package

    data = _read_bytes(path)
    fmt = SafetensorsFormat() if sniff_safetensors(data) else TorchFormat()
    return fmt.decode(data, path, trust)


def load_object(data: bytes, path: str, trust: bool = False) -> tuple[object, bool]:
    """What a checkpoint file holds, an export densified: (object, whether it needed trust).

    A plain safetensors file gives a ``ckpt_forms.SafetensorsFile``; any other file that is not
    an export is loaded as ``checkpoint._torch_load_safe`` loads it."""
    from nettrim_cli.checkpoint import _torch_load_safe

    if SafetensorsFormat.sniff(data):
        obj, trusted = SafetensorsFormat().decode(data, path, trust).densify(path, trust)
        return obj, trusted
    if sniff_safetensors(data):
        return read_safetensors(data, path), False
    obj, trusted = _torch_load_safe(data, path, trust)
    if is_torch_export(obj):
        obj, skeleton_trusted = TorchFormat().parse(obj, path).densify(path, trust)
        trusted = trusted or skeleton_trusted
    return obj, trusted
