"""Sparse inference on CPU: pruned Linear layers replaced by sparse matrix products.

``sparse_model(model)`` swaps every ``nn.Linear`` whose weight is at least ``min_sparsity``
zeros for a ``SparseLinear`` holding the weight in CSR (compressed rows: row offsets, column
indices and the nonzero values), and each run of such layers and ReLUs inside an
``nn.Sequential`` for one ``SparseChain``. The product differs from the dense one only by the
order of the float additions. One sample at a time goes through scipy's compiled CSR mat-vec
kernel, staying in numpy along a chain (torch's sparse addmm, and even the conversions and
module calls between layers, cost as much at batch 1 as the products themselves); batches go
through torch's sparse addmm. ``make bench`` measures both against dense.
Conv layers stay dense: ``make bench`` found the unfold they need to become a matrix product
costing more than the sparse product saves.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn

# make bench: at 80% zeros the sparse product was slower than dense at every batch size on
# the 2-core machine but one (0.76-1.05x), at 90% faster at every one (1.3-1.7x)
DEFAULT_MIN_SPARSITY = 0.85
# the dtypes scipy's kernel and torch's sparse CSR product both take on CPU
KERNEL_DTYPES = (torch.float32, torch.float64)


def _matvec_kernel():
    """scipy's compiled ``y += A x`` for CSR ``A``, or None; imported when a layer is built
    (scipy.sparse takes a while to import, and checkpoint loading imports this package)."""
    try:  # private but stable for a decade; without it every batch size takes torch's path
        from scipy.sparse._sparsetools import csr_matvec
    except ImportError:  # pragma: no cover
        return None
    return csr_matvec


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` (out x in) in CSR with int32 indices; for inference only
    (no gradients, CPU tensors).

    Args:
        weight: the dense (out, in) weight; its zero entries are dropped.
        bias: the (out,) bias, or None.
    Example:
        >>> layer = SparseLinear.from_linear(nn.Linear(784, 300))
        >>> layer(torch.randn(1, 784)).shape
        torch.Size([1, 300])
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().cpu()
        self.out_features, self.in_features = (int(n) for n in w.shape)
        with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"
            warnings.simplefilter("ignore")
            csr = w.to_sparse_csr()
            self.crow = csr.crow_indices().to(torch.int32)
            self.col = csr.col_indices().to(torch.int32)
            self.values = csr.values().contiguous()
            self.weight_csr = torch.sparse_csr_tensor(self.crow, self.col, self.values,
                                                      (self.out_features, self.in_features))
        self.bias = None if bias is None else bias.detach().cpu().clone()
        # numpy views of the same memory for the one-sample kernel
        self._np = (self.crow.numpy(), self.col.numpy(), self.values.numpy())
        self._bias_np = None if self.bias is None else self.bias.to(self.values.dtype).numpy()
        self._kernel = _matvec_kernel() if self.values.dtype in KERNEL_DTYPES else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SparseLinear:
        return cls(linear.weight, linear.bias)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def extra_repr(self) -> str:
        density = self.nnz / max(self.out_features * self.in_features, 1)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nonzeros={self.nnz} ({density:.1%})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _one_sample(x, self.values.dtype) if self._kernel is not None else None
        if h is not None:
            return torch.from_numpy(self.matvec(h)[None])
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.bias is None:
            y = torch.mm(self.weight_csr, x2.t()).t()
        else:
            y = torch.addmm(self.bias.unsqueeze(1), self.weight_csr, x2.t()).t()
        return y.reshape(*lead, self.out_features)

    def matvec(self, h: np.ndarray) -> np.ndarray:
        """``W h + b`` for one sample ``h`` (1-D numpy, the weight's dtype)."""
        crow, col, values = self._np
        y = np.zeros(self.out_features, dtype=values.dtype) if self._bias_np is None \
            else self._bias_np.copy()
        self._kernel(self.out_features, self.in_features, crow, col, values, h, y)  # y += W h
        return y


class SparseChain(nn.Module):
    """Consecutive SparseLinear layers of an ``nn.Sequential``, each optionally followed by a
    ReLU, computed as one module: one sample stays in numpy from the first layer to the last
    (at batch 1 the conversions and module calls would otherwise cost as much as the products);
    a batch goes layer by layer through torch."""

    def __init__(self, layers: list[SparseLinear], relu: list[bool]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.relu = list(relu)
        self._steps = list(zip(layers, self.relu, strict=True))
        self._kernels = all(la._kernel is not None for la in layers)
        self._dtype = layers[0].values.dtype

    def extra_repr(self) -> str:
        return "relu after: " + ", ".join(str(i) for i, r in enumerate(self.relu) if r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _one_sample(x, self._dtype) if self._kernels else None
        if h is not None:
            for layer, relu in self._steps:
                h = layer.matvec(h)
                if relu:
                    np.maximum(h, 0, out=h)
            return torch.from_numpy(h[None])
        for layer, relu in self._steps:
            x = layer(x)
            if relu:
                x = torch.relu(x)
        return x


def _one_sample(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray | None:
    """``x`` as a contiguous 1-D numpy vector when it is one CPU sample of ``dtype`` that needs
    no gradient (the scipy kernel's case), else None."""
    if x.dim() != 2 or x.shape[0] != 1 or x.dtype != dtype or x.requires_grad or not x.is_cpu:
        return None
    return np.ascontiguousarray(x.numpy()[0])


def weight_sparsity(weight: torch.Tensor) -> float:
    """The fraction of zero entries of ``weight``."""
    n = weight.numel()
    return float((weight == 0).sum()) / n if n else 0.0


def sparse_model(model: nn.Module, min_sparsity: float = DEFAULT_MIN_SPARSITY,
                 inplace: bool = False) -> nn.Module:
    """``model`` with each ``nn.Linear`` whose weight is at least ``min_sparsity`` zeros
    replaced by a SparseLinear (a copy unless ``inplace``); for CPU inference. float16 and
    bfloat16 layers stay dense (no CPU sparse kernel takes them). Runs of sparse
    layers and ReLUs inside an ``nn.Sequential`` become one SparseChain.

    Args:
        model: a pruned model (for example a densified export).
        min_sparsity: layers with fewer zeros stay dense (see ``make bench`` for where the
            sparse product starts to pay).
        inplace: replace the layers in ``model`` itself.
    Returns:
        the model with sparse layers, in eval mode.
    Example:
        >>> fast = sparse_model(model)
        >>> with torch.inference_mode():
        ...     logits = fast(x)
    """
    if not inplace:
        model = copy.deepcopy(model)

    def worth(mod: nn.Module) -> bool:
        return _worth(mod, min_sparsity)

    if type(model) is nn.Linear:
        return SparseLinear.from_linear(model).eval() if worth(model) else model.eval()
    for name, mod in list(model.named_modules()):
        if worth(mod):
            model.set_submodule(name, SparseLinear.from_linear(mod))
    for mod in list(model.modules()):
        if isinstance(mod, nn.Sequential):
            _fuse(mod)
    return model.eval()


def _worth(mod: nn.Module, min_sparsity: float) -> bool:
    return type(mod) is nn.Linear and mod.weight.dtype in KERNEL_DTYPES and \
        weight_sparsity(mod.weight) >= min_sparsity


def sparse_layers(model: nn.Module, min_sparsity: float = DEFAULT_MIN_SPARSITY
                  ) -> tuple[list[str], list[str]]:
    """The ``nn.Linear`` layers of ``model`` that ``sparse_model`` makes sparse, and those it
    leaves dense (too few zeros, or a dtype no CPU sparse kernel takes), by name."""
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    return ([n for n, m in linears if _worth(m, min_sparsity)],
            [n for n, m in linears if not _worth(m, min_sparsity)])


def _fuse(seq: nn.Sequential) -> None:
    """Replace each run of SparseLinear layers (each optionally followed by an ``nn.ReLU``)
    of two modules or more in ``seq`` by one SparseChain, under the run's first key."""
    modules: dict[str, nn.Module] = {}
    run: list[tuple[str, nn.Module]] = []

    def close() -> None:
        if len(run) > 1:
            layers = [m for _, m in run if isinstance(m, SparseLinear)]
            relu = [i + 1 < len(run) and isinstance(run[i + 1][1], nn.ReLU)
                    for i, (_, m) in enumerate(run) if isinstance(m, SparseLinear)]
            modules[run[0][0]] = SparseChain(layers, relu)
        else:
            modules.update(run)
        run.clear()

    for key, mod in seq._modules.items():
        if isinstance(mod, SparseLinear) or (isinstance(mod, nn.ReLU) and run
                                             and isinstance(run[-1][1], SparseLinear)):
            run.append((key, mod))
            continue
        close()
        modules[key] = mod
    close()
    seq._modules.clear()
    seq._modules.update(modules)
