"""Bad input is refused cleanly: exit code 2, one ``nettrim: error: ...`` line on stderr that
names the offending file (or config key / pickled class), no traceback, nothing on stdout, and
no output file -- not even a leftover ``.NAME.*.tmp`` -- in the output directory.

Kinds of bad input covered, with the number of cases of each (computed from the case lists
below when the module is imported, not typed by hand; see it with
``.venv/bin/python -c "import sys; sys.path[:0] = ['tests']; import test_bad_input as t;
print(t.__doc__)"``):

{summary}
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nettrim_test_archs as archs
import numpy as np
import pytest
import torch
from conftest import TESTS_DIR, Env, assert_refused, invoke
from safetensors.torch import save as st_save
from torch import nn

# ----------------------------------------------------------------------------------------------
# The case table


@dataclass
class Expect:
    argv: list
    needles: list = field(default_factory=list)  # the error line must contain each
    keep: dict[str, bytes | None] = field(default_factory=dict)  # out/ entries to keep as is
    unchanged: list[Path] = field(default_factory=list)  # input files that must not change
    absent: list[Path] = field(default_factory=list)  # e.g. a marker an exploit would create
    forbidden: list[str] = field(default_factory=list)  # must not be in the error line


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    build: Callable[[Env], Expect]
    root_skip: bool = False  # mode 000 does not stop root: skipped there


CASES: list[Case] = []


def case(kind: str, *, root_skip: bool = False):
    def register(fn: Callable[[Env], Expect]) -> Callable[[Env], Expect]:
        CASES.append(Case(fn.__name__, kind, fn, root_skip))
        return fn

    return register


def dump_argv(e: Env, model=None, inputs=None, labels=None, out=None, extra=()) -> list:
    argv = ["dump", model or e.a.model, "--inputs", inputs or e.a.calib]
    if labels is not None:
        argv += ["--labels", labels]
    return argv + ["-o", out or e.out / "acts.h5", *extra]


def prune_argv(e: Env, model=None, acts=None, config=None, out=None, report=None,
               extra=()) -> list:
    argv = ["prune", model or e.a.model, "--acts", acts or e.a.acts, "-o",
            out or e.out / "pruned.pt", "--report", report or e.out / "report.json", "-q"]
    if config is not None:
        argv += ["--config", config]
    return argv + list(extra)


def nan_model(e: Env, name: str, fill: float, param: str = "1.weight") -> Path:
    torch.manual_seed(0)
    m = archs.tiny()
    with torch.no_grad():
        dict(m.named_parameters())[param].view(-1)[0] = fill
    return e.save(name, m)


def h5_edit(e: Env, edit: Callable[[h5py.File], None], src: Path | None = None,
            name: str = "acts.h5") -> Path:
    p = e.copy(src or e.a.acts, name)
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


def fresh_dump(e: Env, n: int, name: str = "acts.h5") -> Path:
    """A well-formed dump layout for ``tiny`` holding ``n`` samples of zeros."""
    p = e.path(name)
    with h5py.File(p, "w") as f:
        f.attrs.update({"format": "nettrim-dump", "format_version": 1, "n_samples": n,
                        "n_layers": 2, "model_sha256": ""})
        f.create_dataset("inputs", shape=(n, archs.N_IN), dtype="f4")
        specs = (("1", archs.N_IN, archs.N_HID, "relu"), ("3", archs.N_HID, archs.N_OUT, "none"))
        for i, (lname, nin, nout, act) in enumerate(specs):
            g = f.create_group(f"layers/{i:03d}")
            g.attrs.update({"name": lname, "kind": "linear", "activation": act,
                            "in_features": nin, "out_features": nout, "bias": True})
            g.create_dataset("input", shape=(n, nin), dtype="f4")
            g.create_dataset("preact", shape=(n, nout), dtype="f4")
    return p


def half(e: Env, src: Path, name: str) -> Path:
    data = Path(src).read_bytes()
    return e.write(name, data[: len(data) // 2])


def zero_middle(e: Env, src: Path, name: str, n: int = 256) -> Path:
    data = bytearray(Path(src).read_bytes())
    mid = len(data) // 2
    data[mid - n // 2: mid + n // 2] = b"\0" * n
    return e.write(name, bytes(data))


# --- missing / unreadable / directory / empty ---------------------------------------------


@case("missing file")
def dump_missing_model(e):
    p = e.path("nope.pt")
    return Expect(dump_argv(e, model=p), [p, "no such file"])


@case("missing file")
def dump_missing_inputs(e):
    p = e.path("nope.npy")
    return Expect(dump_argv(e, inputs=p), [p, "no such file"])


@case("missing file")
def dump_missing_labels(e):
    p = e.path("nope_labels.npy")
    return Expect(dump_argv(e, labels=p), [p, "no such file"])


@case("missing file")
def prune_missing_model(e):
    p = e.path("nope.pt")
    return Expect(prune_argv(e, model=p), [p, "no such file"])


@case("missing file")
def prune_missing_acts(e):
    p = e.path("nope.h5")
    return Expect(prune_argv(e, acts=p), [p, "no such file"])


@case("missing file")
def prune_missing_config(e):
    p = e.path("nope.toml")
    return Expect(prune_argv(e, config=p), [p, "no such"])


@case("missing file")
def report_missing(e):
    p = e.path("nope.json")
    return Expect(["report", p], [p, "no such file"])


@case("missing file")
def dump_model_dangling_symlink(e):
    p = e.path("link.pt")
    p.symlink_to(e.path("gone.pt"))
    return Expect(dump_argv(e, model=p), [p])


def _unreadable(e: Env, src: Path, name: str) -> Path:
    p = e.copy(src, name)
    p.chmod(0)
    return p


@case("unreadable file", root_skip=True)
def dump_model_unreadable(e):
    p = _unreadable(e, e.a.model, "model.pt")
    return Expect(dump_argv(e, model=p), [p])


@case("unreadable file", root_skip=True)
def dump_inputs_unreadable(e):
    p = _unreadable(e, e.a.calib, "calib.npy")
    return Expect(dump_argv(e, inputs=p), [p])


@case("unreadable file", root_skip=True)
def prune_acts_unreadable(e):
    p = _unreadable(e, e.a.acts, "acts.h5")
    return Expect(prune_argv(e, acts=p), [p])


@case("unreadable file", root_skip=True)
def prune_config_unreadable(e):
    p = _unreadable(e, e.a.config, "c.toml")
    return Expect(prune_argv(e, config=p), [p])


def _dir(e: Env, name: str) -> Path:
    p = e.path(name)
    p.mkdir()
    return p


@case("directory given as a file")
def dump_model_is_dir(e):
    p = _dir(e, "model.pt")
    return Expect(dump_argv(e, model=p), [p, "directory"])


@case("directory given as a file")
def dump_inputs_is_dir(e):
    p = _dir(e, "calib.npy")
    return Expect(dump_argv(e, inputs=p), [p, "directory"])


@case("directory given as a file")
def dump_labels_is_dir(e):
    p = _dir(e, "y.npy")
    return Expect(dump_argv(e, labels=p), [p, "directory"])


@case("directory given as a file")
def prune_acts_is_dir(e):
    p = _dir(e, "acts.h5")
    return Expect(prune_argv(e, acts=p), [p, "directory"])


@case("directory given as a file")
def prune_config_is_dir(e):
    p = _dir(e, "c.toml")
    return Expect(prune_argv(e, config=p), [p, "directory"])


@case("empty file")
def dump_model_empty(e):
    p = e.write("model.pt", b"")
    return Expect(dump_argv(e, model=p), [p, "empty"])


@case("empty file")
def dump_inputs_empty_npy(e):
    p = e.write("calib.npy", b"")
    return Expect(dump_argv(e, inputs=p), [p])


@case("empty file")
def dump_inputs_empty_npz(e):
    p = e.write("calib.npz", b"")
    return Expect(dump_argv(e, inputs=p), [p])


@case("empty file")
def dump_labels_empty(e):
    p = e.write("y.npy", b"")
    return Expect(dump_argv(e, labels=p), [p])


@case("empty file")
def prune_acts_empty(e):
    p = e.write("acts.h5", b"")
    return Expect(prune_argv(e, acts=p), [p])


# --- not a checkpoint ---------------------------------------------------------------------


@case("not a checkpoint")
def model_random_bytes(e):
    p = e.write("model.pt", np.random.default_rng(1).bytes(3000))
    # not a pickle at all: no advice to trust it
    return Expect(dump_argv(e, model=p), [p, "not a PyTorch checkpoint"], forbidden=[TRUST])


@case("not a checkpoint")
def model_text_file(e):
    p = e.write("model.pt", "this is not a checkpoint\nat all\n")
    return Expect(dump_argv(e, model=p), [p, "not a PyTorch checkpoint"], forbidden=[TRUST])


@case("not a checkpoint")
def model_is_npy(e):
    p = e.copy(e.a.calib, "model.pt")
    return Expect(dump_argv(e, model=p), [p, "not a PyTorch checkpoint"], forbidden=[TRUST])


@case("not a checkpoint")
def model_truncated(e):
    p = half(e, e.a.model, "model.pt")
    return Expect(dump_argv(e, model=p), [p])


@case("not a checkpoint")
def model_truncated_legacy_format(e):
    torch.manual_seed(0)
    full = e.save("full.pt", archs.tiny().state_dict(), _use_new_zipfile_serialization=False)
    p = half(e, full, "model.pt")
    return Expect(dump_argv(e, model=p, extra=["--arch", "nettrim_test_archs:tiny"]), [p])


@case("not a checkpoint")
def model_corrupted_middle(e):
    p = zero_middle(e, e.a.model, "model.pt")
    return Expect(dump_argv(e, model=p), [p])


@case("not a checkpoint")
def model_is_list(e):
    p = e.save("model.pt", [1, 2, 3])
    return Expect(dump_argv(e, model=p), [p, "list"])


@case("not a checkpoint")
def model_is_tensor(e):
    p = e.save("model.pt", torch.zeros(3))
    return Expect(dump_argv(e, model=p), [p, "Tensor"])


@case("not a checkpoint")
def model_is_empty_dict(e):
    p = e.save("model.pt", {})
    return Expect(dump_argv(e, model=p, extra=["--arch", "nettrim_test_archs:tiny"]), [p])


@case("not a checkpoint")
def model_dict_of_non_tensors(e):
    p = e.save("model.pt", {"epoch": 3, "lr": 0.1})
    return Expect(dump_argv(e, model=p, extra=["--arch", "nettrim_test_archs:tiny"]), [p])


# --- state_dict and --arch ----------------------------------------------------------------

ARCH = "nettrim_test_archs:"


@case("state_dict and --arch")
def dump_state_dict_without_arch(e):
    return Expect(dump_argv(e, model=e.a.sd), [e.a.sd, "--arch"])


@case("state_dict and --arch")
def prune_state_dict_without_arch(e):
    return Expect(prune_argv(e, model=e.a.sd), [e.a.sd, "--arch"])


@case("state_dict and --arch")
def arch_mismatched_keys(e):
    return Expect(dump_argv(e, model=e.a.sd, extra=["--arch", ARCH + "no_flatten"]),
                  [e.a.sd, "no_flatten"])


@case("state_dict and --arch")
def arch_mismatched_shapes(e):
    return Expect(dump_argv(e, model=e.a.sd, extra=["--arch", ARCH + "wider"]),
                  [e.a.sd, "wider"])


@case("state_dict and --arch")
def arch_without_colon(e):
    return Expect(dump_argv(e, model=e.a.sd, extra=["--arch", "nettrim_test_archs.tiny"]),
                  ["nettrim_test_archs.tiny", "package.module:factory"])


@case("state_dict and --arch")
def arch_module_not_found(e):
    return Expect(dump_argv(e, model=e.a.sd, extra=["--arch", "no_such_module_xyz:f"]),
                  ["no_such_module_xyz"])


@case("state_dict and --arch")
def arch_attribute_missing(e):
    return Expect(dump_argv(e, model=e.a.sd, extra=["--arch", ARCH + "nothing_here"]),
                  ["nothing_here"])


@case("state_dict and --arch")
def arch_factory_not_a_module(e):
    return Expect(dump_argv(e, model=e.a.sd, extra=["--arch", ARCH + "not_a_module"]),
                  ["not_a_module", "nn.Module"])


@case("state_dict and --arch")
def arch_factory_raises(e):
    return Expect(dump_argv(e, model=e.a.sd, extra=["--arch", ARCH + "broken"]),
                  ["broken", "factory exploded"])


# --- pickles that ask for more than the allowlist -----------------------------------------

TRUST = "--trust-checkpoint"


def _exploit(e: Env, name: str, how: str) -> tuple[Path, Path]:
    marker = e.path("PWNED")
    obj = {"weights": archs.Exploit(str(marker))}
    if how == "zip":
        p = e.save(name, obj)
    elif how == "legacy":
        p = e.save(name, obj, _use_new_zipfile_serialization=False)
    else:
        p = e.write(name, pickle.dumps(obj, protocol=int(how)))
    return p, marker


@case("unsafe pickle")
def pickle_exploit_zip(e):
    p, marker = _exploit(e, "model.pt", "zip")
    return Expect(dump_argv(e, model=p), [p, "builtins.exec", TRUST], absent=[marker])


@case("unsafe pickle")
def pickle_exploit_legacy_format(e):
    p, marker = _exploit(e, "model.pt", "legacy")
    return Expect(dump_argv(e, model=p), [p, "builtins.exec", TRUST], absent=[marker])


@case("unsafe pickle")
def pickle_exploit_plain_protocol2(e):
    p, marker = _exploit(e, "model.pkl", "2")
    return Expect(dump_argv(e, model=p), [p, "builtins.exec", TRUST], absent=[marker])


@case("unsafe pickle")
def pickle_exploit_plain_protocol5(e):
    p, marker = _exploit(e, "model.pkl", "5")
    return Expect(prune_argv(e, model=p), [p, "builtins.exec", TRUST], absent=[marker])


@case("unsafe pickle")
def pickle_custom_class_setstate(e):
    marker = e.path("PWNED")
    p = e.save("model.pt", {"x": archs.Sneaky(str(marker))})
    return Expect(dump_argv(e, model=p), [p, "nettrim_test_archs.Sneaky", TRUST],
                  absent=[marker])


@case("unsafe pickle")
def pickle_custom_module_class(e):
    p = e.save("model.pt", archs.CustomNet())
    return Expect(dump_argv(e, model=p), [p, "nettrim_test_archs.CustomNet", TRUST])


@case("unsafe pickle")
def pickle_whole_lstm_module(e):
    p = e.save("model.pt", nn.Sequential(nn.Linear(4, 6), nn.LSTM(6, 3)))
    return Expect(dump_argv(e, model=p), [p, "torch.nn.modules.rnn.LSTM", TRUST])


@case("unsafe pickle")
def pickle_whole_module_legacy_format(e):
    p = e.save("model.pt", archs.tiny(), _use_new_zipfile_serialization=False)
    return Expect(dump_argv(e, model=p), [p, TRUST])


# --- NaN / Inf ----------------------------------------------------------------------------


@case("NaN/Inf in weights")
def weights_nan_module(e):
    p = nan_model(e, "model.pt", float("nan"))
    return Expect(dump_argv(e, model=p), [p, "NaN or Inf", "1.weight"])


@case("NaN/Inf in weights")
def weights_inf_bias_prune(e):
    p = nan_model(e, "model.pt", float("inf"), "3.bias")
    return Expect(prune_argv(e, model=p), [p, "NaN or Inf", "3.bias"])


@case("NaN/Inf in weights")
def weights_nan_state_dict(e):
    torch.manual_seed(0)
    sd = archs.tiny().state_dict()
    sd["3.weight"][0, 0] = float("nan")
    p = e.save("sd.pt", sd)
    return Expect(dump_argv(e, model=p, extra=["--arch", ARCH + "tiny"]), [p, "3.weight"])


@case("NaN/Inf in weights")
def weights_overflow_activations(e):
    """Finite weights whose activations overflow: found while the dump is being written, so
    this also checks that the half-written temporary file is removed."""
    m = archs.tiny()
    with torch.no_grad():
        for prm in m.parameters():
            prm.fill_(1e30)
    p = e.save("model.pt", m)
    return Expect(dump_argv(e, model=p), [p, "NaN or Inf"])


# --- labelled training data of the training-based methods (prune --method lc / ...) ---------


def lc_argv(e: Env, data, method: str = "lc") -> list:
    steps = ["--steps", "1"] if method == "lc" else ["--rounds", "1"]
    return ["prune", e.a.model, "--method", method, "--data", data, "--sparsity", "0.5",
            *steps, "--epochs", "1", "-o", e.out / "pruned.pt", "--report",
            e.out / "report.json", "-q"]


def _train_h5(e: Env, x: np.ndarray, y: np.ndarray) -> Path:
    p = e.path("train.h5")
    with h5py.File(p, "w") as f:
        f["inputs"] = x
        f["labels"] = y
    return p


@case("bad training data")
def train_labels_out_of_range(e):
    y = np.arange(32) % (archs.N_OUT + 2)
    p = _train_h5(e, _calib(), y)
    return Expect(lc_argv(e, p), [p, f"[0, {archs.N_OUT - 1}]"])


@case("bad training data")
def train_labels_negative(e):
    p = _train_h5(e, _calib(), np.full(32, -1))
    return Expect(lc_argv(e, p, "magnitude-iterative"), [p, "-1"])


@case("bad training data")
def train_inputs_do_not_fit_the_model(e):
    p = _train_h5(e, _calib(cols=archs.N_IN + 1), np.zeros(32, np.int64))
    return Expect(lc_argv(e, p), [p, "do not fit the model"])


@case("bad training data")
def train_inputs_nan(e):
    p = _train_h5(e, _calib(np.nan), np.zeros(32, np.int64))
    return Expect(lc_argv(e, p), [p, "NaN"])


@case("bad training data")
def train_labels_nan(e):
    y = np.zeros(32)
    y[5] = np.nan
    p = _train_h5(e, _calib(), y)
    return Expect(lc_argv(e, p, "magnitude-iterative"), [p, "NaN"])


@case("bad training data")
def train_labels_wrong_length(e):
    p = _train_h5(e, _calib(), np.zeros(31, np.int64))
    return Expect(lc_argv(e, p), [p, "31"])


@case("bad training data")
def train_data_without_labels(e):
    p = e.path("train.h5")
    with h5py.File(p, "w") as f:
        f["inputs"] = _calib()
    return Expect(lc_argv(e, p), [p, "/labels"])


@case("bad training data")
def train_data_missing(e):
    return Expect(lc_argv(e, e.path("nope.h5")), [e.path("nope.h5"), "no such file"])


# --- calibration inputs and labels --------------------------------------------------------


def _calib(fill=None, rows=32, cols=archs.N_IN, dtype=np.float32):
    x = np.random.default_rng(3).standard_normal((rows, cols)).astype(dtype)
    if fill is not None:
        x[rows // 2, 1] = fill
    return x


@case("bad calibration data")
def inputs_nan(e):
    p = e.npy("calib.npy", _calib(np.nan))
    return Expect(dump_argv(e, inputs=p), [p, "NaN"])


@case("bad calibration data")
def inputs_inf(e):
    p = e.npy("calib.npy", _calib(-np.inf))
    return Expect(dump_argv(e, inputs=p), [p, "Inf"])


@case("bad calibration data")
def inputs_overflow_float32(e):
    p = e.npy("calib.npy", _calib(1e300, dtype=np.float64))
    return Expect(dump_argv(e, inputs=p), [p, "float32"])


@case("bad calibration data")
def inputs_strings(e):
    p = e.npy("calib.npy", np.array([["a", "b", "c", "d"]] * 8))
    return Expect(dump_argv(e, inputs=p), [p])


@case("bad calibration data")
def inputs_object_dtype(e):
    p = e.npy("calib.npy", np.array([[1, "x", None, 2.0]] * 8, dtype=object), allow_pickle=True)
    return Expect(dump_argv(e, inputs=p), [p, "pickled"], forbidden=["allow_pickle"])


@case("bad calibration data")
def inputs_complex(e):
    p = e.npy("calib.npy", _calib(dtype=np.complex64) * 1j)
    return Expect(dump_argv(e, inputs=p), [p, "complex"])


@case("bad calibration data")
def inputs_zero_samples(e):
    p = e.npy("calib.npy", np.zeros((0, archs.N_IN), np.float32))
    return Expect(dump_argv(e, inputs=p), [p, "no samples"])


@case("bad calibration data")
def inputs_scalar(e):
    p = e.npy("calib.npy", np.float32(1.0))
    return Expect(dump_argv(e, inputs=p), [p])


@case("bad calibration data")
def inputs_wrong_feature_count(e):
    p = e.npy("calib.npy", _calib(cols=archs.N_IN + 3))
    return Expect(dump_argv(e, inputs=p), [p, "do not fit"])


@case("bad calibration data")
def inputs_one_dimensional(e):
    p = e.npy("calib.npy", np.ones(32, np.float32))
    return Expect(dump_argv(e, inputs=p), [p])


@case("bad calibration data")
def inputs_truncated_npy(e):
    full = e.npy("full.npy", _calib(rows=64))
    p = half(e, full, "calib.npy")
    return Expect(dump_argv(e, inputs=p), [p])


@case("bad calibration data")
def inputs_random_bytes_npy(e):
    p = e.write("calib.npy", np.random.default_rng(2).bytes(500))
    return Expect(dump_argv(e, inputs=p), [p], forbidden=["allow_pickle"])


@case("bad calibration data")
def inputs_unknown_extension(e):
    p = e.write("calib.csv", "1,2,3,4\n")
    return Expect(dump_argv(e, inputs=p), [p, ".npy"])


@case("bad calibration data")
def inputs_npz_no_usable_key(e):
    p = e.path("calib.npz")
    np.savez(p, a=_calib(), b=_calib())
    return Expect(dump_argv(e, inputs=p), [p, "'inputs'"])


@case("bad calibration data")
def inputs_npz_no_arrays(e):
    p = e.path("calib.npz")
    np.savez(p)
    return Expect(dump_argv(e, inputs=p), [p])


@case("bad calibration data")
def inputs_h5_without_dataset(e):
    p = e.path("calib.h5")
    with h5py.File(p, "w") as f:
        f["x"] = _calib()
    return Expect(dump_argv(e, inputs=p), [p, "/inputs"])


@case("bad calibration data")
def labels_wrong_length(e):
    p = e.npy("y.npy", np.zeros(31, np.int64))
    return Expect(dump_argv(e, labels=p), [p, "31"])


@case("bad calibration data")
def labels_nan(e):
    y = np.zeros(32)
    y[3] = np.nan
    p = e.npy("y.npy", y)
    return Expect(dump_argv(e, labels=p), [p, "NaN"])


@case("bad calibration data")
def labels_strings(e):
    p = e.npy("y.npy", np.array(["cat"] * 32))
    return Expect(dump_argv(e, labels=p), [p])


# --- activation dumps ---------------------------------------------------------------------


@case("bad activation dump")
def acts_not_a_nettrim_dump(e):
    p = e.path("acts.h5")
    with h5py.File(p, "w") as f:
        f["inputs"] = _calib()
    return Expect(prune_argv(e, acts=p), [p, "not a nettrim activation dump"])


@case("bad activation dump")
def acts_wrong_format_version(e):
    p = h5_edit(e, lambda f: f.attrs.__setitem__("format_version", 2))
    return Expect(prune_argv(e, acts=p), [p, "version 2"])


@case("bad activation dump")
def acts_missing_inputs(e):
    p = h5_edit(e, lambda f: f.__delitem__("inputs"))
    return Expect(prune_argv(e, acts=p), [p, "/inputs"])


@case("bad activation dump")
def acts_missing_layer_dataset(e):
    p = h5_edit(e, lambda f: f.__delitem__("layers/001/preact"))
    return Expect(prune_argv(e, acts=p), [p, "preact"])


@case("bad activation dump")
def acts_missing_layers_group(e):
    p = h5_edit(e, lambda f: f.__delitem__("layers"))
    return Expect(prune_argv(e, acts=p), [p, "no layers"])


@case("bad activation dump")
def acts_layer_attribute_missing(e):
    p = h5_edit(e, lambda f: f["layers/000"].attrs.__delitem__("in_features"))
    return Expect(prune_argv(e, acts=p), [p, "lacks attribute 'in_features'"])


@case("bad activation dump")
def acts_zero_samples(e):
    p = fresh_dump(e, 0)
    return Expect(prune_argv(e, acts=p), [p, "zero samples"])


def _replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    del f[name]
    f[name] = data


@case("bad activation dump")
def acts_layer_wrong_shape(e):
    p = h5_edit(e, lambda f: _replace(f, "layers/000/input", np.zeros((32, 5), np.float32)))
    return Expect(prune_argv(e, acts=p), [p, "/layers/000/input", "shape"])


@case("bad activation dump")
def acts_layer_wrong_dtype(e):
    p = h5_edit(e, lambda f: _replace(f, "layers/001/preact", np.zeros((32, 3), np.int32)))
    return Expect(prune_argv(e, acts=p), [p, "dtype"])


def _poke(f: h5py.File, name: str, row: int, value: float) -> None:
    ds = f[name]
    block = ds[row]
    block[0] = value
    ds[row] = block


@case("bad activation dump")
def acts_nan_in_layer_input(e):
    p = h5_edit(e, lambda f: _poke(f, "layers/001/input", 5, np.nan))
    return Expect(prune_argv(e, acts=p), [p, "NaN or Inf"])


@case("bad activation dump")
def acts_inf_in_preact(e):
    p = h5_edit(e, lambda f: _poke(f, "layers/000/preact", 7, np.inf))
    return Expect(prune_argv(e, acts=p), [p, "NaN or Inf"])


@case("bad activation dump")
def acts_nan_in_inputs(e):
    p = h5_edit(e, lambda f: _poke(f, "inputs", 0, np.nan))
    return Expect(prune_argv(e, acts=p), [p, "NaN or Inf"])


@case("bad activation dump")
def acts_nan_in_inputs_past_check_rows(e):
    """Past the rows the model check reads: found while pruning, still exit 2, no output."""
    p = h5_edit(e, lambda f: _poke(f, "inputs", 290, np.nan), src=e.a.acts_big)
    return Expect(prune_argv(e, acts=p), [p, "NaN or Inf"])


@case("bad activation dump")
def acts_inf_in_second_layer_past_check_rows(e):
    """Parallel mode reads layer 2's preact only after layer 1 is solved."""
    p = h5_edit(e, lambda f: _poke(f, "layers/001/preact", 299, -np.inf), src=e.a.acts_big)
    return Expect(prune_argv(e, acts=p, extra=["--mode", "parallel"]), [p, "NaN or Inf"])


