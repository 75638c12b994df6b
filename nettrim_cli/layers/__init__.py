"""Prunable layer kinds: each exposes a module's weight as an (out, in) matrix, writes a matrix
back into its own tensor shape, and builds the design (the inputs the weights multiply) from
the layer's input. The math core (program, solvers, methods) knows matrices, not layer types.

Adding a kind (conv, ...): a module with a class like ``linear.LinearKind`` and one entry in
``KINDS``.
"""

from __future__ import annotations

from torch import nn

from nettrim_cli.layers.base import LayerKind
from nettrim_cli.layers.conv import ConvKind
from nettrim_cli.layers.linear import LinearKind

KINDS: tuple[LayerKind, ...] = (LinearKind(), ConvKind())


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind that prunes ``module``, or None when no kind does."""
    for kind in KINDS:
        if kind.matches(module):
            return kind
    return None


def kind_named(name: str) -> LayerKind | None:
    """The kind recorded as ``name`` (e.g. in a dump's layer attributes)."""
    return next((k for k in KINDS if k.name == name), None)


def prunable_types() -> tuple[type, ...]:
    return tuple(t for k in KINDS for t in k.module_types)
