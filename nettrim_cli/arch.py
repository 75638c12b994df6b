"""``--arch package.module:factory``: build the model a state_dict checkpoint belongs to.

The module is found as ``python -m`` finds one: the current directory first (a console script
such as ``nettrim`` has its own folder on ``sys.path`` instead, so a ``models.py`` beside the
user's checkpoint would otherwise not be found), then PYTHONPATH and the installed packages.
"""

from __future__ import annotations

import importlib
import os
import sys

from torch import nn

from nettrim_cli.errors import BadInput


def _import_from_cwd(mod_name: str, arch: str):
    """Import ``mod_name`` as ``python -m`` would: the current directory first on the path
    (a console script has its own folder there instead)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        missing = e.name or mod_name
        if mod_name == missing or mod_name.startswith(missing + "."):
            raise BadInput(f"cannot import module {mod_name!r}: no {missing.replace('.', '/')}"
                           f".py (or package) in the current directory {cwd} or on PYTHONPATH",
                           arch) from e
        raise BadInput(f"importing module {mod_name!r} failed (ModuleNotFoundError: {e})",
                       arch) from e
    except Exception as e:  # noqa: BLE001 - anything the import raises
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise BadInput(f"importing module {mod_name!r} failed ({type(e).__name__}: {msg})",
                       arch) from e
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def build_arch(arch: str) -> nn.Module:
    """Build a module from ``package.module:factory`` (a callable, or a module instance).

    The module is found as ``python -m`` finds one: the current directory first, then
    PYTHONPATH and the installed packages."""
    if ":" not in arch:
        raise BadInput("--arch must look like package.module:factory", arch)
    mod_name, _, attr = arch.partition(":")
    if not mod_name or not attr:
        raise BadInput("--arch must look like package.module:factory", arch)
    if mod_name.endswith(".py") or "/" in mod_name or os.sep in mod_name:
        name = os.path.splitext(mod_name)[0].strip("./").replace("/", ".").replace(os.sep, ".")
        raise BadInput(f"--arch takes a module name, not a file: for {mod_name} in the current "
                       f"directory, pass --arch {name}:{attr}", arch)
    mod = _import_from_cwd(mod_name, arch)
    factory = getattr(mod, attr, None)
    if factory is None:
        raise BadInput(f"module {mod_name!r} ({getattr(mod, '__file__', None) or mod_name}) "
                       f"has no attribute {attr!r}", arch)
    if callable(factory) and not isinstance(factory, nn.Module):
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001 - the user's factory failed
            msg = str(e).splitlines()[0][:200] if str(e) else ""
            raise BadInput(f"{attr}() failed ({type(e).__name__}: {msg})", arch) from e
    else:
        model = factory
    if not isinstance(model, nn.Module):
        raise BadInput(f"{attr!r} did not build an nn.Module", arch)
    return model
