"""File formats of an export, chosen by name from ``FORMATS`` (``registry.lookup``).

Each format turns an ``Export`` into bytes and back; reading checks every part, so a damaged
or tampered file is refused (BadInput naming the file) before anything is densified.

``torch`` (the default) is a ``torch.save`` dict that plain ``torch.load(path,
weights_only=True)`` reads without nettrim::

    {"nettrim_export": {"format": "nettrim-export", "version": 1, "encoding": "bitmask",
                        "form": ..., "sd_key": ..., "container_keys": [...]},
     "state_dict": {name: tensor, or {"values": 1-D, "mask": uint8, "shape": [...]}},
     "module": uint8 tensor (torch.save bytes of the skeleton; whole-module checkpoints),
     "extra": {the state_dict container's other entries}}

``safetensors`` stores the same parts as plain tensors (safetensors has no sparse layout and
no nesting): a dense tensor under its name, a sparse one as ``NAME::values`` and
``NAME::mask``, the skeleton and the container's other entries as ``::module`` and ``::extra``
(``torch.save`` bytes, read with the weights_only allowlist), and the description as JSON in the
header's ``__metadata__["nettrim_export"]`` with the state_dict's order and the sparse shapes.
"""

from __future__ import annotations

import io
import json
from typing import ClassVar, Protocol

import torch

from nettrim_cli.ckpt_forms import safetensors_metadata, sniff_safetensors
from nettrim_cli.errors import BadInput
from nettrim_cli.export.archive import (
    ENCODING,
    FORMAT,
    FORMS,
    VERSION,
    Export,
    load_part,
)
from nettrim_cli.export.bitmask import SparseWeight

FORMATS: dict[str, str] = {
    "torch": "nettrim_cli.export.formats:TorchFormat",
    "safetensors": "nettrim_cli.export.formats:SafetensorsFormat",
}
DEFAULT_FORMAT = "torch"
META_KEY = "nettrim_export"


class ExportFormat(Protocol):
    """A way to store an Export in one file."""

    name: ClassVar[str]

    def encode(self, export: Export) -> bytes: ...

    def decode(self, data: bytes, path: str, trust: bool = False) -> Export:
        """The Export in ``data``; BadInput naming ``path`` when it is not one or is damaged."""
        ...


def damaged(what: str, path: str) -> BadInput:
    return BadInput(f"damaged export: {what}", path)


