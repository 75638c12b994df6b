"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, gzip), and
seeded training of the paper's fully connected networks. Used by benchmarks and experiments;
nothing here downloads anything.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nettrim_cli import training
from nettrim_cli.errors import BadInput

FASHION_DIR = Path(os.environ.get("NETTRIM_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise BadInput("not an IDX file of unsigned bytes", str(path))
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(data) - offset != n:
        raise BadInput(f"IDX payload holds {len(data) - offset} bytes, header says {n}",
                       str(path))
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(split: str = "train", directory: Path | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (n, 784) in [0, 1] and labels as int64 (n,)."""
    d = directory or FASHION_DIR
    img, lab = FILES[split]
    if not (d / img).exists():
        raise BadInput("Fashion-MNIST not found; install the Debian package "
                       "dataset-fashion-mnist (make installs it)", str(d / img))
    x = _read_idx(d / img).reshape(-1, 784).astype(np.float32) / 255.0
    y = _read_idx(d / lab).astype(np.int64)
    return x, y


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear/ReLU stack, e.g. (784, 300, 300, 10) is the paper's NN2."""
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        mods.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 10, seed: int = 0,
          lr: float = 1e-3, batch_size: int = 128) -> nn.Module:
    """Plain seeded Adam on cross-entropy (``training.train``); returns the model in eval mode."""
    training.train(model, x, y, training.TrainConfig(epochs=epochs, lr=lr,
                                                     batch_size=batch_size, seed=seed))
    return model


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.as_tensor(x)).argmax(1).numpy()
    return float((pred == y).mean())