@case("bad activation dump")
def acts_labels_wrong_length(e):
    p = h5_edit(e, lambda f: _replace(f, "labels", np.zeros(5)))
    return Expect(prune_argv(e, acts=p), [p, "/labels"])


@case("bad activation dump")
def acts_truncated(e):
    p = half(e, e.a.acts, "acts.h5")
    return Expect(prune_argv(e, acts=p), [p])


@case("bad activation dump")
def acts_corrupted_middle(e):
    p = zero_middle(e, e.a.acts, "acts.h5", n=1024)
    return Expect(prune_argv(e, acts=p), [p])


@case("bad activation dump")
def acts_random_bytes(e):
    p = e.write("acts.h5", np.random.default_rng(4).bytes(4096))
    return Expect(prune_argv(e, acts=p), [p])


@case("bad activation dump")
def acts_is_a_checkpoint(e):
    p = e.copy(e.a.model, "acts.h5")
    return Expect(prune_argv(e, acts=p), [p])


# --- a dump made from another model -------------------------------------------------------


@case("dump from another model")
def other_model_same_arch(e):
    return Expect(prune_argv(e, acts=e.a.acts_other_weights),
                  [e.a.acts_other_weights, "another model", e.a.model])


@case("dump from another model")
def other_model_same_arch_state_dict(e):
    return Expect(prune_argv(e, model=e.a.sd, acts=e.a.acts_other_weights,
                             extra=["--arch", ARCH + "tiny"]),
                  [e.a.acts_other_weights, "another model"])


