"""Load and save PyTorch checkpoints safely, and find the layers Net-Trim can prune.

Accepted forms:
  (a) a whole ``nn.Module`` saved with ``torch.save``, built from standard torch.nn layers:
      loaded with ``weights_only=True`` and an allowlist of those classes;
  (a') the same module under a common key of a dict (``{"model": module, "epoch": 3}``);
  (b) a state_dict with ``--arch package.module:factory`` that builds the module: plain, under
      a common key of a dict holding other entries (epoch, optimizer state, ...), or the only
      dict of tensors in one; keys may carry one prefix (``module.``); a ``.safetensors`` file
      (ckpt_forms.py);
  (c) anything else that needs arbitrary unpickling, only with ``trust=True``
      (``--trust-checkpoint``), which runs code from the file;
  (d) a nettrim export of any of these (export/reader.py), densified.
The output of a command that changes the weights has the input's form (save_checkpoint).
"""

from __future__ import annotations

import _compat_pickle
import copy
import hashlib
import io
import os
import pickle
import pickletools
import re
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from nettrim_cli.arch import build_arch
from nettrim_cli.ckpt_forms import (
    STATE_DICT_KEYS,
    SafetensorsFile,
    clear_optimizer_state,
    find_module,
    find_state_dict,
    fit_prefix,
    optimizer_note,
    safetensors_bytes,
)
from nettrim_cli.errors import BadInput

# Layers a whole-module checkpoint may contain. Everything here is plain torch.nn: unpickling
# these classes runs no code from the file.
ALLOWED_MODULES: tuple[type, ...] = (
    nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Linear, nn.ReLU, nn.Flatten, nn.Unflatten,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Conv1d, nn.Conv2d, nn.MaxPool1d,
    nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm1d,
    nn.BatchNorm2d, nn.LayerNorm, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU,
    nn.Softmax, nn.LogSoftmax,
)
__all__ = ["ALLOWED_MODULES", "STATE_DICT_KEYS", "Checkpoint", "build_arch", "load_checkpoint",
           "module_damage", "pruned_copy", "read_state_dict", "save_checkpoint"]
MODULE_INTERNALS = frozenset(nn.Module().__dict__)  # what every nn.Module instance holds
# the internals' types: the hook and tensor tables are dicts, the flags what they are
_INTERNAL_TYPES: dict[str, type] = {
    k: dict if isinstance(v, dict) else set if isinstance(v, set) else bool
    for k, v in nn.Module().__dict__.items() if isinstance(v, (dict, set, bool))}


@dataclass
class Checkpoint:
    """A loaded model plus what is needed to write it back in the same form."""

    model: nn.Module
    form: str  # "module" or "state_dict"
    path: str
    container: object = None  # the loaded dict holding the state_dict (or the module)
    sd_key: str | None = None  # the container's key holding the state_dict or module
    prefix: str = ""  # e.g. "module." when the keys carry a DataParallel prefix
    trusted: bool = False
    file_format: str = "torch"  # "torch" (torch.save) or "safetensors"
    metadata: dict = field(default_factory=dict)  # a safetensors file's header metadata
    sha256: str = ""
    layers: list = field(default_factory=list)  # graph.LayerInfo, in forward order

    @property
    def prunable(self) -> list:
        return [layer for layer in self.layers if layer.prunable]

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)


