"""One-shot pruning baselines that Net-Trim is compared with, at a given per-layer count.

Each arithmetic function takes a layer's weights ``W`` (M outputs x N inputs), optionally its
calibration inputs ``X`` (P samples x N) and ``count``, the number of weights to keep, and
returns new weights with exactly ``count`` kept positions (the others exactly zero). Biases are
never touched and never counted. None of them uses the ReLU constraint of Net-Trim.

- ``magnitude``: Han, Pool, Tran, Dally, "Learning both weights and connections for efficient
  neural networks" (NIPS 2015), one shot without retraining -- the paper's HPTD baseline:
  keep the ``count`` largest |w| of the layer.
- ``wanda``: Sun, Liu, Bair, Kolter, "A simple and effective pruning approach for large
  language models" (2023): score |W_ij| * ||X_j||_2, compared within each output row; no
  weight update.
- ``sparsegpt``: Frantar, Alistarh, "SparseGPT: massive language models can be accurately
  pruned in one-shot" (ICML 2023): optimal-brain-surgeon masks and updates with one Cholesky
  factor of H^-1, H = X^T X + damp * mean(diag) * I, block by block over the input columns.

``OneShot`` (registered as ``magnitude``, ``wanda`` and ``sparsegpt``) runs one of them over a
checkpoint's prunable units on the calibration inputs of the *original* network (from the
activation dump), i.e. every unit independently, as in Net-Trim's parallel mode.
"""

from __future__ import annotations

import time

import numpy as np

from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.dump import DumpReader
from nettrim_cli.errors import BadInput
from nettrim_cli.graph import LayerInfo
from nettrim_cli.methods.base import (
    LayerResult,
    Method,
    MethodResult,
    RunHooks,
    original_weights,
)
from nettrim_cli.methods.netrim.unit import build, sampled_discrepancy, unit_rows
from nettrim_cli.methods.network import network_summary
from nettrim_cli.unitdata import folded_preact, full_discrepancy, unit_output, unit_view

METHODS = ("magnitude", "wanda", "sparsegpt")
SPARSEGPT_DAMP = 0.01
SPARSEGPT_BLOCK = 128


def count_for_sparsity(size: int, sparsity: float) -> int:
    """Weights kept at a uniform sparsity: round((1 - s) * size), halves rounded up."""
    return int(np.floor((1.0 - sparsity) * size + 0.5))


def _check(W: np.ndarray, count: int) -> None:
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D, got shape {W.shape}")
    if not 0 <= count <= W.size:
        raise ValueError(f"count {count} outside [0, {W.size}]")


def _lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the ``k`` smallest scores; ties go to the lower index (stable)."""
    return np.argsort(scores, kind="stable")[:k]


def magnitude(W: np.ndarray, count: int) -> np.ndarray:
    """Keep the ``count`` largest |w| of the whole layer (ties: the lower flat index wins)."""
    _check(W, count)
    out = np.array(W, dtype=np.float64, copy=True)
    flat = out.reshape(-1)
    flat[_lowest(np.abs(flat), W.size - count)] = 0.0
    return out


def row_counts(scores: np.ndarray, count: int) -> np.ndarray:
    """Weights kept per row: as equal as possible and summing to ``count``.

    Every row keeps floor(count / M); the remaining r = count mod M extra weights go to the r
    rows whose next-best score (their (q+1)-th largest) is largest, ties to the lower row.
    """
    M, N = scores.shape
    q, r = divmod(count, M)
    counts = np.full(M, q, dtype=np.int64)
    if r:
        nxt = -np.sort(-scores, axis=1)[:, q]  # q < N whenever r > 0
        counts[np.argsort(-nxt, kind="stable")[:r]] += 1
    return counts


def wanda(W: np.ndarray, X: np.ndarray, count: int) -> np.ndarray:
    """Keep, in each output row, the weights with the largest |W_ij| * ||X_j||_2.

    Wanda compares scores within each output row at a uniform per-row sparsity; when
    ``count`` is not a multiple of the number of rows the rows' counts differ by at most one
    (see ``row_counts``), so the layer keeps exactly ``count``. No weight is updated.
    """
    _check(W, count)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != W.shape[1]:
        raise ValueError(f"X has shape {X.shape}, expected (P, {W.shape[1]})")
    norms = np.sqrt(np.einsum("pj,pj->j", X, X))
    scores = np.abs(W) * norms[None, :]
    keep = row_counts(scores, count)
    out = np.array(W, dtype=np.float64, copy=True)
    for i in range(W.shape[0]):
        out[i, _lowest(scores[i], W.shape[1] - keep[i])] = 0.0
    return out


def allocate(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over parts of the given sizes in proportion, rounding the running sum
    (halves up), so the parts add up to ``total`` exactly and none exceeds its size."""
    whole = sum(sizes)
    if whole == 0:
        return [0] * len(sizes)
    cum = np.cumsum([0, *sizes])
    done = [int(np.floor(total * c / whole + 0.5)) for c in cum]
    done[-1] = total
    return [b - a for a, b in zip(done[:-1], done[1:], strict=True)]