@case("dump from another model")
def other_model_other_hidden_width(e):
    return Expect(prune_argv(e, acts=e.a.acts_wider), [e.a.acts_wider, "another model"])


@case("dump from another model")
def other_model_other_input_width(e):
    return Expect(prune_argv(e, acts=e.a.acts_five), [e.a.acts_five, "do not fit"])


# --- layers Net-Trim cannot handle --------------------------------------------------------


@case("unsupported layer")
def layer_linear_then_tanh_dump(e):
    p = e.save("model.pt", archs.tanh_net())
    return Expect(dump_argv(e, model=p), [p, "Tanh"])


@case("unsupported layer")
def layer_linear_then_tanh_prune(e):
    p = e.save("model.pt", archs.tanh_net())
    return Expect(prune_argv(e, model=p), [p, "Tanh"])


@case("unsupported layer")
def layer_lstm_state_dict(e):
    p = e.save("sd.pt", archs.lstm_net().state_dict())
    return Expect(dump_argv(e, model=p, extra=["--arch", ARCH + "lstm_net"]), [p, "LSTM"])


@case("unsupported layer")
def layer_lstm_state_dict_prune(e):
    p = e.save("sd.pt", archs.lstm_net().state_dict())
    return Expect(prune_argv(e, model=p, extra=["--arch", ARCH + "lstm_net"]), [p, "LSTM"])


