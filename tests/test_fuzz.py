"""Fuzzing the readers: small valid files, mutated, must be read or refused cleanly.

Every reader nettrim has -- the activation dump (DumpReader and the model check), calibration
arrays (load_array_file: .npy, .npz, .h5), checkpoints (load_checkpoint + trace_layers, every
accepted form), configs (load_config + build_settings) and reports (`nettrim report`) -- gets
valid seed files mutated two ways: byte-level (bit flips, truncation, inserted/deleted/
overwritten byte runs) and structured (HDF5 edits with h5py, state_dict edits, config values
of every type, report JSON nodes replaced). For each mutated file the reader either succeeds
with a valid result (finite arrays of the declared shapes, a module whose layers trace) or
raises BadInput (exit code 2) with a one-line message that names the file. Any other
exception, an example running past GUARD_S seconds, or one that makes numpy allocate more than
MEM_LIMIT bytes fails the test. Hypothesis runs derandomized (the same examples every run).

The number of examples actually tried per reader is counted in the test bodies, checked
against MIN_CASES and written to ``fuzz_counts.json`` in pytest's base temporary directory
(and to $NETTRIM_FUZZ_COUNTS when set); docs/reliability.md quotes a run's counts.
NETTRIM_FUZZ_EXAMPLES scales the examples per test (default 250).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import nettrim_test_archs as archs
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import invoke
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save
from torch import nn

from nettrim_cli.checkpoint import load_checkpoint
from nettrim_cli.cli import main
from nettrim_cli.config import SECTIONS, TOP_KEYS, build_settings, load_config
from nettrim_cli.dump import DumpReader, load_array_file
from nettrim_cli.errors import BadInput
from nettrim_cli.graph import trace_layers
from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.base import SolverSettings
from nettrim_cli.solvers.search import solve_layer

EXAMPLES = int(os.environ.get("NETTRIM_FUZZ_EXAMPLES", "250"))
MIN_CASES = min(200, EXAMPLES)  # per reader (a reader's tests together)
GUARD_S = 20.0  # per example: past this it counts as a hang
MEM_LIMIT = 256 * 1024**2  # numpy allocations per example (tracemalloc peak)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)
# a reader fuzzed in several variants (file kinds, checkpoint forms) splits its examples
FUZZ_EACH = settings(FUZZ, max_examples=max(EXAMPLES // 3, 20))
ARCH = "nettrim_test_archs:tiny"

COUNTS: dict[str, Counter] = defaultdict(Counter)


class Hang(BaseException):
    """Not an Exception: the readers' catch-alls must not turn it into a BadInput."""


@pytest.fixture(scope="module", autouse=True)
def _record_counts(tmp_path_factory):
    tracemalloc.start()
    yield
    tracemalloc.stop()
    data = {k: dict(v) for k, v in sorted(COUNTS.items())}
    text = json.dumps(data, indent=2, sort_keys=True)
    for dest in (tmp_path_factory.getbasetemp() / "fuzz_counts.json",
                 os.environ.get("NETTRIM_FUZZ_COUNTS")):
        if dest:
            Path(dest).write_text(text + "\n")
    print(f"\nfuzz cases per reader: {text}")


