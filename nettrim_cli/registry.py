"""Tables of named implementations ("module:class"), imported only when chosen: the solver,
method and export-format registries all look their entries up here."""

from __future__ import annotations

import importlib

from nettrim_cli.errors import BadInput


def lookup(table: dict[str, str], name: str, what: str) -> type:
    """The class registered as ``name`` in ``table`` (BadInput, exit 2, naming the choices)."""
    if name not in table:
        raise BadInput(f"unknown {what} {name!r}; choose from {', '.join(table)}")
    module, _, cls = table[name].partition(":")
    return getattr(importlib.import_module(module), cls)