@case("unsupported layer")
def layer_embedding_state_dict(e):
    p = e.save("sd.pt", archs.embed_net().state_dict())
    return Expect(dump_argv(e, model=p, extra=["--arch", ARCH + "embed_net"]),
                  [p, "Embedding"])


@case("unsupported layer")
def layer_no_linear(e):
    # conv layers are pruned since issue 14: a model of norms alone has nothing to prune
    p = e.save("model.pt", nn.Sequential(nn.Flatten(), nn.LayerNorm(archs.N_IN)))
    return Expect(dump_argv(e, model=p), [p, "no Linear or Conv layer"])


# --- checkpoint forms (issue 14) ----------------------------------------------------------


def _tiny_sd() -> dict:
    torch.manual_seed(0)
    return archs.tiny().state_dict()


def _st(e: Env, name: str, tensors: dict, **kw) -> Path:
    return e.write(name, st_save({k: v.contiguous() for k, v in tensors.items()}, **kw))


def _damaged_module(e: Env, edit: Callable[[nn.Module], None]) -> Path:
    """A module pickle whose Linear lost (or has a wrong) part of nn.Module's internals: it
    loads, and used to fail only when tracing registered a hook (exit 1)."""
    torch.manual_seed(0)
    m = archs.tiny()
    edit(m[3])
    return e.save("model.pt", m)


