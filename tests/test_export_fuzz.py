"""Fuzzing the export reader like the other readers (tests/test_fuzz.py's harness): exports
of every form in both formats, mutated byte by byte and part by part (values, masks, shapes,
the description, the skeleton, the safetensors header's tensor list), must be read into a
model whose layers trace or be refused with BadInput, one line naming the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from test_export import ARCH, forms, pruned_tiny
from test_fuzz import (  # noqa: F401 - _record_counts: the harness's counts, autouse
    FUZZ,
    FUZZ_EACH,
    _record_counts,
    apply_bytes,
    attempt,
    byte_mutations,
    check_count,
    read_checkpoint,
)

from nettrim_cli.export import export_file

READER = "export"
SEEDS = [("module", "torch"), ("tutorial", "torch"), ("module", "safetensors"),
         ("wrapped_state_dict", "safetensors")]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64, torch.bool]
ODD = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                st.sampled_from([0.5, float("nan"), "", "x", "state_dict", "module", "bitmask",
                                 "nettrim-export"]),
                st.lists(st.integers(-2, 40), max_size=4), st.just({"a": 1}))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_seeds")
    out = {}
    for form, fmt in SEEDS:
        src = d / f"{form}.pt"
        torch.save(forms(pruned_tiny())[form], src)
        dest = d / f"{form}.{fmt}"
        export_file(str(src), str(dest), fmt, arch=None if form == "module" else ARCH)
        out[(form, fmt)] = dest
    return out


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: "-".join(s) if isinstance(s, tuple) else s)
def test_fuzz_export_bytes(seeds, tmp_path, seed):
    data = seeds[seed].read_bytes()
    dest = tmp_path / f"export.{seed[1]}"

    @FUZZ_EACH
    @given(ops=byte_mutations(len(data)))
    # found in a safetensors module export: a header key renamed ("sd_key"), and a skeleton
    # whose Flatten lost its hook tables
    @example(ops=[("flip", 157, 1, 0)])
    @example(ops=[("flip", 1262, 1, 0)])
    def run(ops):
        dest.write_bytes(apply_bytes(data, ops))
        attempt(READER, dest, read_checkpoint)

    run()


# ----------------------------------------------------------------------------------------------
# Part by part


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 20), max_size=3))
    return (torch.rand(shape) * 4 - 1).to(dtype)


@st.composite
def part_edits(draw):
    """1-3 edits (what, which, new value)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["values", "mask", "shape", "dense", "drop", "meta", "add",
                                     "skeleton"]))
        new = draw(tensors()) if what in ("values", "dense", "add") else \
            draw(st.integers(0, 255)) if what in ("mask", "skeleton") else draw(ODD)
        edits.append((what, draw(st.integers(0, 7)), new))
    return edits


def _pick(items, i):
    items = list(items)
    return items[i % len(items)] if items else None


def edit_torch(doc: dict, edits) -> None:
    meta, sd = doc["nettrim_export"], doc["state_dict"]
    for what, i, new in edits:
        sparse = _pick([k for k, v in sd.items() if isinstance(v, dict)], i)
        if what in ("values", "shape") and sparse:
            sd[sparse][what] = new
        elif what == "mask" and sparse:
            mask = sd[sparse]["mask"].clone()
            mask[i % len(mask)] ^= max(new, 1)
            sd[sparse]["mask"] = mask if i % 3 else mask[: i % len(mask)]
        elif what == "dense":
            sd[_pick(sd, i)] = new
        elif what == "drop":
            sd.pop(_pick(sd, i), None)
        elif what == "meta":
            meta[_pick(["format", "version", "encoding", "form", "sd_key", "container_keys"],
                       i)] = new
        elif what == "add":
            sd[f"extra{i}"] = new
        elif what == "skeleton" and isinstance(doc.get("module"), torch.Tensor):
            raw = bytearray(doc["module"].numpy().tobytes())
            raw[(new * 37) % len(raw)] ^= 0xFF
            doc["module"] = torch.frombuffer(raw[: len(raw) - i * 5], dtype=torch.uint8)


def edit_safetensors(tensors_: dict, header: dict, edits) -> None:
    desc = json.loads(header["nettrim_export"])
    parts = [k for k in tensors_ if "::" in k and not k.startswith("::")]
    for what, i, new in edits:
        name = _pick(parts, i)
        if what in ("values", "dense", "add"):
            tensors_[name if what == "values" and name else
                     _pick(tensors_, i) if what == "dense" else f"extra{i}"] = new
        elif what == "mask" and name in tensors_:
            t = tensors_[name].clone()
            if t.numel():
                t.view(-1)[i % t.numel()] = new
            tensors_[name] = t
        elif what == "drop":
            tensors_.pop(_pick(tensors_, i), None)
        elif what == "shape" and desc.get("sparse"):
            desc["sparse"][_pick(desc["sparse"], i)] = new
        elif what == "meta":
            desc[_pick(["format", "version", "encoding", "form", "sd_key", "container_keys",
                        "order", "sparse"], i)] = new
        elif what == "skeleton" and "::module" in tensors_ \
                and tensors_["::module"].dtype == torch.uint8 and tensors_["::module"].dim() == 1:
            t = tensors_["::module"].clone()
            t[(new * 37) % len(t)] ^= 0xFF
            tensors_["::module"] = t[: len(t) - i * 5]
    header["nettrim_export"] = json.dumps(desc)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_edited(src: Path, dest: Path, fmt: str, edits) -> None:
    data = src.read_bytes()
    if fmt == "torch":
        doc = torch.load(io.BytesIO(data), weights_only=True)
        edit_torch(doc, edits)
        dest.write_bytes(_saved(doc))
        return
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])["__metadata__"]
    tensors_ = {k: v.contiguous() for k, v in st_load(data).items()}
    edit_safetensors(tensors_, header, edits)
    dest.write_bytes(st_save(tensors_, metadata=header))


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: "-".join(s) if isinstance(s, tuple) else s)
def test_fuzz_export_parts(seeds, tmp_path, seed):
    dest = tmp_path / f"export.{seed[1]}"

    @FUZZ_EACH
    @given(edits=part_edits())
    def run(edits):
        write_edited(seeds[seed], dest, seed[1], edits)
        attempt(READER, dest, read_checkpoint)

    run()


def test_fuzz_export_counts():
    """Runs after the fuzz tests above (file order): enough examples were tried."""
    check_count(READER)
