"""Algorithms 1 (parallel) and 2 (cascade) of the paper: walk the layers, build each layer's
program, call a solver, collect what happened. No files, no printing: progress goes out
through callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from nettrim_cli.checkpoint import Checkpoint, LayerInfo, pruned_copy
from nettrim_cli.dump import DumpReader, forward_collect
from nettrim_cli.errors import BadInput
from nettrim_cli.program import RELU, LayerProgram
from nettrim_cli.solvers.base import (
    LayerSolution,
    LayerSolver,
    Progress,
    SolverSettings,
    no_progress,
)
from nettrim_cli.workdir import WorkDir, solution_from_meta, solution_meta

PARALLEL = "parallel"
CASCADE = "cascade"


@dataclass
class PruneSettings:
    """What `nettrim prune` was asked to do.

    epsilon: the relative eps_r: eps_l = epsilon * ||Y^(l)||_F per layer in parallel mode,
        eps_1 = epsilon * ||Y^(1)||_F in cascade mode (section 3.1).
    gamma: the inflation rate of eq. 7 (cascade, layers 2..L), >= 1.
    lam: a fixed lambda for eq. 11 instead of an eps (every layer).
    """

    mode: str = CASCADE
    epsilon: float | None = 0.05
    gamma: float = 1.1
    lam: float | None = None
    solver: SolverSettings = field(default_factory=SolverSettings)


@dataclass
class LayerOutcome:
    info: LayerInfo
    W: np.ndarray | None  # pruned weights (M, N), None for kept layers
    b: np.ndarray | None
    W0: np.ndarray | None
    epsilon: float | None
    solution: LayerSolution | None
    discrepancy: float | None
    y_norm: float | None
    seconds: float = 0.0


@dataclass
class PruneResult:
    settings: PruneSettings
    layers: list[LayerOutcome]
    network: dict

    @property
    def weights(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        return {o.info.name: (o.W, o.b) for o in self.layers if o.W is not None}


def _original(ckpt: Checkpoint, info: LayerInfo) -> tuple[np.ndarray, np.ndarray | None]:
    mod = ckpt.module(info.name)
    W = mod.weight.detach().cpu().double().numpy()
    b = mod.bias.detach().cpu().double().numpy() if mod.bias is not None else None
    return W, b


def _target(preact: np.ndarray, activation: str) -> np.ndarray:
    return np.maximum(preact, 0.0) if activation == RELU else preact


def _active_set(Y: np.ndarray, activation: str) -> np.ndarray:
    """Omega of eq. 3 from the layer's target: the one place it is computed from outputs."""
    return Y > 0 if activation == RELU else np.ones_like(Y, dtype=bool)


def _collect_inputs(model: torch.nn.Module, layers: list[LayerInfo], inputs: np.ndarray,
                    name: str) -> np.ndarray:
    """The input of layer ``name`` when ``model`` runs on the calibration inputs."""
    parts = []
    only = [la for la in layers if la.name == name]
    for _, found, _ in forward_collect(model, only, inputs):
        parts.append(found[name][0].astype(np.float64))
    return np.concatenate(parts, axis=0)


