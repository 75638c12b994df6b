"""Theorems 1 and 2: the bound on the network's output discrepancy, next to the measured one."""

from __future__ import annotations

import numpy as np

from nettrim_cli.graph import LayerInfo
from nettrim_cli.methods.base import LayerResult
from nettrim_cli.methods.netrim.settings import PARALLEL, PruneSettings
from nettrim_cli.methods.network import network_summary


def network_figures(ckpt, layers, inputs, pruned, outcomes, settings) -> dict:
    """Measured output discrepancy on the calibration set and the Theorem 1/2 bound."""
    done = [o for o in outcomes if o.W is not None]
    net = network_summary(ckpt, inputs, pruned, [(o.W, o.W0) for o in done])
    bound, formula, note = _bound(done, layers, settings)
    disc = net["discrepancy"]
    return {**net, "bound": bound, "bound_formula": formula, "bound_note": note,
            "bound_holds": None if bound is None else bool(disc <= bound * (1 + 1e-6) + 1e-9)}


def _bound(done: list[LayerResult], layers: list[LayerInfo], settings: PruneSettings):
    """Theorems 1 and 2 transferred from the link-normalised network to this one.

    Link normalisation divides W_l by ||W_l||_1 (entrywise l1, weights only) and scales the
    layer outputs accordingly; carried back, Theorem 1 reads
    sum_l eps_l prod_{j>l} ||W_j||_1 and Theorem 2 reads eps_1 prod_{j>=2} gamma^(1/2)
    ||W_j||_1. On a link-normalised network these are exactly sum eps_l and eps_1 gamma^((L-1)/2).
    """
    if any(not la.prunable or la.kind != "linear" or la.bn or la.shortcut for la in layers):
        return None, None, "not computed: the network has layers other than Linear between " \
                           "its input and output (conv, BatchNorm, residual adds), which the " \
                           "theorems do not cover"
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