@case("checkpoint form")
def form_dict_without_state_dict(e):
    p = e.save("model.pt", {"epoch": 3, "optimizer_state_dict": {"state": {},
                                                                 "param_groups": []}})
    return Expect(dump_argv(e, model=p, extra=["--arch", ARCH + "tiny"]),
                  [p, "'epoch' (int)", "'optimizer_state_dict' (dict)", "model_state_dict"])


@case("checkpoint form")
def form_two_state_dicts_no_common_key(e):
    p = e.save("model.pt", {"gen": _tiny_sd(), "disc": _tiny_sd()})
    return Expect(dump_argv(e, model=p, extra=["--arch", ARCH + "tiny"]),
                  [p, "2 state_dicts", "'gen'", "'disc'"])


@case("checkpoint form")
def form_two_modules_no_common_key(e):
    torch.manual_seed(0)
    p = e.save("model.pt", {"student": archs.tiny(), "teacher": archs.tiny(), "epoch": 1})
    return Expect(dump_argv(e, model=p), [p, "2 nn.Modules", "'student'", "'teacher'"])


@case("checkpoint form")
def form_tutorial_without_arch(e):
    p = e.save("model.pt", {"epoch": 3, "model_state_dict": _tiny_sd()})
    return Expect(prune_argv(e, model=p), [p, "'model_state_dict'", "--arch"])


