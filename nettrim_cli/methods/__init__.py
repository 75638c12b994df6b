"""Pruning methods behind one interface (``base.Method``), chosen by name from ``METHODS``.

Adding a method: a module with a ``Method`` subclass (its ``name``, the prune ``options`` it
takes, ``run`` returning a ``MethodResult``) and one entry here.
"""

from __future__ import annotations

from nettrim_cli.methods.base import Method
from nettrim_cli.registry import lookup

# name -> "module:class"; imported only when chosen
METHODS: dict[str, str] = {
    "netrim": "nettrim_cli.methods.netrim:NetTrim",
    "magnitude": "nettrim_cli.methods.oneshot:Magnitude",
    "wanda": "nettrim_cli.methods.oneshot:Wanda",
    "sparsegpt": "nettrim_cli.methods.oneshot:SparseGPT",
    "lc": "nettrim_cli.methods.lc.lc_method:LC",
    "magnitude-iterative": "nettrim_cli.methods.lc.iterative:IterativeMagnitude",
}


def method_class(name: str) -> type[Method]:
    return lookup(METHODS, name, "method")