@contextlib.contextmanager
def guard():
    def fire(*_):
        raise Hang(f"example ran past {GUARD_S} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, GUARD_S)
    tracemalloc.reset_peak()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    peak = tracemalloc.get_traced_memory()[1]
    assert peak < MEM_LIMIT, f"numpy allocated {peak / 2**20:.0f} MiB for a tiny file"


def attempt(reader: str, path: Path, fn):
    """Run ``fn(path)`` under the guard; a BadInput must be one line naming ``path``.
    Returns fn's result, or None when refused. Any other exception propagates."""
    COUNTS[reader]["tried"] += 1
    with guard():
        try:
            result = fn(path)
        except BadInput as e:
            msg = str(e)
            assert e.exit_code == 2
            assert "\n" not in msg and msg.strip(), repr(msg)
            assert str(path) in msg, f"the message does not name the file: {msg!r}"
            COUNTS[reader]["refused"] += 1
            return None
    COUNTS[reader]["accepted"] += 1
    return result


def check_count(reader: str) -> None:
    assert COUNTS[reader]["tried"] >= MIN_CASES, dict(COUNTS[reader])


# ----------------------------------------------------------------------------------------------
# Byte-level mutations


@st.composite
def byte_mutations(draw, size: int):
    """1-3 edits: (kind, offset, length, fill byte)."""
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        ops.append((kind, draw(st.integers(0, max(size - 1, 0))), draw(st.integers(1, 64)),
                    draw(st.integers(0, 255))))
    return ops


def apply_bytes(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for kind, off, n, fill in ops:
        off = min(off, len(b))
        if kind == "flip" and b:
            b[min(off, len(b) - 1)] ^= 1 << (fill % 8)
        elif kind == "truncate":
            del b[off:]
        elif kind == "insert":
            b[off:off] = bytes([fill]) * n
        elif kind == "delete":
            del b[off:off + n]
        elif kind == "overwrite":
            b[off:off + n] = bytes([fill]) * len(b[off:off + n])
    return bytes(b)


# ----------------------------------------------------------------------------------------------
# Seeds and readers


@pytest.fixture(scope="module")
def seeds(assets, tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_seeds")
    s = {"dir": d, "acts": assets.acts, "acts_wider": assets.acts_wider,
         "acts_other": assets.acts_other_weights}
    x = np.load(assets.calib)
    s["npy"] = assets.calib
    s["npz"] = d / "calib.npz"
    np.savez(s["npz"], inputs=x)
    s["npz_compressed"] = d / "calibz.npz"
    np.savez_compressed(s["npz_compressed"], x=x)
    s["h5"] = d / "calib.h5"
    with h5py.File(s["h5"], "w") as f:
        f.create_dataset("inputs", data=x, chunks=(8, x.shape[1]), compression="gzip")
    torch.manual_seed(0)
    model = archs.tiny()
    sd = model.state_dict()
    forms = {"module": model, "state_dict": sd, "wrapped_state_dict": {"state_dict": sd,
                                                                       "epoch": 3},
             "wrapped_model": {"model": sd, "optimizer": {"lr": 0.1}},
             "dataparallel_prefix": {f"module.{k}": v for k, v in sd.items()},
             "tutorial": {"epoch": 3, "model_state_dict": sd,
                          "optimizer_state_dict": _adam_state(archs.tiny())}}
    for name, obj in forms.items():
        torch.save(obj, d / f"{name}.pt")
        s[f"ckpt_{name}"] = d / f"{name}.pt"
    s["ckpt_safetensors"] = d / "sd.safetensors"
    s["ckpt_safetensors"].write_bytes(st_save(sd, metadata={"epoch": "3"}))
    torch.save(sd, d / "legacy.pt", _use_new_zipfile_serialization=False)
    s["ckpt_legacy"] = d / "legacy.pt"
    s["config"] = d / "c.toml"
    s["config"].write_text((Path(__file__).parent.parent / "configs" / "cascade.toml")
                           .read_text())
    s["report"] = d / "report.json"
    r = invoke("prune", assets.model, "--acts", assets.acts, "-o", d / "p.pt", "--report",
               s["report"], "-q", "--workers", "1")
    assert r.exit_code == 0, r.stderr
    s["x"] = x
    return s


def _adam_state(model: nn.Module) -> dict:
    """An Adam optimizer's state_dict after one step (the tutorials' optimizer_state_dict)."""
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(2, archs.N_IN)).sum().backward()
    opt.step()
    model.zero_grad()
    return opt.state_dict()


def read_dump(path: Path):
    torch.manual_seed(0)
    model = archs.tiny().eval()
    with DumpReader(str(path)) as d:
        assert d.n_samples > 0 and d.layers
        x = d.inputs()
        assert x.shape[0] == d.n_samples and np.isfinite(x).all()
        for i, la in enumerate(d.layers):
            xi, pi = d.layer_input(i), d.layer_preact(i)
            assert xi.shape == (d.n_samples, la.in_features) and np.isfinite(xi).all()
            assert pi.shape == (d.n_samples, la.out_features) and np.isfinite(pi).all()
        labels = d.labels()
        assert labels is None or labels.shape[0] == d.n_samples
        layers = trace_layers(model, torch.as_tensor(x[:8]), str(path))
        d.check_against(model, layers)
    return d


def read_array(path: Path):
    arr = load_array_file(str(path), "inputs")
    assert arr.ndim >= 1 and arr.shape[0] > 0
    assert arr.dtype.kind in "biuf"
    assert not np.issubdtype(arr.dtype, np.floating) or np.isfinite(arr).all()
    return arr


def read_checkpoint(path: Path):
    ckpt = load_checkpoint(str(path), arch=ARCH)
    assert isinstance(ckpt.model, nn.Module)
    for _, t in ckpt.model.named_parameters():
        assert not t.is_floating_point() or torch.isfinite(t).all()
    sample = torch.as_tensor(np.random.default_rng(0).standard_normal((8, archs.N_IN)),
                             dtype=torch.float32)
    layers = trace_layers(ckpt.model, sample, str(path), model_path=str(path))
    assert any(la.prunable for la in layers)
    return ckpt


TINY_PROGRAM = None


def _tiny_program() -> LayerProgram:
    rng = np.random.default_rng(0)
    X = np.maximum(rng.standard_normal((20, 3)), 0)
    W = rng.standard_normal((2, 3))
    Y = np.maximum(X @ W.T, 0)
    return LayerProgram(X=X, Y=Y, W0=W, b0=np.zeros(2), epsilon=0.1 * np.linalg.norm(Y))


def read_config(path: Path, solve: bool = False):
    settings_, solver = build_settings(load_config(str(path)), {}, source=str(path))
    assert settings_.mode in ("parallel", "cascade") and solver in ("auto", "osqp", "admm")
    assert (settings_.epsilon is None) != (settings_.lam is None)
    if solve:  # the settings must be usable by the solver, retry path included
        s: SolverSettings = settings_.solver
        sol = solve_layer(_tiny_program(), s, workers=1)
        assert sol.Wa.shape == (2, 4)
    return settings_


def read_report(path: Path):
    outs = []
    for fmt in ("json", "csv", "table"):
        r = CliRunner().invoke(main, ["report", str(path), "--format", fmt])
        if r.exit_code == 2:
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("nettrim: error: "), r.stderr
            raise BadInput(lines[0][len("nettrim: error: "):].split(f"{path}: ", 1)[-1],
                           str(path))
        assert r.exit_code == 0, (r.exit_code, r.stderr, r.exception)
        outs.append(r.stdout)
    json.loads(outs[0])
    return outs


# ----------------------------------------------------------------------------------------------
# Byte-level fuzzing, one test per reader


def _fuzz_bytes(reader: str, src: Path, dest: Path, fn, each: bool = False) -> None:
    data = Path(src).read_bytes()

    @(FUZZ_EACH if each else FUZZ)
    @given(ops=byte_mutations(len(data)))
    def run(ops):
        dest.write_bytes(apply_bytes(data, ops))
        attempt(reader, dest, fn)

    run()


def test_fuzz_dump_bytes(seeds, tmp_path):
    _fuzz_bytes("dump", seeds["acts"], tmp_path / "acts.h5", read_dump)


@pytest.mark.parametrize("kind", ["npy", "npz", "npz_compressed", "h5"])
def test_fuzz_array_bytes(seeds, tmp_path, kind):
    ext = {"npz_compressed": "npz"}.get(kind, kind)
    _fuzz_bytes("arrays", seeds[kind], tmp_path / f"calib.{ext}", read_array, each=True)


@pytest.mark.parametrize("form", ["module", "state_dict", "wrapped_state_dict",
                                  "wrapped_model", "dataparallel_prefix", "legacy", "tutorial",
                                  "safetensors"])
def test_fuzz_checkpoint_bytes(seeds, tmp_path, form):
    _fuzz_bytes("checkpoint", seeds[f"ckpt_{form}"], tmp_path / "model.pt", read_checkpoint,
                each=True)


def test_fuzz_config_bytes(seeds, tmp_path):
    _fuzz_bytes("config", seeds["config"], tmp_path / "c.toml", read_config)


def test_fuzz_report_bytes(seeds, tmp_path):
    _fuzz_bytes("report", seeds["report"], tmp_path / "report.json", read_report)


# ----------------------------------------------------------------------------------------------
# Structured HDF5 mutations

H5_DATASETS = ["inputs", "labels", "layers/000/input", "layers/000/preact", "layers/001/input",
               "layers/001/preact"]
H5_GROUPS = ["layers", "layers/000", "layers/001"]
H5_ATTRS = {"/": ["format", "format_version", "n_samples", "n_layers", "model_sha256"],
            "layers/000": ["name", "kind", "activation", "in_features", "out_features", "bias"],
            "layers/001": ["name", "kind", "activation", "in_features", "out_features", "bias"]}
BOGUS_ATTRS = [2**62, -1, 0, 7, 1.5, "abc", "", b"bytes", np.array([1, 2]), True, "relu",
               "none", "nettrim-dump", "1", "3"]
DTYPES = ["i4", "i1", "f2", "f8", "c8", "?", "S5", "u8"]
RESHAPES = ["drop_row", "drop_col", "add_col", "transpose", "flatten", "scalar", "3d",
            "zero_rows"]
POKES = [np.nan, np.inf, -np.inf, 1e38, -3e38]


def _replace(f: h5py.File, name: str, data, **kw) -> None:
    del f[name]
    f.create_dataset(name, data=data, **kw)


@st.composite
def h5_ops(draw):
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "rename", "retype", "reshape", "poke", "zero",
                                     "huge", "attr", "del_attr", "other_model", "external",
                                     "virtual", "swap_layers", "extra_layer", "group"]))
        ds = draw(st.sampled_from(H5_DATASETS))
        if kind == "delete":
            ops.append((kind, draw(st.sampled_from(H5_DATASETS + H5_GROUPS))))
        elif kind == "rename":
            ops.append((kind, draw(st.sampled_from(H5_DATASETS + H5_GROUPS)),
                        draw(st.sampled_from(["inputs2", "layers/002", "layers/000/x",
                                              "layers/0", "labels"]))))
        elif kind == "retype":
            ops.append((kind, ds, draw(st.sampled_from(DTYPES))))
        elif kind == "reshape":
            ops.append((kind, ds, draw(st.sampled_from(RESHAPES))))
        elif kind == "poke":
            ops.append((kind, ds, draw(st.sampled_from(POKES)), draw(st.integers(0, 10**6))))
        elif kind == "huge":
            ops.append((kind, ds, draw(st.sampled_from([2**20, 2**31, 2**40, 2**62])),
                        draw(st.booleans())))
        elif kind in ("attr", "del_attr"):
            where = draw(st.sampled_from(list(H5_ATTRS)))
            ops.append((kind, where, draw(st.sampled_from(H5_ATTRS[where])),
                        draw(st.sampled_from(range(len(BOGUS_ATTRS))))))
        elif kind == "other_model":
            ops.append((kind, draw(st.sampled_from(["acts_wider", "acts_other"])),
                        draw(st.sampled_from(["layers/000", "layers/001", "inputs", "/"]))))
        else:
            ops.append((kind, ds))
    return ops