def _read_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    if not os.path.exists(path):
        raise BadInput("no such file", path)
    if os.path.isdir(path):
        raise BadInput("is a directory, not a checkpoint file", path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise BadInput(f"cannot read file ({e.strerror})", path) from e


def _py3_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 unpickling resolves it (``__builtin__`` -> ``builtins``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _pickle_globals(data: bytes, max_pickles: int = 4) -> set[str] | None:
    """The globals a (non-zip) pickle stream names, found by disassembly: nothing runs.

    A legacy ``torch.save`` file is a few pickles in a row; a plain ``pickle.dump`` is one.
    Returns None when not even the first pickle parses (the data is not a pickle at all).
    """
    found: set[str] = set()
    stream = io.BytesIO(data)
    for n in range(max_pickles):
        strings: list[str | None] = []
        memo: dict[int, str | None] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.add(_py3_name(*str(arg).split(" ", 1)))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2 and None not in strings[-2:]:
                    found.add(_py3_name(strings[-2], strings[-1]))
                elif isinstance(arg, str) and "UNICODE" in op.name:
                    strings.append(arg)
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = strings[-1] if strings else None
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    strings.append(memo.get(int(arg)))
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle stream
            return found if n else None
        if stream.tell() >= len(data):
            break
    return found


def _is_zip(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04"


def _unpickling_reason(message: str) -> str:
    """The informative line of torch's long weights_only error message."""
    skip = ("Weights only load failed", "Check the documentation", "Please file an issue",
            "In PyTorch 2.6", "Re-running", "(1)", "(2)", "WeightsUnpickler error")
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(skip)]
    return (useful[0] if useful else lines[0] if lines else "unpickling failed")[:160]


def _unsafe_globals(data: bytes, message: str) -> list[str]:
    """Globals outside the allowlist that the checkpoint asks for, found without running it."""
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in ALLOWED_MODULES}
    try:
        names = set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - not a zip checkpoint: legacy format or plain pickle
        try:  # private torch API; without it the scan only knows our allowlist
            from torch._weights_only_unpickler import _get_allowed_globals

            allowed |= set(_get_allowed_globals())
        except Exception:  # noqa: BLE001
            pass
        names = _pickle_globals(data) or set()
        if not names - allowed:  # the scan found nothing: take the name torch's error gives
            names |= set(re.findall(r"GLOBAL ([\w.]+)", message))
    return sorted(names - allowed)


def _unreadable(data: bytes, path: str, e: Exception) -> BadInput:
    if not _is_zip(data) and _pickle_globals(data) is None:
        return BadInput("not a PyTorch checkpoint (neither a torch.save zip archive nor a "
                        "pickle)", path)
    msg = str(e).split(" This is an internal miniz error")[0].strip()
    msg = msg.splitlines()[0][:200] if msg else ""
    return BadInput(f"not a readable PyTorch checkpoint ({type(e).__name__}"
                    f"{': ' + msg if msg else ''})", path)


def _torch_load_safe(data: bytes, path: str, trust: bool):
    if not data:
        raise BadInput("file is empty", path)
    try:
        # torch's warnings about a file it then refuses (e.g. "pickle protocol 4") would only
        # add noise to the one error line; they are re-issued when the load succeeds.
        with warnings.catch_warnings(record=True) as caught, \
                torch.serialization.safe_globals(list(ALLOWED_MODULES)):
            warnings.simplefilter("always")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return obj, False
    except pickle.UnpicklingError as e:
        if not _is_zip(data) and _pickle_globals(data) is None:
            raise _unreadable(data, path, e) from e
        bad = _unsafe_globals(data, str(e))
        if not trust:
            if bad:
                why = (f"checkpoint needs {', '.join(bad)}, which is not on the allowlist of "
                       "standard torch.nn classes")
            else:
                why = f"checkpoint cannot be loaded safely ({_unpickling_reason(str(e))})"
            raise BadInput(
                f"{why}; save a state_dict and pass --arch, or pass --trust-checkpoint if you "
                "trust this file (loading it then runs code from it)", path) from e
        warnings.warn(f"{path}: loading with weights_only=False because --trust-checkpoint was "
                      "given; this runs code from the file", stacklevel=2)
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False), True
        except Exception as e2:  # noqa: BLE001
            msg = str(e2).splitlines()[0][:200] if str(e2) else ""
            raise BadInput(f"cannot load checkpoint ({type(e2).__name__}: {msg})", path) from e2
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - random bytes make the unpickler fail in many ways
        raise _unreadable(data, path, e) from e


def _as_state_dict(obj) -> tuple[dict, str | None] | None:
    """The state_dict in ``obj`` and its key (ckpt_forms.find_state_dict), or None."""
    try:
        return find_state_dict(obj, "")
    except BadInput:
        return None