def block_prune_counts(dead: np.ndarray, n_rows: int, count: int,
                       blocksize: int) -> list[int]:
    """How many weights each column block of SparseGPT prunes so that the layer keeps exactly
    ``count``: a block first prunes the weights of its dead input features (zero on every
    sample; they are already zero), and the rest of the layer's total is split over the blocks
    in proportion to their live weights (``allocate``). When ``count`` exceeds the live
    weights, all of those are kept and the layer holds fewer than ``count`` nonzeros."""
    n_cols = len(dead)
    starts = range(0, n_cols, blocksize)
    dead_b = [n_rows * int(dead[a:a + blocksize].sum()) for a in starts]
    live_b = [n_rows * min(blocksize, n_cols - a) - d for a, d in zip(starts, dead_b,
                                                                       strict=True)]
    rest = max(0, n_rows * n_cols - count - sum(dead_b))
    return [d + k for d, k in zip(dead_b, allocate(live_b, rest), strict=True)]


def sparsegpt(W: np.ndarray, X: np.ndarray, count: int, damp: float = SPARSEGPT_DAMP,
              blocksize: int = SPARSEGPT_BLOCK) -> np.ndarray:
    """SparseGPT's one-shot OBS pruning of a layer to ``count`` kept weights.

    H = X^T X + damp * mean(diag(X^T X)) * I; U = the upper Cholesky factor of H^-1, shared
    by all rows. Columns are visited in blocks of ``blocksize``; in each block the weights with
    the smallest w^2 / U_jj^2 over the whole block (all rows together, as SparseGPT's
    unstructured mode does) are pruned, and each pruned column's error is spread over the
    columns to its right (inside the block at once, to later blocks after it). Input features
    that are zero on every sample have their weights set to zero first (as SparseGPT does;
    they do not change the output on X) and count as pruned; the rest of the layer's pruning
    is split over the blocks in proportion to their size, rounded cumulatively
    (``block_prune_counts``), so the layer keeps exactly ``count`` weights (unless ``count``
    exceeds the weights of live features). A kept weight is never exactly zero in practice:
    it is the original weight plus the compensation of the columns to its left.
    """
    _check(W, count)
    X = np.asarray(X, dtype=np.float64)
    M, N = W.shape
    if X.ndim != 2 or X.shape[1] != N:
        raise ValueError(f"X has shape {X.shape}, expected (P, {N})")
    if count == W.size:
        return np.array(W, dtype=np.float64, copy=True)
    W = np.array(W, dtype=np.float64, copy=True)
    H = X.T @ X
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(N)] += damp * float(np.mean(np.diag(H)))
    try:
        Hinv = np.linalg.inv(np.linalg.cholesky(H))  # L^-1, so H^-1 = L^-T L^-1
        U = np.linalg.cholesky(Hinv.T @ Hinv).T  # upper factor: H^-1 = U^T U
    except np.linalg.LinAlgError:
        H[np.diag_indices(N)] += float(np.mean(np.diag(H)))
        Hinv = np.linalg.inv(np.linalg.cholesky(H))
        U = np.linalg.cholesky(Hinv.T @ Hinv).T
    prune_counts = block_prune_counts(dead, M, count, blocksize)
    for b, i1 in enumerate(range(0, N, blocksize)):
        i2 = min(i1 + blocksize, N)
        W1 = W[:, i1:i2].copy()
        U1 = U[i1:i2, i1:i2]
        d = np.diag(U1)
        scores = (W1 ** 2 / d[None, :] ** 2).reshape(-1)
        mask = np.zeros(W1.size, dtype=bool)
        mask[_lowest(scores, prune_counts[b])] = True
        mask = mask.reshape(W1.shape)
        Err = np.zeros_like(W1)
        for j in range(i2 - i1):
            w = W1[:, j]
            q = np.where(mask[:, j], 0.0, w)
            err = (w - q) / d[j]
            W1[:, j:] -= np.outer(err, U1[j, j:])
            W1[:, j] = q  # exact zeros where pruned
            Err[:, j] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    return W