@case("checkpoint form")
def form_tutorial_other_arch(e):
    p = e.save("model.pt", {"epoch": 3, "model_state_dict": _tiny_sd()})
    return Expect(dump_argv(e, model=p, extra=["--arch", ARCH + "wider"]), [p, "wider"])


@case("checkpoint form")
def form_tutorial_nan_finetune(e):
    sd = _tiny_sd()
    sd["1.weight"][0, 0] = float("nan")
    p = e.save("model.pt", {"epoch": 3, "model_state_dict": sd})
    return Expect(["finetune", p, "--arch", ARCH + "tiny", "--data", e.a.acts, "--epochs", "1",
                   "-o", e.out / "tuned.pt"], [p, "NaN or Inf", "1.weight"])


@case("checkpoint form")
def form_export_container_key_not_a_string(e):
    sd = _tiny_sd()
    sd["1.weight"][0] = 0.0
    p = e.save("model.pt", {1: sd, "epoch": 3})
    return Expect(["export", p, "--arch", ARCH + "tiny", "-o", e.out / "x.pt"],
                  [p, "not a string"])


@case("checkpoint form")
def safetensors_without_arch(e):
    p = _st(e, "model.safetensors", _tiny_sd())
    return Expect(dump_argv(e, model=p), [p, "--arch"])


@case("checkpoint form")
def safetensors_truncated(e):
    full = _st(e, "full.safetensors", _tiny_sd())
    p = half(e, full, "model.safetensors")
    return Expect(prune_argv(e, model=p, extra=["--arch", ARCH + "tiny"]),
                  [p, "not a readable safetensors file"])


@case("checkpoint form")
def safetensors_header_not_json(e):
    data = bytearray(_st(e, "full.safetensors", _tiny_sd()).read_bytes())
    data[9:14] = b"#####"
    p = e.write("model.safetensors", bytes(data))
    return Expect(dump_argv(e, model=p, extra=["--arch", ARCH + "tiny"]),
                  [p, "not a readable safetensors file"])


@case("checkpoint form")
def safetensors_no_tensors(e):
    p = e.write("model.safetensors", st_save({}))
    return Expect(dump_argv(e, model=p, extra=["--arch", ARCH + "tiny"]), [p, "no tensors"])


@case("checkpoint form")
def safetensors_other_model(e):
    p = _st(e, "model.safetensors", archs.wider().state_dict())
    return Expect(dump_argv(e, model=p, extra=["--arch", ARCH + "tiny"]), [p, "does not fit"])


@case("checkpoint form")
def safetensors_inf_prune(e):
    sd = _tiny_sd()
    sd["3.bias"][1] = float("inf")
    p = _st(e, "model.safetensors", sd)
    return Expect(prune_argv(e, model=p, extra=["--arch", ARCH + "tiny"]),
                  [p, "NaN or Inf", "3.bias"])


@case("checkpoint form")
def damaged_module_lacks_hooks_dump(e):
    p = _damaged_module(e, lambda m: m.__dict__.pop("_forward_hooks"))
    return Expect(dump_argv(e, model=p), [p, "damaged checkpoint", "'3'", "_forward_hooks"])


@case("checkpoint form")
def damaged_module_lacks_hooks_prune(e):
    p = _damaged_module(e, lambda m: m.__dict__.pop("_forward_hooks"))
    return Expect(prune_argv(e, model=p), [p, "damaged checkpoint", "_forward_hooks"])


@case("checkpoint form")
def damaged_module_hooks_wrong_type(e):
    p = _damaged_module(e, lambda m: m.__dict__.__setitem__("_forward_pre_hooks", 7))
    return Expect(dump_argv(e, model=p), [p, "damaged checkpoint", "_forward_pre_hooks"])


@case("checkpoint form")
def arch_given_as_a_file(e):
    return Expect(dump_argv(e, model=e.a.sd, extra=["--arch", "models/mlp.py:make"]),
                  ["models/mlp.py:make", "not a file", "--arch models.mlp:make"])


@case("checkpoint form")
def arch_module_not_in_current_directory(e):
    return Expect(dump_argv(e, model=e.a.sd, extra=["--arch", "nt_no_such_models:make"]),
                  ["nt_no_such_models:make", "'nt_no_such_models'", "current directory",
                   os.getcwd()])


# --- exports (issue 17) -------------------------------------------------------------------


def _pruned_tiny(e: Env, name: str = "pruned.pt") -> Path:
    torch.manual_seed(0)
    m = archs.tiny()
    with torch.no_grad():
        for lin in (m[1], m[3]):
            lin.weight[lin.weight.abs() < 0.25] = 0.0
    return e.save(name, m)


def _tampered_export(e: Env, edit: Callable[[dict], None]) -> Path:
    """A torch-format export of a pruned tiny model, loaded, edited and saved again."""
    src = _pruned_tiny(e)
    exp = e.path("pruned.sparse.pt")
    r = invoke("export", src, "-o", exp)
    assert r.exit_code == 0, r.stderr
    doc = torch.load(exp, weights_only=True)
    edit(doc["state_dict"]["3.weight"])  # 3 x 6 entries: 3 mask bytes, 6 spare bits
    return e.save("tampered.pt", doc)