def _outputs(model: torch.nn.Module, layers: list[LayerInfo], inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([out.astype(np.float64)
                           for _, _, out in forward_collect(model, [], inputs)], axis=0)


def prune(ckpt: Checkpoint, dump: DumpReader, settings: PruneSettings, solver: LayerSolver,
          on_layer: Callable[[int, int, str], None] | None = None,
          progress: Progress = no_progress, workdir: WorkDir | None = None) -> PruneResult:
    """Run parallel (Algorithm 1) or cascade (Algorithm 2) Net-Trim over the prunable layers.

    Args:
        ckpt: the loaded checkpoint; its traced layers must match the dump's.
        dump: the validated activation dump (original inputs and pre-activations).
        settings: mode, epsilon / gamma / lambda and solver settings.
        solver: the layer solver (``nettrim_cli.solvers.make_solver``).
        on_layer: called as on_layer(index, count, name) before each prunable layer (parallel
            mode with ``executor = "ray"``: as each layer finishes, index counting the
            finished ones, since the layers are solved at the same time).
        progress: the solver's per-column progress callback.
        workdir: where finished layers (and, for solvers whose capabilities say journal,
            columns)
            are recorded durably; layers recorded there are taken from it (resume). Parallel
            mode on Ray records whole layers only, as they finish.
    Returns:
        the pruned weights per layer, per-layer outcomes and network-level figures.
    """
    if settings.mode not in (PARALLEL, CASCADE):
        raise BadInput(f"unknown mode {settings.mode!r}; use parallel or cascade")
    if settings.mode == CASCADE and settings.gamma < 1.0:
        raise BadInput(f"gamma must be >= 1 (eq. 7), got {settings.gamma}")
    if (settings.epsilon is None) == (settings.lam is None):
        raise BadInput("give exactly one of --epsilon and --lambda")
    layers = ckpt.layers
    prunable = [la for la in layers if la.prunable]
    inputs = dump.inputs()
    outcomes: list[LayerOutcome] = []
    pruned: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    if settings.mode == PARALLEL and settings.solver.executor == "ray":
        # Algorithm 1's layers are independent: solved at the same time on the cluster
        outcomes = _parallel_on_ray(ckpt, dump, inputs, settings, solver, prunable, on_layer,
                                    workdir, pruned)
    else:
        for i, info in enumerate(prunable):
            if on_layer is not None:
                on_layer(i, len(prunable), info.name)
            t0 = time.perf_counter()
            W0, b0 = _original(ckpt, info)
            record = workdir.load_layer(i) if workdir is not None else None
            if record is not None:
                outcome = _recorded_outcome(info, record, W0, b0)
                pruned[info.name] = (outcome.W, outcome.b)
                outcomes.append(outcome)
                continue
            program, eps, y_norm = _layer_program(ckpt, dump, inputs, settings, i, info, W0,
                                                  b0, pruned)
            journal = (workdir.journal(i) if workdir is not None
                       and solver.capabilities.journal else None)
            sol = solver.solve(program, settings.solver, progress, journal=journal)
            outcomes.append(_solved(i, info, program, sol, W0, b0, eps, y_norm,
                                    time.perf_counter() - t0, pruned, workdir))
    kept = [LayerOutcome(info=la, W=None, b=None, W0=None, epsilon=None, solution=None,
                         discrepancy=None, y_norm=None) for la in layers if not la.prunable]
    order = {la.name: k for k, la in enumerate(layers)}
    outcomes = sorted(outcomes + kept, key=lambda o: order[o.info.name])
    network = _network_figures(ckpt, layers, inputs, pruned, outcomes, settings)
    return PruneResult(settings=settings, layers=outcomes, network=network)


def _layer_program(ckpt: Checkpoint, dump: DumpReader, inputs: np.ndarray,
                   settings: PruneSettings, i: int, info: LayerInfo, W0: np.ndarray,
                   b0: np.ndarray | None, pruned: dict) -> tuple[LayerProgram, float | None, float]:
    """Layer i's program (Algorithm 1 or 2), its eps and ||Y||_F."""
    Y = _target(dump.layer_preact(i), info.activation)
    if settings.mode == PARALLEL or i == 0:
        X = dump.layer_input(i)
        V = None
    else:
        # Algorithm 2: the pruned network's own input to this layer, and V = W^T Yhat
        X = _collect_inputs(pruned_copy(ckpt, pruned), ckpt.layers, inputs, info.name)
        V = X @ W0.T + (b0 if b0 is not None else 0.0)
    y_norm = float(np.linalg.norm(Y))
    eps = None
    if settings.lam is None:
        if settings.mode == PARALLEL or i == 0:
            eps = settings.epsilon * y_norm
        else:
            act = _active_set(Y, info.activation)
            # eq. 7: eps_l^2 = gamma * sum over the active set of (w^T yhat - y)^2
            eps = float(np.sqrt(settings.gamma * np.sum(np.where(act, V - Y, 0.0) ** 2)))
    program = LayerProgram(X=X, Y=Y, W0=W0, b0=b0, activation=info.activation,
                           V=V if info.activation == RELU else None, epsilon=eps,
                           lam=settings.lam, name=info.name,
                           active_set=_active_set(Y, info.activation))
    return program, eps, y_norm


def _solved(i: int, info: LayerInfo, program: LayerProgram, sol: LayerSolution, W0, b0,
            eps: float | None, y_norm: float, seconds: float, pruned: dict,
            workdir: WorkDir | None) -> LayerOutcome:
    """A solved layer's outcome, recorded in the work folder."""
    W = sol.Wa[:, :info.in_features].copy()
    b = sol.Wa[:, info.in_features].copy() if b0 is not None else None
    pruned[info.name] = (W, b)
    outcome = LayerOutcome(info=info, W=W, b=b, W0=W0, epsilon=eps, solution=sol,
                           discrepancy=program.discrepancy(sol.Wa), y_norm=y_norm,
                           seconds=seconds)
    if workdir is not None:
        workdir.save_layer(i, {"W": W, "b": b, "Wa": sol.Wa}, {
            "name": info.name, "epsilon": eps, "discrepancy": outcome.discrepancy,
            "y_norm": y_norm, "seconds": outcome.seconds, "solution": solution_meta(sol)})
    return outcome


def _parallel_on_ray(ckpt: Checkpoint, dump: DumpReader, inputs: np.ndarray,
                     settings: PruneSettings, solver: LayerSolver,
                     prunable: list[LayerInfo], on_layer, workdir,
                     pruned: dict) -> list[LayerOutcome]:
    """Algorithm 1 with every layer not recorded in the work folder solved at the same time on
    a Ray cluster (nettrim_cli/solvers/ray_layers.py); on_layer is called as layers finish,
    in the order they finish. Returns the outcomes in network order."""
    from nettrim_cli.solvers.ray_layers import RayLayers

    n = len(prunable)
    done: dict[int, LayerOutcome] = {}
    todo: dict[int, tuple[LayerInfo, np.ndarray, np.ndarray | None]] = {}
    for i, info in enumerate(prunable):
        W0, b0 = _original(ckpt, info)
        record = workdir.load_layer(i) if workdir is not None else None
        if record is None:
            todo[i] = (info, W0, b0)
            continue
        if on_layer is not None:
            on_layer(len(done), n, info.name)
        done[i] = _recorded_outcome(info, record, W0, b0)
        pruned[info.name] = (done[i].W, done[i].b)
    if todo:
        shapes = {i: (dump.n_samples, info.in_features, info.out_features)
                  for i, (info, _, _) in todo.items()}
        figures: dict[int, tuple[float | None, float]] = {}
        with RayLayers(solver, settings.solver, shapes) as pool:
            for i in pool.order:
                info, W0, b0 = todo[i]
                program, eps, y_norm = _layer_program(ckpt, dump, inputs, settings, i, info,
                                                      W0, b0, pruned)
                figures[i] = (eps, y_norm)
                pool.submit(i, program)  # the driver keeps only the object reference
                del program
            for i, sol, seconds in pool.results():
                info, W0, b0 = todo[i]
                if on_layer is not None:
                    on_layer(len(done), n, info.name)
                done[i] = _solved(i, info, pool.program(i), sol, W0, b0, *figures[i], seconds,
                                  pruned, workdir)
                pool.release(i)
    return [done[i] for i in range(n)]


def _recorded_outcome(info: LayerInfo, record, W0, b0) -> LayerOutcome:
    """A layer finished by an earlier, interrupted run, as recorded in the work folder."""
    arrays, meta = record
    W, Wa = arrays.get("W"), arrays.get("Wa")
    b = arrays.get("b")
    if (meta.get("name") != info.name or W is None or Wa is None or W.shape != W0.shape
            or (b is None) != (b0 is None)):
        raise BadInput(f"the work folder's record of layer {info.name} does not fit the model; "
                       "remove the folder to start over")
    return LayerOutcome(info=info, W=W, b=b, W0=W0, epsilon=meta["epsilon"],
                        solution=solution_from_meta(meta["solution"], Wa),
                        discrepancy=meta["discrepancy"], y_norm=meta["y_norm"],
                        seconds=meta["seconds"])


def network_summary(ckpt: Checkpoint, inputs: np.ndarray,
                    pruned: dict[str, tuple[np.ndarray, np.ndarray | None]],
                    weights: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The report's network figures every method shares: weight counts over the pruned layers
    (``weights``: (W, W0) pairs) and the measured output discrepancy on the calibration set."""
    y = _outputs(ckpt.model, [], inputs)
    yhat = _outputs(pruned_copy(ckpt, pruned), [], inputs)
    disc = float(np.linalg.norm(yhat - y))
    ynorm = float(np.linalg.norm(y))
    params = sum(W.size for W, _ in weights)
    nnz = sum(int(np.count_nonzero(W)) for W, _ in weights)
    return {
        "params": params,
        "nonzeros_before": sum(int(np.count_nonzero(W0)) for _, W0 in weights),
        "nonzeros_after": nnz,
        "pruned_fraction": 1.0 - nnz / params if params else 0.0,
        "discrepancy": disc,
        "relative_discrepancy": disc / ynorm if ynorm > 0 else 0.0,
        "output_norm": ynorm,
    }


def _network_figures(ckpt, layers, inputs, pruned, outcomes, settings) -> dict:
    """Measured output discrepancy on the calibration set and the Theorem 1/2 bound."""
    done = [o for o in outcomes if o.W is not None]
    net = network_summary(ckpt, inputs, pruned, [(o.W, o.W0) for o in done])
    bound, formula, note = _bound(done, layers, settings)
    disc = net["discrepancy"]
    return {**net, "bound": bound, "bound_formula": formula, "bound_note": note,
            "bound_holds": None if bound is None else bool(disc <= bound * (1 + 1e-6) + 1e-9)}


def _bound(done: list[LayerOutcome], layers: list[LayerInfo], settings: PruneSettings):
    """Theorems 1 and 2 transferred from the link-normalised network to this one.

    Link normalisation divides W_l by ||W_l||_1 (entrywise l1, weights only) and scales the
    layer outputs accordingly; carried back, Theorem 1 reads
    sum_l eps_l prod_{j>l} ||W_j||_1 and Theorem 2 reads eps_1 prod_{j>=2} gamma^(1/2)
    ||W_j||_1. On a link-normalised network these are exactly sum eps_l and eps_1 gamma^((L-1)/2).
    """
    if any(not la.prunable for la in layers):
        return None, None, "not computed: the network has layers other than Linear between " \
                           "its input and output, which the theorems do not cover"
    eps = [o.epsilon if o.epsilon is not None else o.solution.constraint for o in done]
    l1 = [float(np.abs(o.W0).sum()) for o in done]
    normalised = all(abs(v - 1.0) < 1e-6 for v in l1)
    if settings.mode == PARALLEL:
        total = sum(e * float(np.prod(l1[k + 1:])) for k, e in enumerate(eps))
        formula = "sum_l eps_l" if normalised else "sum_l eps_l * prod_{j>l} ||W_j||_1"
    else:
        g = settings.gamma if settings.lam is None else None
        if g is None:
            return None, None, "not computed: Theorem 2 needs eps_l from eq. 7 (use --epsilon)"
        total = eps[0] * float(np.prod([np.sqrt(g) * v for v in l1[1:]]))
        formula = ("eps_1 * gamma^((L-1)/2)" if normalised
                   else "eps_1 * prod_{j>=2} gamma^(1/2) * ||W_j||_1")
    return total, formula, "link-normalised network" if normalised else \
        "theorem carried back from the link-normalised network"