def _small(d) -> bool:
    """A dataset the harness may read whole (a 'huge' one is never read here)."""
    return isinstance(d, h5py.Dataset) and d.size <= 10**6


def apply_h5(path: Path, ops, seeds) -> None:
    with h5py.File(path, "r+") as f:
        for op in ops:
            kind = op[0]
            if kind in ("retype", "reshape", "poke", "zero") and not all(
                    _small(f[n]) for n in H5_DATASETS if isinstance(f.get(n), h5py.Dataset)):
                continue
            if kind == "delete":
                if op[1] in f:
                    del f[op[1]]
            elif kind == "rename":
                if op[1] in f and op[2] not in f and not op[2].startswith(op[1] + "/"):
                    parent = op[2].rsplit("/", 1)[0] if "/" in op[2] else None
                    if parent is None or isinstance(f.get(parent), h5py.Group):
                        f.move(op[1], op[2])
            elif kind == "retype":
                if isinstance(f.get(op[1]), h5py.Dataset):
                    _replace(f, op[1], f[op[1]][()].astype(op[2]))
            elif kind == "reshape":
                d = f.get(op[1])
                if not isinstance(d, h5py.Dataset) or d.ndim != 2 or not d.size:
                    continue
                a = f[op[1]][()]
                new = {"drop_row": a[:-1], "drop_col": a[:, :-1],
                       "add_col": np.hstack([a, a[:, :1]]), "transpose": a.T,
                       "flatten": a.reshape(-1), "scalar": a.reshape(-1)[0],
                       "3d": a[:, :, None], "zero_rows": a[:0]}[op[2]]
                _replace(f, op[1], new)
            elif kind == "poke":
                d = f.get(op[1])
                if isinstance(d, h5py.Dataset) and d.size and d.dtype.kind == "f":
                    a = d[()]
                    a.reshape(-1)[op[3] % a.size] = op[2]
                    d[()] = a
            elif kind == "zero":
                for name in H5_DATASETS:
                    d = f.get(name)
                    if isinstance(d, h5py.Dataset) and d.ndim >= 1:
                        _replace(f, name, d[()][:0])
            elif kind == "huge":
                d = f.get(op[1])
                if isinstance(d, h5py.Dataset) and d.ndim >= 1:
                    shape = (op[2], *d.shape[1:])
                    del f[op[1]]
                    if op[3]:  # a resizable dataset grown to the huge shape, nothing written
                        nd = f.create_dataset(op[1], shape=(1, *shape[1:]), dtype="f4",
                                              maxshape=(None, *shape[1:]),
                                              chunks=(1, *shape[1:]))
                        nd.resize(shape)
                    else:
                        f.create_dataset(op[1], shape=shape, dtype="f4",
                                         chunks=(1024, *shape[1:]))
            elif kind == "attr":
                target = f if op[1] == "/" else f.get(op[1])
                if target is not None:
                    target.attrs[op[2]] = BOGUS_ATTRS[op[3]]
            elif kind == "del_attr":
                target = f if op[1] == "/" else f.get(op[1])
                if target is not None and op[2] in target.attrs:
                    del target.attrs[op[2]]
            elif kind == "other_model":
                with h5py.File(seeds[op[1]], "r") as g:
                    name = op[2]
                    if name == "/":
                        f.attrs.update(dict(g.attrs))
                    else:
                        if name in f:
                            del f[name]
                        g.copy(g[name], f, name=name)
            elif kind == "external":
                d = f.get(op[1])
                if isinstance(d, h5py.Dataset):
                    shape, dtype = d.shape, d.dtype
                    del f[op[1]]
                    f.create_dataset(op[1], shape=shape, dtype=dtype,
                                     external=[("/dev/zero", 0, h5py.h5f.UNLIMITED)])
            elif kind == "virtual":
                d = f.get(op[1])
                if isinstance(d, h5py.Dataset):
                    layout = h5py.VirtualLayout(shape=d.shape, dtype=d.dtype)
                    layout[...] = h5py.VirtualSource(str(seeds["acts"]), op[1], shape=d.shape)
                    del f[op[1]]
                    f.create_virtual_dataset(op[1], layout)
            elif kind == "swap_layers":
                if "layers/000" in f and "layers/001" in f:
                    f.move("layers/000", "layers/tmp")
                    f.move("layers/001", "layers/000")
                    f.move("layers/tmp", "layers/001")
            elif kind == "extra_layer":
                if "layers/001" in f and "layers/002" not in f:
                    f.copy(f["layers/001"], f["layers"], name="002")
            elif kind == "group":  # a group where a dataset belongs
                if op[1] in f:
                    del f[op[1]]
                f.create_group(op[1])