def prune_one(method: str, W: np.ndarray, X: np.ndarray | None, count: int) -> np.ndarray:
    if method == "magnitude":
        return magnitude(W, count)
    if method == "wanda":
        return wanda(W, X, count)
    if method == "sparsegpt":
        return sparsegpt(W, X, count)
    raise BadInput(f"unknown pruning method {method!r}; use netrim, {', '.join(METHODS)}")


class OneShot(Method):
    """A one-shot baseline pruned to exact per-layer counts: ``--match REPORT`` (a Net-Trim
    report's counts) or ``--sparsity S`` (the same fraction of every layer)."""

    options = ("--match", "--sparsity")
    hint = ""

    def __init__(self, match_path: str | None = None, sparsity: float | None = None) -> None:
        if (match_path is None) == (sparsity is None):
            raise BadInput(f"--method {self.name} needs exactly one of --match REPORT.json and "
                           "--sparsity S")
        if sparsity is not None and not 0.0 <= sparsity < 1.0:
            raise BadInput(f"--sparsity must be in [0, 1), got {sparsity}")
        self.match_path, self.sparsity = match_path, sparsity
        self.matched: dict | None = None

    def load(self) -> None:
        from nettrim_cli.report import read_report_file

        self.matched = read_report_file(self.match_path) if self.match_path else None

    def input_files(self) -> dict[str, str]:
        return {"match": self.match_path} if self.match_path else {}

    def settings(self) -> dict:
        return {"method": self.name, "sparsity": self.sparsity, "match": self.match_path,
                "calibration": "original network's layer inputs"}

    def run(self, ckpt: Checkpoint, dump: DumpReader, hooks: RunHooks) -> MethodResult:
        """Prune every prunable unit to its count. Each unit sees the original network's input
        to it from the dump (no cascade), and its discrepancy is measured the way Net-Trim's
        parallel mode measures it: ||act(X W^T + b) - act(X W0^T + b)||_F on that input, act
        the ReLU for a unit followed by one."""
        prunable = ckpt.prunable
        if self.matched is not None:
            counts = counts_from_report(self.matched, prunable, self.match_path)
        else:
            counts = counts_for_sparsity(prunable, self.sparsity)
        out: list[LayerResult] = []
        for i, info in enumerate(prunable):
            if hooks.on_layer is not None:
                hooks.on_layer(i, len(prunable), info.name)
            out.append(self._layer(dump, i, info, ckpt, counts[info.name]))
        network = {**network_summary(ckpt, dump.inputs(), {o.info.name: (o.W, o.b) for o in out},
                                     [(o.W, o.W0) for o in out]),
                   "bound": None, "bound_formula": None,
                   "bound_note": f"not applicable: {self.name} has no eps and no bound",
                   "bound_holds": None}
        settings = {"mode": "parallel", "epsilon": None, "gamma": None, "lambda": None,
                    "solver": self.name, "zero_threshold": None, "osqp": None, "search": None,
                    **self.settings()}
        return MethodResult(method=self.name, mode="parallel", settings=settings, layers=out,
                            network=network)

    def _layer(self, dump: DumpReader, i: int, info: LayerInfo, ckpt: Checkpoint,
               count: int) -> LayerResult:
        """One unit on the original network's input to it: a conv unit on the patches Net-Trim
        would sample (the default budget, seed 0), each group on its own input channels, the
        kept count split over the groups by size; BN folded as for Net-Trim."""
        t0 = time.perf_counter()
        W0, b0 = original_weights(ckpt, info)
        module = ckpt.module(info.name)
        bn = ckpt.module(info.bn) if info.bn else None
        x, preact, shortcut = dump.layer_input(i), dump.layer_preact(i), dump.layer_shortcut(i)
        view = unit_view(module, bn, x, preact, shortcut,
                         unit_rows(info, dump.n_samples, None, 0, i))
        unit = build(info, module, view, W0, b0, False, None, 1.0, 1.0)
        if len(unit.parts) == 1 or self.name == "magnitude":
            W = self.prune_matrix(W0, view.X if len(unit.parts) == 1 else None, count)
        else:
            W = np.zeros_like(W0)
            sizes = [p.W0.size for _, p in unit.parts]
            for (rows, p), k in zip(unit.parts, allocate(sizes, count), strict=True):
                W[rows] = self.prune_matrix(p.W0, p.design.dense(), k)
        figures = {"kept_target": count, "epsilon": None, "lambda": None, "constraint": None,
                   "rows": view.used, "rows_total": view.total}
        if info.kind == "conv":
            disc, norm = full_discrepancy(module, x, W, b0, folded_preact(preact, bn), shortcut,
                                          info.activation)
            figures.update(discrepancy_all=disc, output_norm_all=norm)
        return LayerResult(
            info=info, W=W, b=b0, W0=W0,
            discrepancy=sampled_discrepancy(unit, info.activation, W, b0),
            y_norm=float(np.linalg.norm(unit_output(view.Z, view.S, info.activation))),
            seconds=time.perf_counter() - t0,
            program=f"{self.name} (one shot, no activation constraint)", record=figures)

    def prune_matrix(self, W: np.ndarray, X: np.ndarray, count: int) -> np.ndarray:
        return prune_one(self.name, W, X, count)


