"""Labelled data, and accuracy and mean cross-entropy of a model on it, optionally with
i.i.d. Gaussian noise added to the inputs (the paper's Figure 4). Used by `nettrim eval` and
`nettrim finetune`. No printing, no files written.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import torch
from torch import nn

from nettrim_cli.dump import load_array_file
from nettrim_cli.errors import BadInput

EVAL_FORMAT = "nettrim-eval"
EVAL_VERSION = 1
LABEL_KEYS = ("labels", "y", "Y")


def load_labelled(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (float32) and integer labels (int64) from .h5 (datasets /inputs and /labels, as
    a `nettrim dump --labels` writes) or .npz (inputs/x/X and labels/y/Y)."""
    if not os.path.exists(path):
        raise BadInput("no such file", path)
    if os.path.isdir(path):
        raise BadInput("is a directory", path)
    low = path.lower()
    if low.endswith((".h5", ".hdf5")):
        try:
            with h5py.File(path, "r") as f:
                has_labels = "labels" in f
        except OSError as e:
            raise BadInput(f"not a readable HDF5 file ({str(e).splitlines()[0][:160]})",
                           path) from e
        if not has_labels:
            raise BadInput("data has no /labels dataset (make the dump with --labels)", path)
    elif low.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
        except (OSError, ValueError, EOFError) as e:
            raise BadInput(f"cannot read data ({str(e).splitlines()[0][:160]})", path) from e
        if not any(k in keys for k in LABEL_KEYS):
            raise BadInput(f"data has no labels (expected an array named 'labels' or 'y'; "
                           f"found {keys})", path)
        if not any(k in keys for k in ("inputs", "x", "X")):
            raise BadInput(f"data has no inputs (expected an array named 'inputs' or 'x'; "
                           f"found {keys})", path)
    else:
        raise BadInput("unknown data file type; use .h5 (/inputs, /labels) or .npz "
                       "(inputs, labels)", path)
    with np.errstate(over="ignore"):  # checked just below
        x = load_array_file(path, "inputs").astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise BadInput("inputs overflow float32 (magnitudes above 3.4e38)", path)
    y = load_array_file(path, "labels")
    if y.ndim != 1:
        raise BadInput(f"labels must be one integer per sample, found shape {y.shape}", path)
    if y.shape[0] != x.shape[0]:
        raise BadInput(f"labels hold {y.shape[0]} samples but inputs hold {x.shape[0]}", path)
    if not np.issubdtype(y.dtype, np.integer):
        if y.dtype == np.bool_ or not np.array_equal(y, np.round(y)):
            raise BadInput(f"labels must be class indices (integers), found dtype {y.dtype}",
                           path)
    return x, y.astype(np.int64)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 when it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def check_fits(model: nn.Module, x: np.ndarray, y: np.ndarray, data_path: str,
               model_path: str) -> int:
    """Refuse data the model cannot classify: inputs of the wrong shape, an output that is not
    (batch, classes), or labels outside [0, classes). Returns the number of classes."""
    sample = torch.as_tensor(x[: min(4, len(x))]).to(model_dtype(model))
    try:
        with torch.no_grad():
            out = model.eval()(sample)
    except Exception as e:  # noqa: BLE001 - the model's own error on this input
        raise BadInput(f"inputs of shape {tuple(x.shape)} do not fit the model {model_path} "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:160]})", data_path) from e
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(f"the model's output is {shape}, not (batch, classes) logits",
                       model_path)
    classes = int(out.shape[1])
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise BadInput(f"labels must lie in [0, {classes - 1}] for a model with {classes} "
                       f"outputs; found {lo}..{hi}", data_path)
    return classes


def parse_noise(text: str | None) -> list[float]:
    """'0,0.2,0.4' -> [0.0, 0.2, 0.4]; None -> [0.0]."""
    if text is None:
        return [0.0]
    try:
        levels = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise BadInput(f"--noise must be comma-separated numbers, got {text!r}") from e
    if not levels or any(not np.isfinite(s) or s < 0 for s in levels):
        raise BadInput(f"--noise levels must be finite and >= 0, got {text!r}")
    return levels


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, noise: list[float] | None = None,
             seed: int = 0, batch_size: int = 1024, dtype: torch.dtype | None = None
             ) -> list[dict]:
    """Accuracy and mean cross-entropy (natural log) at each noise level.

    At level sigma the model sees x + sigma * z with z i.i.d. standard normal from
    ``numpy.random.default_rng(seed)``, drawn batch by batch in sample order; every level uses
    the same z (common random numbers, so the curve over sigma is smooth), and sigma = 0 is
    the clean data exactly. The inputs are cast to ``dtype`` (default: the model's first
    floating parameter's; a sparse model keeps its weights outside its parameters).
    """
    model.eval()
    dtype = dtype or model_dtype(model)
    results = []
    for sigma in noise or [0.0]:
        rng = np.random.default_rng(seed)
        correct, loss = 0, 0.0
        for a in range(0, len(x), batch_size):
            xb = x[a:a + batch_size]
            if sigma:
                xb = xb + (sigma * rng.standard_normal(xb.shape)).astype(xb.dtype)
            yb = torch.as_tensor(y[a:a + batch_size])
            with torch.no_grad():
                logits = model(torch.as_tensor(xb).to(dtype)).double()
            correct += int((logits.argmax(1) == yb).sum())
            loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        results.append({"noise": float(sigma), "accuracy": correct / len(x),
                        "loss": loss / len(x)})
    return results