def test_fuzz_dump_structured(seeds, tmp_path):
    dest = tmp_path / "acts.h5"

    @FUZZ
    @given(ops=h5_ops())
    def run(ops):
        shutil.copyfile(seeds["acts"], dest)
        apply_h5(dest, ops, seeds)
        attempt("dump", dest, read_dump)

    run()
    check_count("dump")


# ----------------------------------------------------------------------------------------------
# Structured arrays (.npy / .npz / .h5) and forged .npy headers


ARRAY_DTYPES = ["f4", "f8", "f2", "i8", "u1", "?", "c8", "S3", "U2", "V4", ">f4", "O"]


@st.composite
def array_specs(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    return (draw(st.sampled_from(ARRAY_DTYPES)), shape,
            draw(st.sampled_from([None, np.nan, np.inf, 1e300])),
            draw(st.sampled_from(["npy", "npz", "npz_other_key", "h5", "h5_other", "forged"])),
            draw(st.sampled_from([2**20, 2**40, 2**62, 10])))


def write_array(tmp: Path, spec) -> Path:
    dtype, shape, poke, fmt, big = spec
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape) * 3
    if poke is not None and a.size:
        a.reshape(-1)[0] = poke
    with np.errstate(all="ignore"):
        a = a.astype(dtype) if dtype != "O" else a.astype(object)
    if fmt == "npy":
        p = tmp / "calib.npy"
        np.save(p, a, allow_pickle=True)
    elif fmt in ("npz", "npz_other_key"):
        p = tmp / "calib.npz"
        key = "inputs" if fmt == "npz" else "weird"
        np.savez(p, **{key: a, "also": a[:1] if a.ndim else a})
    elif fmt in ("h5", "h5_other"):
        p = tmp / "calib.h5"
        with h5py.File(p, "w") as f:
            if dtype in ("U2", "O"):
                f["inputs"] = np.zeros(3)
                f["inputs"].attrs["x"] = 1
            else:
                f["inputs" if fmt == "h5" else "x"] = a
    else:  # an .npy header declaring `big` rows of 4 float32 features, 64 bytes of data
        p = tmp / "calib.npy"
        header = {"descr": "<f4", "fortran_order": False, "shape": (big, 4)}
        with open(p, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            fh.write(np.ones(16, "<f4").tobytes())
    return p


def test_fuzz_array_structured(seeds, tmp_path):
    @FUZZ
    @given(spec=array_specs())
    def run(spec):
        for old in tmp_path.iterdir():
            old.unlink()
        p = write_array(tmp_path, spec)
        attempt("arrays", p, read_array)

    run()
    check_count("arrays")


# ----------------------------------------------------------------------------------------------
# Structured checkpoints: state_dict edits in every accepted form

SD_KEYS = ["1.weight", "1.bias", "3.weight", "3.bias"]


@st.composite
def sd_ops(draw):
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "rename", "shape", "dtype", "nan", "extra",
                                     "non_tensor", "empty", "huge_value", "internals"]))
        ops.append((kind, draw(st.sampled_from(SD_KEYS)),
                    draw(st.sampled_from(["i8", "f2", "f8", "c8", "?", "bf16"])),
                    draw(st.sampled_from([float("nan"), float("inf"), 3e38]))))
    form = draw(st.sampled_from(["module", "state_dict", "wrapped_state_dict", "wrapped_model",
                                 "dataparallel_prefix", "legacy", "tutorial", "only_tensor_dict",
                                 "compile_prefix", "safetensors"]))
    return form, ops