class Magnitude(OneShot):
    name = "magnitude"


class Wanda(OneShot):
    name = "wanda"


class SparseGPT(OneShot):
    name = "sparsegpt"

    def settings(self) -> dict:
        return {**super().settings(), "damp": SPARSEGPT_DAMP, "blocksize": SPARSEGPT_BLOCK}


def counts_from_report(report: dict, layers: list[LayerInfo], path: str) -> dict[str, int]:
    """Per-layer kept-weight counts from a nettrim report (``path`` names it in errors);
    refused unless its pruned layers are exactly ``layers`` (names and shapes)."""
    theirs = [(la.get("name"), list(la.get("shape") or []), la.get("nonzeros_after"))
              for la in report["layers"] if la.get("kind") in ("linear", "conv")]
    mine = [(la.name, [la.out_features, la.in_features]) for la in layers]
    if [(n, s) for n, s, _ in theirs] != mine:
        raise BadInput("--match: the report is of another model: its pruned layers "
                       f"{[(n, s) for n, s, _ in theirs]} differ from the checkpoint's {mine}",
                       path)
    counts = {}
    for name, shape, nnz in theirs:
        size = shape[0] * shape[1]
        if not isinstance(nnz, int) or isinstance(nnz, bool) or not 0 <= nnz <= size:
            raise BadInput(f"--match: layer {name!r} has nonzeros_after {nnz!r}, not an "
                           f"integer in [0, {size}]", path)
        counts[name] = nnz
    return counts


def counts_for_sparsity(layers: list[LayerInfo], sparsity: float) -> dict[str, int]:
    return {la.name: count_for_sparsity(la.out_features * la.in_features, sparsity)
            for la in layers}
