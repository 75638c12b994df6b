"""The HDF5 activation dump: calibration inputs and, per prunable layer, its input and its
pre-activation output on them.

Layout (format ``nettrim-dump``, version 1)::

    /                   attrs: format, format_version, nettrim_version, n_samples, n_layers,
                               model_sha256
    /inputs             (P, ...) float32, the calibration inputs
    /labels             (P,) optional
    /layers/000         group, attrs: name, kind, activation, in_features, out_features, bias,
                               and (optional for Linear-only dumps) bn, shortcut, in_shape,
                               out_shape, groups
    /layers/000/input   (P, *in_shape) float32, the layer's input in its own shape (a conv's
                        images, not unfolded; (P, N) for a Linear)
    /layers/000/preact  (P, *out_shape) float32, the unit's own output (before a folded BN)
    /layers/000/shortcut  (P, *out_shape) float32, only for a residual unit: the tensor s
                        added to its (BN'd) output before the ReLU

Every dataset is chunked by samples (about a megabyte a chunk) and gzip-compressed; readers
take it chunk by chunk into one preallocated array, so a dump never sits in memory twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from torch import nn

from nettrim_cli import __version__
from nettrim_cli.errors import BadInput
from nettrim_cli.graph import LayerInfo, NodeValues

FORMAT = "nettrim-dump"
FORMAT_VERSION = 1
CHUNK_ROWS = 1024
# A declared shape larger than this many elements is refused before anything is allocated.
MAX_ELEMENTS = 4 * 1024**3


def load_array_file(path: str, what: str = "inputs") -> np.ndarray:
    """Load calibration inputs or labels from .npy, .npz or .h5/.hdf5."""
    if not os.path.exists(path):
        raise BadInput("no such file", path)
    if os.path.isdir(path):
        raise BadInput("is a directory", path)
    low = path.lower()
    try:
        if low.endswith(".npy"):
            with open(path, "rb") as fh:
                _check_npy_header(fh, os.path.getsize(path), path, what)
            arr = np.load(path, allow_pickle=False)
        elif low.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                pick = next((k for k in (what, "x" if what == "inputs" else "y",
                                         "X" if what == "inputs" else "Y") if k in keys), None)
                if pick is None:
                    if len(keys) == 1:
                        pick = keys[0]
                    else:
                        raise BadInput(f"npz has no array named {what!r} (found {keys})", path)
                info = z.zip.getinfo(f"{pick}.npy")
                # deflate cannot expand data more than ~1032x: a larger declared size is a lie
                if info.compress_size > os.path.getsize(path) or \
                        info.file_size > 1100 * info.compress_size + 4096:
                    raise BadInput(f"npz member {pick!r} declares {info.file_size} bytes, more "
                                   "than the archive can hold (corrupt file)", path)
                with z.zip.open(info) as fh:
                    _check_npy_header(fh, info.file_size, path, what)
                arr = z[pick]
        elif low.endswith((".h5", ".hdf5")):
            with h5py.File(path, "r") as f:
                if what not in f or not isinstance(f[what], h5py.Dataset):
                    raise BadInput(f"HDF5 file has no dataset /{what}", path)
                ds = f[what]
                _check_declared(ds, path)
                arr = ds[()]
        else:
            raise BadInput("unknown file type; use .npy, .npz or .h5", path)
    except BadInput:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file fails in many ways (zipfile's
        # BadZipFile, the header parser's TokenError, h5py's KeyError/RuntimeError, ...)
        if "allow_pickle" in str(e):  # numpy's advice to unpickle does not apply here
            raise BadInput(f"cannot read {what}: the file holds pickled Python objects, not a "
                           "numeric array (pickles are never loaded)", path) from e
        msg = str(e).splitlines()[0][:200] if str(e).strip() else ""
        raise BadInput(f"cannot read {what} ({type(e).__name__}{': ' + msg if msg else ''})",
                       path) from e
    arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == np.bool_):
        raise BadInput(f"{what} must be real numbers, found dtype {arr.dtype}", path)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise BadInput(f"{what} hold no samples (shape {arr.shape})", path)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise BadInput(f"{what} hold NaN or Inf", path)
    return arr


def _check_npy_header(fh, size: int, path: str, what: str) -> None:
    """Refuse an .npy stream whose header declares more data than the stream holds, before
    numpy allocates the array (a 100-byte file may declare a shape of terabytes)."""
    start = fh.tell()
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version in ((2, 0), (3, 0)):  # the same header layout
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise BadInput(f"{what}: unknown .npy format version {version[0]}.{version[1]} "
                       "(corrupt file?)", path)
    if dtype.hasobject:
        return  # refused by np.load(allow_pickle=False) with its own message
    need = fh.tell() - start + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if need > size:
        raise BadInput(f"{what}: the header declares shape {tuple(shape)} of {dtype} ({need} "
                       f"bytes) but the file holds {size} bytes (truncated or corrupt)", path)


def _check_declared(ds: h5py.Dataset, path: str) -> None:
    """Refuse a dataset whose declared shape is too large, or whose data is not all stored in
    this file (unwritten chunks, external or virtual storage), before anything is read."""
    n = int(np.prod(ds.shape, dtype=np.float64)) if ds.shape else 1
    if n > MAX_ELEMENTS:
        raise BadInput(f"dataset {ds.name} declares shape {ds.shape}, too large to read", path)
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED) or \
            dcpl.get_external_count():
        raise BadInput(f"dataset {ds.name} keeps its data outside this file (external or "
                       "virtual storage), which is not read", path)
    if n == 0 or layout == h5py.h5d.COMPACT:
        return
    if layout == h5py.h5d.CHUNKED:
        need = int(np.prod([-(-s // c) for s, c in zip(ds.shape, ds.chunks, strict=True)],
                           dtype=np.float64))
        have = ds.id.get_num_chunks()
        if have < need:
            raise BadInput(f"dataset {ds.name} declares shape {ds.shape} but only {have} of its "
                           f"{need} chunks were written (truncated or corrupt)", path)
    elif ds.id.get_storage_size() < n * ds.dtype.itemsize:
        raise BadInput(f"dataset {ds.name} declares shape {ds.shape} but holds only "
                       f"{ds.id.get_storage_size()} bytes (truncated or corrupt)", path)


def _layer_io(model: nn.Module, layers: list[LayerInfo], batch: torch.Tensor, nodes=None):
    """Run a batch through the model; return {name: (input, preact, shortcut or None)} for
    prunable layers (``nodes``: a ``NodeValues`` of the model, needed for shortcuts)."""
    found: dict[str, tuple] = {}
    handles = []
    for layer in layers:
        if not layer.prunable:
            continue
        mod = model.get_submodule(layer.name)

        def hook(m, inputs, output, name=layer.name):
            found[name] = (inputs[0].detach().cpu().numpy(), output.detach().cpu().numpy())

        handles.append(mod.register_forward_hook(hook))
    wanted = {la.shortcut for la in layers if la.prunable and la.shortcut}
    kept: dict = {}
    try:
        with torch.no_grad():
            if wanted:
                out, kept = (nodes or NodeValues(model))(batch, wanted)
            else:
                out = model(batch)
    finally:
        for h in handles:
            h.remove()
    for la in layers:
        if la.name in found:
            s = kept.get(la.shortcut) if la.shortcut else None
            found[la.name] = (*found[la.name], None if s is None else s.detach().cpu().numpy())
    return found, out.detach().cpu().numpy()


def forward_collect(model: nn.Module, layers: list[LayerInfo], inputs: np.ndarray,
                    batch_size: int = 1024) -> Iterator[tuple[int, dict, np.ndarray]]:
    """Yield (start row, {name: (input, preact)}, model output) batch by batch."""
    model.eval()
    nodes = NodeValues(model) if any(la.shortcut for la in layers if la.prunable) else None
    for start in range(0, inputs.shape[0], batch_size):
        xb = torch.as_tensor(np.asarray(inputs[start:start + batch_size], dtype=np.float32))
        found, out = _layer_io(model, layers, xb, nodes)
        yield start, found, out


def write_dump(dest: str, model: nn.Module, layers: list[LayerInfo], inputs: np.ndarray,
               labels: np.ndarray | None, model_sha256: str, batch_size: int = 1024,
               progress=None, source: str = "") -> None:
    """Write the activation dump for ``inputs`` to ``dest`` (an HDF5 path).

    A layer that produces NaN or Inf (the model overflows on these inputs) is an error that
    names ``source`` (the checkpoint); the caller discards the partial ``dest``.
    """
    P = inputs.shape[0]
    prunable = [layer for layer in layers if layer.prunable]
    # gzip level 1 without the byte shuffle: on the bench MLP's 20,000-sample dump (ReLU
    # outputs, many exact zeros) 20% smaller and 27% faster to read than with it; LZF read 2x
    # faster again but needs a filter plugin outside h5py
    comp = {"compression": "gzip", "compression_opts": 1}
    with h5py.File(dest, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                        "nettrim_version": __version__, "n_samples": P,
                        "n_layers": len(prunable), "model_sha256": model_sha256})
        rows = min(CHUNK_ROWS, P)
        f.create_dataset("inputs", data=np.asarray(inputs, dtype=np.float32),
                         chunks=(rows, *inputs.shape[1:]), **comp)
        if labels is not None:
            f.create_dataset("labels", data=np.asarray(labels), chunks=(rows,), **comp)
        grp = f.create_group("layers")
        dsets = {}
        for i, layer in enumerate(prunable):
            g = grp.create_group(f"{i:03d}")
            g.attrs.update(layer.as_attrs())
            made = [g.create_dataset(what, shape=(P, *shape), dtype="f4",
                                     chunks=(_chunk_rows(shape, P), *shape), **comp)
                    for what, shape in (("input", layer.in_shape), ("preact", layer.out_shape),
                                        ("shortcut", layer.out_shape))
                    if what != "shortcut" or layer.shortcut]
            dsets[layer.name] = made
        for start, found, _ in forward_collect(model, layers, inputs, batch_size):
            for name, (xin, pre, short) in found.items():
                if not (np.isfinite(xin).all() and np.isfinite(pre).all()):
                    raise BadInput(f"layer {name!r} produces NaN or Inf on input rows {start}-"
                                   f"{start + xin.shape[0] - 1}; the model overflows on these "
                                   "inputs", source or None)
                for ds, value in zip(dsets[name], (xin, pre, short), strict=False):
                    ds[start:start + value.shape[0]] = value
            if progress is not None:
                progress("dump", min(start + batch_size, P), P)


def _chunk_rows(shape: tuple[int, ...], P: int) -> int:
    """Samples per chunk: CHUNK_ROWS for a Linear's rows, fewer for images (about 1 MB)."""
    if len(shape) <= 1:
        return min(CHUNK_ROWS, P)
    return max(1, min(P, CHUNK_ROWS, (1 << 18) // max(1, int(np.prod(shape)))))


@dataclass
class DumpLayer:
    index: int
    name: str
    kind: str
    activation: str
    in_features: int
    out_features: int
    bias: bool
    bn: str = ""
    shortcut: str = ""
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    groups: int = 1

    def signature(self) -> tuple:
        """What must agree with the checkpoint's traced unit."""
        return (self.name, self.kind, self.in_features, self.out_features, self.activation,
                self.bn, self.shortcut, tuple(self.out_shape))


class DumpReader:
    """Validated read access to a dump; arrays are read chunk by chunk into one buffer."""

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.path.exists(path):
            raise BadInput("no such file", path)
        if os.path.isdir(path):
            raise BadInput("is a directory, not an activation dump", path)
        try:
            self.f = h5py.File(path, "r")
        except OSError as e:
            raise BadInput(f"not a readable HDF5 file ({str(e).splitlines()[0][:160]})",
                           path) from e
        try:
            self._validate()
        except BadInput:
            self.f.close()
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt file can fail in many ways
            self.f.close()
            raise BadInput(f"corrupt activation dump ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else ''})", path) from e

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> DumpReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _validate(self) -> None:
        f, path = self.f, self.path
        if f.attrs.get("format") != FORMAT:
            raise BadInput("not a nettrim activation dump (attribute 'format' missing or "
                           "wrong); make one with `nettrim dump`", path)
        ver = f.attrs.get("format_version")
        if ver != FORMAT_VERSION:
            raise BadInput(f"dump format version {ver} is not supported (expected "
                           f"{FORMAT_VERSION})", path)
        if "inputs" not in f or not isinstance(f["inputs"], h5py.Dataset):
            raise BadInput("dump has no /inputs dataset", path)
        _check_declared(f["inputs"], path)
        if not np.issubdtype(f["inputs"].dtype, np.floating):
            raise BadInput(f"/inputs has dtype {f['inputs'].dtype}, expected floating point",
                           path)
        self.n_samples = int(f["inputs"].shape[0]) if f["inputs"].ndim else 0
        if self.n_samples == 0:
            raise BadInput("dump holds zero samples", path)
        if "labels" in f and not isinstance(f["labels"], h5py.Dataset):
            raise BadInput("/labels is not a dataset", path)
        if "labels" in f:
            _check_declared(f["labels"], path)
        if "labels" in f and f["labels"].shape[:1] != (self.n_samples,):
            raise BadInput(f"/labels has shape {f['labels'].shape}, expected "
                           f"({self.n_samples},)", path)
        if "layers" not in f or not isinstance(f["layers"], h5py.Group) or not len(f["layers"]):
            raise BadInput("dump has no layers", path)
        self.layers: list[DumpLayer] = []
        for i, key in enumerate(sorted(f["layers"].keys())):
            if key != f"{i:03d}":
                raise BadInput(f"layer groups must be /layers/000, /layers/001, ... without "
                               f"gaps; found /layers/{key} at position {i}", path)
            g = f["layers"][key]
            if not isinstance(g, h5py.Group):
                raise BadInput(f"/layers/{key} is not a group", path)
            a = g.attrs
            for attr in ("name", "kind", "activation", "in_features", "out_features", "bias"):
                if attr not in a:
                    raise BadInput(f"layer group /layers/{key} lacks attribute {attr!r}", path)
            layer = _dump_layer(i, a)
            wanted = [("input", layer.in_shape), ("preact", layer.out_shape)]
            if layer.shortcut:
                wanted.append(("shortcut", layer.out_shape))
            for ds, shape in wanted:
                if ds not in g or not isinstance(g[ds], h5py.Dataset):
                    raise BadInput(f"/layers/{key} has no dataset {ds!r}", path)
                _check_declared(g[ds], path)
                if g[ds].shape != (self.n_samples, *shape):
                    raise BadInput(f"/layers/{key}/{ds} has shape {g[ds].shape}, expected "
                                   f"{(self.n_samples, *shape)}", path)
                if not np.issubdtype(g[ds].dtype, np.floating):
                    raise BadInput(f"/layers/{key}/{ds} has dtype {g[ds].dtype}, expected "
                                   "floating point", path)
            self.layers.append(layer)

    def _group(self, i: int) -> h5py.Group:
        return self.f["layers"][f"{i:03d}"]

    def read(self, dataset: h5py.Dataset, rows: slice | None = None,
             dtype=np.float64) -> np.ndarray:
        """Read (a row range of) a dataset chunk by chunk into one array, checking for
        NaN/Inf as it goes."""
        start, stop = (0, dataset.shape[0]) if rows is None else (rows.start or 0,
                                                                  min(rows.stop,
                                                                      dataset.shape[0]))
        out = np.empty((stop - start, *dataset.shape[1:]), dtype=dtype)
        step = dataset.chunks[0] if dataset.chunks else CHUNK_ROWS
        try:
            for a in range(start, stop, step):
                b = min(a + step, stop)
                block = dataset[a:b]
                if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
                    raise BadInput(f"{dataset.name} holds NaN or Inf (rows {a}-{b})", self.path)
                out[a - start:b - start] = block
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001 - truncated/corrupt chunks
            raise BadInput(f"cannot read {dataset.name} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else ''})",
                           self.path) from e
        return out

    def inputs(self, rows: slice | None = None) -> np.ndarray:
        return self.read(self.f["inputs"], rows, dtype=np.float32)

    def labels(self) -> np.ndarray | None:
        return self.f["labels"][()] if "labels" in self.f else None

    def layer_input(self, i: int, rows: slice | None = None) -> np.ndarray:
        return self.read(self._group(i)["input"], rows)

    def layer_preact(self, i: int, rows: slice | None = None) -> np.ndarray:
        return self.read(self._group(i)["preact"], rows)

    def layer_shortcut(self, i: int, rows: slice | None = None) -> np.ndarray | None:
        """The residual term s of unit i (None when it has none)."""
        return self.read(self._group(i)["shortcut"], rows) if self.layers[i].shortcut else None

    def check_against(self, model: nn.Module, layers: list[LayerInfo], rows: int = 256,
                      model_path: str = "") -> None:
        """Refuse a dump made from another model: same layers, and the checkpoint reproduces
        a batch of the dumped activations."""
        prunable = [layer for layer in layers if layer.prunable]
        mine = [(la.name, la.kind, la.in_features, la.out_features, la.activation, la.bn,
                 la.shortcut, tuple(la.out_shape)) for la in prunable]
        theirs = [la.signature() for la in self.layers]
        if mine != theirs:
            raise BadInput(f"dump was made from another model: its layers {theirs} differ from "
                           f"the checkpoint's {mine} ({model_path})", self.path)
        n = min(rows, self.n_samples)
        x = self.inputs(slice(0, n))
        found, _ = _layer_io(model.eval(), layers, torch.as_tensor(x))
        for i, la in enumerate(prunable):
            xin, pre, _ = found[la.name]
            for what, got, ref in (("input", xin, self.layer_input(i, slice(0, n))),
                                   ("preact", pre, self.layer_preact(i, slice(0, n)))):
                scale = max(float(np.abs(ref).max()), 1e-6)
                err = float(np.abs(got - ref).max())
                if err > 1e-4 * scale + 1e-6:
                    raise BadInput(f"dump was made from another model: layer {la.name!r} "
                                   f"{what} differs from the checkpoint's by {err:.3g} on the "
                                   f"first {n} samples ({model_path})", self.path)


def _dump_layer(i: int, a) -> DumpLayer:
    """A layer group's attributes; a dump from before conv support has no shapes: its
    datasets are (P, in_features) and (P, out_features)."""
    n_in, n_out = int(a["in_features"]), int(a["out_features"])
    in_shape = tuple(int(v) for v in a["in_shape"]) if "in_shape" in a else (n_in,)
    out_shape = tuple(int(v) for v in a["out_shape"]) if "out_shape" in a else (n_out,)
    return DumpLayer(index=i, name=str(a["name"]), kind=str(a["kind"]),
                     activation=str(a["activation"]), in_features=n_in, out_features=n_out,
                     bias=bool(a["bias"]), bn=str(a.get("bn", "")),
                     shortcut=str(a.get("shortcut", "")), in_shape=in_shape,
                     out_shape=out_shape, groups=int(a.get("groups", 1)))