def read_state_dict(path: str, trust: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file in any accepted form, by the model's own names, without
    building the model (no ``--arch``): a module's state_dict, the state_dict found in a dict
    (ckpt_forms.find_state_dict), a safetensors file's tensors, an export densified; a
    ``module.`` or ``_orig_mod.`` prefix on every key is dropped."""
    from nettrim_cli.export.reader import load_object  # checkpoint is imported by export

    obj, _ = load_object(_read_bytes(path), path, trust)
    key = find_module(obj)
    if isinstance(obj, nn.Module) or key is not None:
        return (obj if key is None else obj[key]).state_dict()
    sd = obj.tensors if isinstance(obj, SafetensorsFile) else find_state_dict(obj, path)[0]
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def module_damage(model: nn.Module) -> str | None:
    """What is wrong with a module that a damaged pickle built, or None when nothing is.

    Unpickling restores a module's ``__dict__`` as stored; one that lost nn.Module's own
    internals (its hook tables, say), or holds something else there, passes loading and fails
    later, when something registers a hook. Shared by checkpoints and exports
    (export/archive.py); walks ``__dict__`` itself, as the module's methods need those
    internals."""
    stack, seen = [("", model)], set()
    while stack:
        name, mod = stack.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        where = f"module {name!r}" if name else "the top module"
        state = getattr(mod, "__dict__", {})
        missing = sorted(MODULE_INTERNALS - state.keys())
        odd = sorted(k for k, want in _INTERNAL_TYPES.items()
                     if k in state and not isinstance(state[k], want))
        if missing or odd:
            what = f"lacks {', '.join(missing[:3])}" if missing else \
                f"holds a {type(state[odd[0]]).__name__} object as {odd[0]}"
            return f"{where} ({type(mod).__name__}) {what}, part of nn.Module's internals"
        for child_name, child in state["_modules"].items():
            if child is None:
                continue
            if not isinstance(child, nn.Module):
                return f"{where} holds a {type(child).__name__} as submodule {child_name!r}"
            stack.append((f"{name}.{child_name}" if name else str(child_name), child))
    return None


def _fit_state_dict(obj, path: str, arch: str | None, trusted: bool) -> Checkpoint:
    """Build ``arch`` and load the state_dict found in ``obj`` into it."""
    if isinstance(obj, SafetensorsFile):
        sd, key, container = obj.tensors, None, obj.tensors
    else:
        sd, key = find_state_dict(obj, path)
        container = obj
    if arch is None:
        where = f" (under {key!r})" if key is not None else ""
        raise BadInput(f"checkpoint is a state_dict{where}; pass --arch package.module:factory "
                       "to build the model it belongs to", path)
    model = build_arch(arch)
    prefix = fit_prefix(list(sd), set(model.state_dict()))
    if prefix is None:
        prefix = "module." if all(k.startswith("module.") for k in sd) else ""
    clean = {k[len(prefix):]: v for k, v in sd.items()}
    try:
        model.load_state_dict(clean, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise BadInput(f"state_dict does not fit --arch {arch}: {first[0].strip()}",
                       path) from e
    if isinstance(obj, SafetensorsFile):
        return Checkpoint(model=model, form="state_dict", path=path, container=container,
                          prefix=prefix, file_format="safetensors", metadata=obj.metadata)
    return Checkpoint(model=model, form="state_dict", path=path, container=container,
                      sd_key=key, prefix=prefix, trusted=trusted)


def load_checkpoint(path: str, arch: str | None = None, trust: bool = False) -> Checkpoint:
    """Load a checkpoint in any accepted form (see the module docstring)."""
    data = _read_bytes(path)
    from nettrim_cli.export.reader import load_object  # an export loads densified (issue 17)

    obj, trusted = load_object(data, path, trust)
    digest = hashlib.sha256(data).hexdigest()
    key = find_module(obj)
    if isinstance(obj, nn.Module):
        ckpt = Checkpoint(model=obj, form="module", path=path, trusted=trusted)
    elif key is not None:  # {"model": module, "epoch": ...}: written back the same way
        ckpt = Checkpoint(model=obj[key], form="module", path=path, container=obj, sd_key=key,
                          trusted=trusted)
    else:
        ckpt = _fit_state_dict(obj, path, arch, trusted)
    ckpt.sha256 = digest
    damage = module_damage(ckpt.model)
    if damage is not None:
        raise BadInput(f"damaged checkpoint: {damage}", path)
    try:  # a damaged pickle can still build a module whose tensors or sizes disagree
        ckpt.model.eval()
        tensors = list(ckpt.model.named_parameters()) + list(ckpt.model.named_buffers())
        _check_linears(ckpt.model)
    except BadInput as e:
        raise BadInput(str(e), path) from e
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0][:160] if str(e) else ""
        raise BadInput(f"the checkpoint's module is malformed ({type(e).__name__}: {msg})",
                       path) from e
    for name, t in tensors:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise BadInput(f"parameter {name!r} holds NaN or Inf", path)
    return ckpt


def _check_linears(model: nn.Module) -> None:
    """Every Linear's weight and bias agree with its declared in/out features (a damaged
    module pickle can disagree, and the declared sizes shape the dump)."""
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        w, b = mod.weight, mod.bias
        shape = (mod.out_features, mod.in_features)
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != shape or \
                (b is not None and (not isinstance(b, torch.Tensor)
                                    or tuple(b.shape) != shape[:1])):
            raise BadInput(f"layer {name!r} declares {shape[1]} -> {shape[0]} features but "
                           f"holds weights of shape "
                           f"{tuple(getattr(w, 'shape', ()))}; the module is malformed")


def pruned_copy(ckpt: Checkpoint, weights: dict[str, tuple[np.ndarray, np.ndarray | None]],
                base: nn.Module | None = None) -> nn.Module:
    """A deep copy of the model (or of ``base``, a trained copy of it) with the given units'
    weights replaced: (out, in) matrices in the program's view (a BN folded into a unit is
    unfolded back into unit and BN)."""
    from nettrim_cli.layers.fold import write_unit

    model = copy.deepcopy(ckpt.model if base is None else base)
    bns = {la.name: la.bn for la in ckpt.layers}
    for name, (W, b) in weights.items():
        write_unit(model, name, W, b, bns.get(name, ""))
    return model


def _save_bytes(obj, dest) -> None:
    """torch.save through a buffer: saved to a path, the zip's inner folder is named after the
    file (a random temporary name here), so equal checkpoints would differ byte for byte."""
    if not isinstance(dest, (str, os.PathLike)):
        torch.save(obj, dest)
        return
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(dest, "wb") as fh:
        fh.write(buf.getbuffer())


def save_checkpoint(ckpt: Checkpoint, model: nn.Module, dest) -> list[str]:
    """Write ``model`` to ``dest`` (a path or a binary file; callers handle atomicity) in the
    input's form, and return the lines to tell the user about it.

    A module stays a module; a state_dict keeps its keys, prefix and container, every other
    entry as it was except an optimizer's per-weight state, which is cleared (ckpt_forms.py:
    it belongs to the old weights); a safetensors file stays one with its metadata. The bytes
    depend only on the weights (see _save_bytes).
    """
    if ckpt.form == "module":
        if ckpt.sd_key is None:
            _save_bytes(model, dest)
            return []
        out, cleared = clear_optimizer_state(ckpt.container, ckpt.sd_key)
        out[ckpt.sd_key] = model
        _save_bytes(out, dest)
        return [optimizer_note(ckpt.path, cleared)] if cleared else []
    sd = {ckpt.prefix + k: v.detach().clone() for k, v in model.state_dict().items()}
    if ckpt.file_format == "safetensors":
        data = safetensors_bytes(sd, ckpt.metadata)
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, "wb") as fh:
                fh.write(data)
        else:
            dest.write(data)
        return []
    container = ckpt.container
    if ckpt.sd_key is not None:
        out, cleared = clear_optimizer_state(container, ckpt.sd_key)
        inner = dict(container[ckpt.sd_key])
        inner.update(sd)
        out[ckpt.sd_key] = inner
    else:
        out, cleared = dict(container), []
        out.update(sd)
    _save_bytes(out, dest)
    return [optimizer_note(ckpt.path, cleared)] if cleared else []
