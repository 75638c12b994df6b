"""Moved to ``nettrim_cli.execution.ray_columns``; this name is kept only for
``nettrim_cli.config``'s check that Ray is installed, until it imports from there."""

from nettrim_cli.execution.ray_columns import import_ray

__all__ = ["import_ray"]