def check_meta(meta: object, path: str) -> dict:
    """The export description, checked field by field."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise damaged(f"its description is not a {FORMAT!r} record", path)
    missing = sorted({"version", "encoding", "form", "sd_key", "container_keys"} - set(meta))
    if missing:
        raise damaged(f"its description lacks {', '.join(missing)}", path)
    if meta.get("version") != VERSION:
        raise BadInput(f"export version {meta.get('version')!r} is not supported (this nettrim "
                       f"reads version {VERSION})", path)
    if meta.get("encoding") != ENCODING:
        raise damaged(f"unknown encoding {meta.get('encoding')!r}", path)
    form, sd_key, keys = meta.get("form"), meta.get("sd_key"), meta.get("container_keys")
    if form not in FORMS:
        raise damaged(f"unknown checkpoint form {form!r}", path)
    if not (sd_key is None or isinstance(sd_key, str)):
        raise damaged(f"state_dict key {sd_key!r} does not fit form {form!r}", path)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or \
            len(set(keys)) != len(keys) or (sd_key is None) != (not keys) or \
            (sd_key is not None and sd_key not in keys):
        raise damaged(f"container keys {keys!r} do not fit state_dict key {sd_key!r}", path)
    return meta


def _check_tensor(name: str, t: object, path: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
        raise damaged(f"entry {name!r} is not a dense tensor or a sparse weight", path)
    return t


def _bytes_of(t: object, what: str, path: str) -> bytes:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1 \
            or t.layout != torch.strided:
        raise damaged(f"{what} is not a 1-D uint8 tensor", path)
    return t.numpy().tobytes()


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
        torch.zeros(0, dtype=torch.uint8)


def _saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _build(meta: dict, tensors: dict, skeleton: bytes | None, extra: dict | None,
           path: str) -> Export:
    if not tensors:
        raise damaged("the state_dict is empty", path)
    keys = meta["container_keys"]
    if meta["sd_key"] is not None:
        want = set(keys) - {meta["sd_key"]}
        if not isinstance(extra, dict) or set(extra) != want:
            found = sorted(map(str, extra)) if isinstance(extra, dict) else type(extra).__name__
            raise damaged(f"the container's other entries are {found}, expected "
                          f"{sorted(want)}", path)
    return Export(form=meta["form"], tensors=tensors, sd_key=meta["sd_key"],
                  container_keys=list(keys), extra=extra or {}, skeleton=skeleton)


class TorchFormat:
    """One ``torch.save`` dict; pruned weights as {values, mask, shape} (module docstring)."""

    name: ClassVar[str] = "torch"

    def encode(self, export: Export) -> bytes:
        sd = {}
        for name, v in export.tensors.items():
            sd[name] = {"values": v.values, "mask": v.mask, "shape": list(v.shape)} \
                if isinstance(v, SparseWeight) else v
        doc: dict = {META_KEY: export.meta(), "state_dict": sd}
        if export.form == "module":
            doc["module"] = _as_tensor(export.skeleton or b"")
        if export.sd_key is not None:
            doc["extra"] = export.extra
        return _saved(doc)

    def decode(self, data: bytes, path: str, trust: bool = False) -> Export:
        from nettrim_cli.checkpoint import _torch_load_safe  # checkpoint imports this package

        obj, _ = _torch_load_safe(data, path, trust)
        if not is_torch_export(obj):
            raise BadInput(f"not a nettrim export (no {META_KEY!r} entry); make one with "
                           "`nettrim export`", path)
        return self.parse(obj, path)

    def parse(self, obj: dict, path: str) -> Export:
        """The Export in a loaded ``torch`` export dict."""
        meta = check_meta(obj[META_KEY], path)
        allowed = {META_KEY, "state_dict"} | ({"module"} if meta["form"] == "module" else set()) \
            | ({"extra"} if meta["sd_key"] is not None else set())
        if set(obj) != allowed:
            raise damaged(f"top-level entries {sorted(map(str, obj))}, expected "
                          f"{sorted(allowed)}", path)
        sd = obj["state_dict"]
        if not isinstance(sd, dict):
            raise damaged("'state_dict' is not a dict", path)
        tensors: dict = {}
        for name, v in sd.items():
            if not isinstance(name, str):
                raise damaged(f"state_dict key {name!r} is not a string", path)
            if isinstance(v, dict):
                if set(v) != {"values", "mask", "shape"}:
                    raise damaged(f"weight {name!r} has parts {sorted(map(str, v))}, expected "
                                  "mask, shape, values", path)
                shape = v["shape"]
                tensors[name] = SparseWeight(
                    values=v["values"], mask=v["mask"],
                    shape=tuple(shape) if isinstance(shape, (list, tuple)) else shape)
            else:
                tensors[name] = _check_tensor(name, v, path)
        skeleton = _bytes_of(obj["module"], "the module skeleton", path) \
            if meta["form"] == "module" else None
        return _build(meta, tensors, skeleton, obj.get("extra"), path)


class SafetensorsFormat:
    """Plain tensors and a JSON description in the header (module docstring)."""

    name: ClassVar[str] = "safetensors"

    def encode(self, export: Export) -> bytes:
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        sparse: dict[str, list[int]] = {}
        for name, v in export.tensors.items():
            if isinstance(v, SparseWeight):
                tensors[f"{name}::values"] = v.values.contiguous()
                tensors[f"{name}::mask"] = v.mask
                sparse[name] = list(v.shape)
            else:  # a copy: safetensors refuses tensors that share storage (tied weights)
                tensors[name] = v.detach().clone().contiguous()
        if export.form == "module":
            tensors["::module"] = _as_tensor(export.skeleton or b"")
        if export.sd_key is not None:
            tensors["::extra"] = _as_tensor(_saved(export.extra))
        meta = export.meta() | {"order": list(export.tensors), "sparse": sparse}
        return save(tensors, metadata={"format": "pt", META_KEY: json.dumps(meta)})

    @staticmethod
    def sniff(data: bytes) -> bool:
        """Whether ``data`` is a safetensors file holding a nettrim export description (a
        plain safetensors checkpoint is read by ckpt_forms.read_safetensors)."""
        meta = safetensors_metadata(data) if sniff_safetensors(data) else None
        return meta is not None and META_KEY in meta

    def decode(self, data: bytes, path: str, trust: bool = False) -> Export:
        from safetensors.torch import load

        meta = self._meta(data, path)
        try:
            stored = load(data)
        except Exception as e:  # noqa: BLE001 - the Rust reader's errors have no common base
            msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise BadInput(f"not a readable safetensors file ({msg})", path) from e
        order, sparse = meta.get("order"), meta.get("sparse")
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order) or \
                len(set(order)) != len(order) or not isinstance(sparse, dict) or \
                not set(sparse) <= set(order):
            raise damaged("the tensor order or the sparse weights' list is malformed", path)
        want = {n for n in order if n not in sparse}
        want |= {f"{n}::{part}" for n in sparse for part in ("values", "mask")}
        want |= {"::module"} if meta["form"] == "module" else set()
        want |= {"::extra"} if meta["sd_key"] is not None else set()
        if set(stored) != want:
            odd = sorted(set(stored) ^ want)[:3]
            raise damaged(f"stored tensors do not match its description (e.g. {odd})", path)
        tensors: dict = {}
        for name in order:
            if name in sparse:
                shape = sparse[name]
                tensors[name] = SparseWeight(
                    values=stored[f"{name}::values"], mask=stored[f"{name}::mask"],
                    shape=tuple(shape) if isinstance(shape, list) else shape)
            else:
                tensors[name] = stored[name]
        skeleton = _bytes_of(stored["::module"], "the module skeleton", path) \
            if meta["form"] == "module" else None
        extra = None
        if meta["sd_key"] is not None:
            extra, _ = load_part(_bytes_of(stored["::extra"], "'::extra'", path),
                                 "the container's other entries ('::extra')", path, trust)
        return _build(meta, tensors, skeleton, extra, path)

    @staticmethod
    def _meta(data: bytes, path: str) -> dict:
        n = int.from_bytes(data[:8], "little")
        try:
            header = json.loads(data[8:8 + n])
            text = header["__metadata__"][META_KEY]
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise BadInput("a safetensors file without a nettrim export description "
                           f"(__metadata__[{META_KEY!r}])", path) from e
        try:
            meta = json.loads(text)
        except (ValueError, TypeError, RecursionError) as e:
            raise damaged("its description is not JSON", path) from e
        return check_meta(meta, path)


def is_torch_export(obj: object) -> bool:
    return isinstance(obj, dict) and META_KEY in obj