def _edit_sd(sd: dict, ops) -> dict:
    sd = dict(sd)
    tdt = {"i8": torch.int64, "f2": torch.float16, "f8": torch.float64, "c8": torch.complex64,
           "?": torch.bool, "bf16": torch.bfloat16}
    for kind, key, dt, val in ops:
        if kind == "empty":
            return {}
        if key not in sd:
            continue
        if kind == "drop":
            del sd[key]
        elif kind == "rename":
            sd["x" + key] = sd.pop(key)
        elif kind == "shape" and isinstance(sd[key], torch.Tensor):
            sd[key] = torch.cat([sd[key], sd[key][:1]])
        elif kind == "dtype" and isinstance(sd[key], torch.Tensor):
            sd[key] = sd[key].to(tdt[dt])
        elif kind in ("nan", "huge_value") and isinstance(sd[key], torch.Tensor) \
                and sd[key].is_floating_point():
            sd[key] = sd[key].clone()
            sd[key].view(-1)[0] = val if kind == "nan" else 1e30
        elif kind == "extra":
            sd["extra.weight"] = torch.zeros(2, 2)
        elif kind == "non_tensor":
            sd[key] = [1, 2, 3]
    return sd


def _break_internals(model: nn.Module, ops) -> None:
    """The "internals" op: a module pickle whose Linear lost part of nn.Module's internals
    (or holds something else there), as a damaged file can."""
    for kind, key, dt, _ in ops:
        if kind == "internals":
            state = model[int(key[0])].__dict__
            name = {"i8": "_forward_hooks", "f2": "_forward_pre_hooks", "f8": "_modules",
                    "c8": "_parameters", "?": "training", "bf16": "_buffers"}[dt]
            if key.endswith("bias"):
                state[name] = 7
            else:
                state.pop(name, None)