@case("bad export input")
def export_unpruned_checkpoint(e):
    return Expect(["export", e.a.model, "-o", e.out / "x.pt"], [e.a.model, "not pruned"])


@case("bad export input")
def export_unknown_format(e):
    p = _pruned_tiny(e)
    return Expect(["export", p, "-o", e.out / "x.pt", "--format", "zip"], ["zip"])


@case("bad export input")
def export_output_exists(e):
    p = _pruned_tiny(e)
    out = e.out / "x.pt"
    out.write_bytes(b"precious")
    return Expect(["export", p, "-o", out], [out, "--force"], keep={"x.pt": b"precious"})


@case("bad export input")
def export_over_its_input(e):
    p = _pruned_tiny(e)
    return Expect(["export", p, "-o", p, "--force"], [p, "input"], unchanged=[p])


@case("bad export input")
def export_tampered_mask_past_the_end(e):
    """The bitmask's 'index out of range': a keep bit past the weight's last entry."""
    def edit(w):
        w["mask"][-1] |= 0x80
        w["values"] = torch.cat([w["values"], torch.ones(1)])
    p = _tampered_export(e, edit)
    return Expect(["eval", p, "--data", e.a.acts, "-o", e.out / "e.json"],
                  [p, "damaged export", "past the last entry"])


@case("bad export input")
def export_tampered_values_length(e):
    p = _tampered_export(e, lambda w: w.__setitem__("values", w["values"][:-1]))
    return Expect(["eval", p, "--data", e.a.acts, "-o", e.out / "e.json"],
                  [p, "damaged export", "values are stored"])


@case("bad export input")
def export_tampered_shape(e):
    p = _tampered_export(e, lambda w: w.__setitem__("shape", [6, 5]))
    return Expect(["dump", p, "--inputs", e.a.calib, "-o", e.out / "acts.h5"],
                  [p, "damaged export"])


# --- configs ------------------------------------------------------------------------------


def _config_case(text: str | bytes, needles: tuple[str, ...], extra=()):
    def build(e: Env) -> Expect:
        p = e.write("c.toml", text)
        return Expect(prune_argv(e, config=p, extra=extra), [p, *needles])

    return build


CONFIGS = {
    "config_unknown_key": ('mode = "cascade"\nepsilonn = 0.1\n', "epsilonn"),
    "config_wrong_type": ('gamma = "big"\n', "gamma", "str"),
    "config_boolean_for_float": ("epsilon = true\n", "epsilon", "boolean"),
    "config_invalid_toml": ('mode = "cascade\n', "invalid TOML"),
    "config_not_utf8": (b"mode = '\xff\xfe'\n", "cannot read"),
    "config_gamma_below_one": ("gamma = 0.9\n", "gamma"),
    "config_unknown_section_key": ("[osqp]\neps_abs = 1e-6\nwarp = 9\n", "osqp.warp"),
    "config_section_not_a_table": ("search = 3\n", "search"),
    "config_section_wrong_type": ('[osqp]\nmax_iter = "many"\n', "osqp.max_iter"),
    "config_unknown_mode": ('mode = "sideways"\n', "mode", "sideways"),
    "config_negative_epsilon": ("epsilon = -0.1\n", "epsilon"),
    "config_nan_epsilon": ("epsilon = nan\n", "epsilon"),
    "config_epsilon_and_lambda": ("epsilon = 0.1\nlambda = 2.0\n", "lambda"),
    "config_bad_scope": ('[search]\nscope = "everything"\n', "search.scope"),
    "config_zero_max_iter": ("[osqp]\nmax_iter = 0\n", "osqp.max_iter"),
    "config_unknown_solver": ('solver = "gurobi"\n', "gurobi"),
    "config_zero_threshold_too_big": ("zero_threshold = 2\n", "zero_threshold"),
}
for _id, (_text, *_needles) in CONFIGS.items():
    CASES.append(Case(_id, "bad config", _config_case(_text, tuple(_needles))))


@case("bad config")
def config_ok_but_flag_gamma_below_one(e):
    """The flag is to blame, not the file."""
    p = e.write("c.toml", "mode = 'cascade'\ngamma = 1.2\n")
    return Expect(prune_argv(e, config=p, extra=["--gamma", "0.5"]), ["--gamma: gamma", ">= 1"],
                  forbidden=[str(p)])


@case("bad config")
def config_flag_gamma_below_one_without_config(e):
    return Expect(prune_argv(e, extra=["--gamma", "0.5"]), ["--gamma: gamma", ">= 1"])


@case("bad config")
def config_flag_lambda_not_positive(e):
    return Expect(prune_argv(e, extra=["--lambda", "-1"]), ["--lambda: lambda", "> 0"])


# --- outputs ------------------------------------------------------------------------------


@case("output protection")
def dump_output_exists(e):
    out = e.out / "acts.h5"
    out.write_bytes(b"precious")
    return Expect(dump_argv(e, out=out), [out, "--force"], keep={"acts.h5": b"precious"})


@case("output protection")
def prune_output_exists(e):
    out = e.out / "pruned.pt"
    out.write_bytes(b"precious")
    return Expect(prune_argv(e, out=out), [out, "--force"], keep={"pruned.pt": b"precious"})


@case("output protection")
def prune_report_exists(e):
    rep = e.out / "report.json"
    rep.write_text("{}")
    return Expect(prune_argv(e, report=rep), [rep, "--force"], keep={"report.json": b"{}"})


@case("output protection")
def dump_output_is_inputs(e):
    x = e.copy(e.a.calib, "calib.npy")
    return Expect(dump_argv(e, inputs=x, out=x, extra=["--force"]), [x, "input"],
                  unchanged=[x])


@case("output protection")
def dump_output_is_model(e):
    m = e.copy(e.a.model, "model.pt")
    return Expect(dump_argv(e, model=m, out=m, extra=["--force"]), [m, "input"],
                  unchanged=[m])


@case("output protection")
def dump_output_is_labels_other_spelling(e):
    y = e.copy(e.a.labels, "y.npy")
    other = e.inp / ".." / "in" / "y.npy"
    return Expect(dump_argv(e, labels=y, out=other, extra=["--force"]), [other, "input"],
                  unchanged=[y])