def write_checkpoint(path: Path, form: str, ops) -> None:
    torch.manual_seed(0)
    model = archs.tiny()
    sd = _edit_sd(model.state_dict(), ops)
    if form == "safetensors":
        tensors = {k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
        try:
            path.write_bytes(st_save(tensors))
        except Exception:  # noqa: BLE001 - a dtype safetensors cannot store: not this form's case
            assume(False)
        return
    if form == "module":
        for name, mod in model.named_children():
            for pname in ("weight", "bias"):
                key = f"{name}.{pname}"
                if isinstance(mod, nn.Linear):
                    v = sd.get(key)
                    if isinstance(v, torch.Tensor):
                        setattr(mod, pname, nn.Parameter(v, requires_grad=False))
                    else:
                        setattr(mod, pname, None)
        _break_internals(model, ops)
        obj = model
    elif form == "state_dict" or form == "legacy":
        obj = sd
    elif form == "wrapped_state_dict":
        obj = {"state_dict": sd, "epoch": 1}
    elif form == "wrapped_model":
        obj = {"model": sd}
    elif form == "tutorial":
        obj = {"epoch": 3, "model_state_dict": sd, "optimizer_state_dict": {"state": {},
                                                                           "param_groups": []}}
    elif form == "only_tensor_dict":
        obj = {"weights_ema": sd, "step": 7}
    elif form == "compile_prefix":
        obj = {f"_orig_mod.{k}": v for k, v in sd.items()}
    else:
        obj = {f"module.{k}": v for k, v in sd.items()}
    torch.save(obj, path, _use_new_zipfile_serialization=form != "legacy")


def test_fuzz_checkpoint_structured(seeds, tmp_path):
    dest = tmp_path / "model.pt"

    @FUZZ
    @given(spec=sd_ops())
    def run(spec):
        write_checkpoint(dest, *spec)
        attempt("checkpoint", dest, read_checkpoint)

    run()
    check_count("checkpoint")


# ----------------------------------------------------------------------------------------------
# Structured configs: every key with values of every type, unknown keys, nested tables


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else
                                            "-inf" if v == -math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(cfg: dict) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


SECTION_KEYS = {s: [f.name for f in __import__("dataclasses").fields(cls)]
                for s, cls in SECTIONS.items()}
VALUES = st.one_of(
    st.booleans(), st.integers(-3, 3), st.sampled_from([0, 1, 2**31, 2**62, -(2**63)]),
    st.sampled_from([0.0, 1e-9, 0.05, 0.5, 1.0, 1.1, 1e300, -1.0, math.nan, math.inf,
                     -math.inf]),
    st.sampled_from(["cascade", "parallel", "osqp", "admm", "layer", "column", "split",
                     "epigraph", "", "x"]),
    st.lists(st.integers(0, 3), max_size=2), st.just({"a": 1}))


@st.composite
def config_specs(draw):
    cfg: dict = {}
    for key in draw(st.lists(st.sampled_from(list(TOP_KEYS) + ["epsilonn", "osqp",
                                                               "search"]),
                             max_size=5, unique=True)):
        if key in SECTIONS:
            sub = draw(st.lists(st.sampled_from(SECTION_KEYS[key] + ["warp"]), max_size=4,
                                unique=True))
            cfg[key] = {k: draw(VALUES) for k in sub}
        else:
            cfg[key] = draw(VALUES)
    return cfg


def test_fuzz_config_structured(seeds, tmp_path):
    dest = tmp_path / "c.toml"

    @FUZZ
    @given(cfg=config_specs())
    def run(cfg):
        dest.write_text(to_toml(cfg))
        attempt("config", dest, lambda p: read_config(p, solve=True))

    run()
    check_count("config")


@pytest.mark.parametrize("key", [*TOP_KEYS, *(f"{s}.{k}" for s, ks in SECTION_KEYS.items()
                                              for k in ks)])
@pytest.mark.parametrize("bad", ["text", "bool", "table", "list"])
def test_config_wrong_type_names_the_key(tmp_path, key, bad):
    """Every config key, given a value of the wrong type, is refused naming that key."""
    section, _, sub = key.rpartition(".")
    if section:
        default = getattr(SECTIONS[section](), sub)
        types = (float, int) if isinstance(default, float) else (type(default),)
    else:
        types = TOP_KEYS[key]
    value = {"text": "x", "bool": True, "table": {"a": 1}, "list": [1]}[bad]
    if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
        pytest.skip("that type is the right one for this key")
    cfg = {section: {sub: value}} if section else {key: value}
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    with pytest.raises(BadInput) as err:
        load_config(str(p))
    assert repr(key) in str(err.value) and str(p) in str(err.value)


@pytest.mark.parametrize("text,key", [("[osqp.deeper]\nx = 1\n", "osqp.deeper"),
                                      ("[search]\nscope = 'layer'\nwarp = 1\n", "search.warp"),
                                      ("[extra]\nx = 1\n", "extra"),
                                      ("Epsilon = 0.1\n", "Epsilon")])
def test_config_unknown_key_is_named(tmp_path, text, key):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(BadInput) as err:
        load_config(str(p))
    assert key in str(err.value) and "unknown" in str(err.value)


# ----------------------------------------------------------------------------------------------
# Structured reports: a node of the JSON tree replaced by a value of another type

JSON_VALUES = [None, 0, -1, 1.5, "x", "", [], [1, "a"], {}, {"a": None}, True, 10**30]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def test_fuzz_report_structured(seeds, tmp_path):
    base = json.loads(seeds["report"].read_text())
    paths = sorted(_paths(base), key=repr)
    dest = tmp_path / "report.json"

    @FUZZ
    @given(edits=st.lists(st.tuples(st.sampled_from(paths),
                                    st.sampled_from(range(len(JSON_VALUES))),
                                    st.booleans()), min_size=1, max_size=3))
    def run(edits):
        doc = json.loads(json.dumps(base))
        for path, v, delete in edits:
            node = doc
            try:
                for k in path[:-1]:
                    node = node[k]
                if not path:
                    doc = JSON_VALUES[v]
                elif delete and isinstance(node, dict):
                    node.pop(path[-1], None)
                else:
                    node[path[-1]] = JSON_VALUES[v]
            except (KeyError, IndexError, TypeError):
                continue
        dest.write_text(json.dumps(doc))
        attempt("report", dest, read_report)

    run()
    check_count("report")


def test_report_with_a_damaged_pruned_layers_list_renders(seeds, tmp_path):
    """Found by the structured fuzz: a report whose network.model.pruned_layers holds a
    non-string (here null) crashed the table with an internal error."""
    doc = json.loads(seeds["report"].read_text())
    doc["network"]["model"]["pruned_layers"] = [None, 3]
    dest = tmp_path / "report.json"
    dest.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["report", str(dest)])
    assert r.exit_code in (0, 2), (r.exit_code, r.stderr)
    if r.exit_code == 2:
        assert len(r.stderr.splitlines()) == 1