@case("output protection")
def prune_output_is_model(e):
    m = e.copy(e.a.model, "model.pt")
    return Expect(prune_argv(e, model=m, out=m, extra=["--force"]), [m, "input"],
                  unchanged=[m])


@case("output protection")
def prune_report_is_acts(e):
    a = e.copy(e.a.acts, "acts.h5")
    return Expect(prune_argv(e, acts=a, report=a, extra=["--force"]), [a, "input"],
                  unchanged=[a])


@case("output protection")
def prune_report_is_config_symlink(e):
    c = e.copy(e.a.config, "c.toml")
    link = e.path("link.toml")
    link.symlink_to(c)
    return Expect(prune_argv(e, config=c, report=link, extra=["--force"]), [link, "input"],
                  unchanged=[c])


@case("output protection")
def prune_report_same_as_output(e):
    out = e.out / "pruned.pt"
    return Expect(prune_argv(e, out=out, report=out), [out, "same file"])


@case("output protection")
def output_directory_missing(e):
    out = e.out / "no" / "such" / "acts.h5"
    return Expect(dump_argv(e, out=out), [out, "directory"])


@case("output protection")
def output_is_a_directory(e):
    out = e.out / "acts.h5"
    out.mkdir()
    return Expect(dump_argv(e, out=out, extra=["--force"]), [out, "directory"],
                  keep={"acts.h5": None})


@case("output protection")
def dump_output_to_stdout(e):
    return Expect(dump_argv(e, out="-"), ["stdout"])


@case("output protection")
def prune_both_outputs_to_stdout(e):
    return Expect(prune_argv(e, out="-", report="-"), ["stdout"])


# ----------------------------------------------------------------------------------------------
# Running the table

BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "duplicate case ids"


def _permissions_enforced() -> bool:
    """False for root (or anyone with CAP_DAC_OVERRIDE): mode 000 does not stop them."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "probe"
        p.write_bytes(b"x")
        p.chmod(0)
        try:
            p.read_bytes()
        except PermissionError:
            return True
        return False


PERMISSIONS_ENFORCED = _permissions_enforced()
# Also run through a real process (python -m nettrim_cli): the stderr seen by a user, warnings
# and all, with no pytest in between.
SUBPROCESS_CASES = [BY_ID[i] for i in ("dump_missing_model", "pickle_exploit_plain_protocol5",
                                       "acts_truncated", "config_invalid_toml",
                                       "layer_lstm_state_dict",
                                       "damaged_module_lacks_hooks_prune")]


def _snapshot(paths: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def _build(c: Case, env: Env) -> tuple[Expect, dict[Path, bytes]]:
    if c.root_skip and not PERMISSIONS_ENFORCED:
        pytest.skip("file permissions do not stop this user (root)")
    exp = c.build(env)
    return exp, _snapshot(exp.unchanged)


def _check_after(exp: Expect, before: dict[Path, bytes]) -> None:
    for p in exp.absent:
        assert not p.exists(), f"{p} was created: code from the file ran"
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was changed"


def _offending(exp: Expect) -> list:
    return [str(n) for n in exp.needles]


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_refused(c: Case, env: Env) -> None:
    exp, before = _build(c, env)
    r = invoke(*exp.argv)
    assert_refused(r, env.out, *_offending(exp), keep=exp.keep)
    for word in exp.forbidden:
        assert word not in r.stderr, r.stderr
    assert not list(env.inp.glob(".*.tmp")), "temporary file left next to the inputs"
    _check_after(exp, before)


@pytest.mark.parametrize("c", SUBPROCESS_CASES, ids=lambda c: c.id)
def test_refused_subprocess(c: Case, env: Env) -> None:
    exp, before = _build(c, env)
    pypath = os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "nettrim_cli", *map(str, exp.argv)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": pypath, "NETTRIM_DEBUG": ""},
                          cwd=env.inp)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nettrim: error: "), proc.stderr
    for n in _offending(exp):
        assert n in lines[0]
    assert proc.stdout == ""
    assert sorted(p.name for p in env.out.iterdir()) == sorted(exp.keep)
    _check_after(exp, before)


def test_exploit_is_live_when_trusted(env: Env) -> None:
    """Control for the pickle cases: with --trust-checkpoint the same file does run its code,
    so the refusals above are real. (Still exit 2: the payload is not a model.)"""
    p, marker = _exploit(env, "model.pt", "zip")
    r = invoke(*dump_argv(env, model=p, extra=[TRUST]))
    assert marker.exists()
    assert r.exit_code == 2, r.stderr
    assert list(env.out.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# The summary table in the module docstring


def summary_table() -> str:
    counts = Counter(c.kind for c in CASES)
    rows = [(kind, str(n)) for kind, n in counts.items()]
    rows.append(("same cases again through a subprocess", str(len(SUBPROCESS_CASES))))
    total = len(CASES) + len(SUBPROCESS_CASES)
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"    {'kind of bad input':<{width}}cases", f"    {'-' * (width + 5)}"]
    lines += [f"    {k:<{width}}{n:>5}" for k, n in rows]
    lines += [f"    {'-' * (width + 5)}", f"    {'total':<{width}}{total:>5}"]
    skipped = sum(c.root_skip for c in CASES)
    lines.append(f"\n{skipped} of them (the unreadable-file cases) are skipped when run as root.")
    return "\n".join(lines)


__doc__ = __doc__.replace("{summary}", summary_table())


def test_summary_counts_what_runs(request) -> None:
    """The docstring's total is the number of bad-input tests pytest collected here."""
    total = int(__doc__.split("total")[1].split()[0])
    assert total == len(CASES) + len(SUBPROCESS_CASES)
    if not request.config.getoption("keyword") and not request.config.getoption("markexpr"):
        mine = [it for it in request.session.items if it.path == Path(__file__)
                and it.originalname in ("test_refused", "test_refused_subprocess")]
        if mine:  # not when this test was picked out alone
            assert len(mine) == total


def test_atomic_output_gets_umask_mode(env: Env) -> None:
    """Not a bad input, but the atomic writer's business: the renamed temporary file must not
    keep mkstemp's 0o600."""
    out = env.out / "acts.h5"
    r = invoke(*dump_argv(env, out=out))
    assert r.exit_code == 0, r.stderr
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in env.out.iterdir()) == ["acts.h5"]
