"""The shapes a state_dict checkpoint comes in, and how to write one back in the same shape.

A training script saves its weights in one of a few ways (issue 14):
  - the state_dict itself, ``{name: tensor}``;
  - a dict holding it (or a whole module) under a common key next to other entries, as the
    PyTorch tutorials do:
    ``{"epoch": 3, "model_state_dict": ..., "optimizer_state_dict": ...}`` (``find_state_dict``
    looks under ``STATE_DICT_KEYS`` in that order, then for the one value that is a dict of
    tensors);
  - a ``.safetensors`` file (flat tensors plus string metadata, ``read_safetensors``);
  - with every key prefixed, e.g. ``module.`` (``nn.DataParallel``) or ``_orig_mod.``
    (``torch.compile``) (``fit_prefix``).

A checkpoint whose weights changed (prune, finetune) is written back in the input's shape with
every other entry as it was, except an optimizer's per-weight state (``clear_optimizer_state``):
its momentum and Adam moments were accumulated for the old weights, so resuming with them would
push the new weights (and their zeros) by the old gradients' history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from nettrim_cli.errors import BadInput

# Looked up in this order; the first that holds a dict of tensors is the state_dict.
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model_state", "model", "net", "network",
                   "module", "weights", "params")
MAX_LISTED = 12  # keys named in an error line
MAX_HEADER = 100_000_000  # the largest header the safetensors format allows


@dataclass
class SafetensorsFile:
    """A ``.safetensors`` checkpoint: its tensors and its header's string metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


def is_tensor_dict(obj: object) -> bool:
    """A non-empty dict whose every value is a tensor (a state_dict)."""
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _describe(obj: dict) -> str:
    names = []
    for k, v in list(obj.items())[:MAX_LISTED]:
        kind = "tensors" if is_tensor_dict(v) else type(v).__name__
        names.append(f"{k!r} ({kind})")
    more = f", ... ({len(obj)} in all)" if len(obj) > MAX_LISTED else ""
    return ", ".join(names) + more


def find_state_dict(obj: object, path: str) -> tuple[dict, str | None]:
    """The state_dict in a loaded checkpoint object and the key it sits under (None: ``obj`` is
    the state_dict). BadInput naming ``path``, the keys found and the keys accepted when there
    is none, or when several dicts of tensors sit under no common key."""
    if not isinstance(obj, dict):
        raise BadInput("checkpoint is neither an nn.Module nor a state_dict of tensors "
                       f"(found {type(obj).__name__})", path)
    if is_tensor_dict(obj):
        return obj, None
    if not obj:
        raise BadInput("checkpoint is an empty dict: no state_dict in it", path)
    for key in STATE_DICT_KEYS:
        if is_tensor_dict(obj.get(key)):
            return obj[key], key
    candidates = [k for k, v in obj.items() if is_tensor_dict(v)]
    if len(candidates) == 1:
        return obj[candidates[0]], candidates[0]
    accepted = ", ".join(STATE_DICT_KEYS)
    if candidates:
        raise BadInput(f"checkpoint holds {len(candidates)} state_dicts "
                       f"({', '.join(map(repr, candidates[:MAX_LISTED]))}) and none under a "
                       f"common key ({accepted}); save the one to prune on its own", path)
    modules = [k for k, v in obj.items() if isinstance(v, torch.nn.Module)]
    if modules:
        raise BadInput(f"checkpoint holds {len(modules)} nn.Modules "
                       f"({', '.join(map(repr, modules[:MAX_LISTED]))}) and none under a common "
                       f"key ({accepted}); save the one to prune on its own", path)
    raise BadInput(f"no state_dict in the checkpoint: found {_describe(obj)}; a state_dict "
                   f"(a dict of tensors) is looked for under {accepted}, or as the only dict "
                   "of tensors", path)


def find_module(obj: object) -> str | None:
    """The key of a dict holding a whole ``nn.Module`` under a common key (or as its only
    module), as ``torch.save({"model": model, "epoch": 3})`` makes, else None. A dict that
    also holds a state_dict is a state_dict checkpoint (find_state_dict)."""
    if not isinstance(obj, dict) or any(is_tensor_dict(v) for v in obj.values()):
        return None
    for key in STATE_DICT_KEYS:
        if isinstance(obj.get(key), torch.nn.Module):
            return key
    modules = [k for k, v in obj.items() if isinstance(v, torch.nn.Module)]
    return modules[0] if len(modules) == 1 else None


def fit_prefix(keys: list[str], wanted: set[str]) -> str | None:
    """The prefix every key carries beyond the model's own keys (``""`` when they match as
    they are; e.g. ``"module."`` for ``nn.DataParallel``), or None when no single prefix
    explains the difference."""
    if set(keys) == wanted:
        return ""
    heads = {k.split(".", 1)[0] for k in keys}
    if len(heads) != 1 or not all("." in k for k in keys):
        return None
    prefix = heads.pop() + "."
    return prefix if {k[len(prefix):] for k in keys} == wanted else None


def is_optimizer_state(obj: object) -> bool:
    """``torch.optim.Optimizer.state_dict()``'s shape: ``{"state": {...}, "param_groups":
    [...]}``."""
    return isinstance(obj, dict) and isinstance(obj.get("state"), dict) and \
        isinstance(obj.get("param_groups"), list)


def clear_optimizer_state(container: dict, sd_key: str | None) -> tuple[dict, list[str]]:
    """``container`` with the per-weight state of each optimizer state_dict in it (a value, or
    a list of them as PyTorch Lightning keeps) emptied, and the keys where that happened.

    The param_groups (learning rate, betas, weight decay, which parameters) stay, so
    ``optimizer.load_state_dict`` still takes the entry and starts with fresh momentum.
    """
    out, cleared = dict(container), []
    for key, value in container.items():
        if key == sd_key:
            continue
        if is_optimizer_state(value) and value["state"]:
            out[key] = {**value, "state": {}}
            cleared.append(str(key))
        elif isinstance(value, list) and value and all(map(is_optimizer_state, value)) and \
                any(v["state"] for v in value):
            out[key] = [{**v, "state": {}} for v in value]
            cleared.append(str(key))
    return out, cleared


def optimizer_note(path: str, keys: list[str]) -> str:
    """The one line that tells the user what happened to the optimizer state in ``path``."""
    names = ", ".join(repr(k) for k in keys)
    return (f"{path}: {names} written to the output with the optimizer's per-weight state "
            "(momentum, Adam moments) cleared, as it belongs to the weights before this run; "
            "its param_groups (lr, ...) are kept")


def sniff_safetensors(data: bytes) -> bool:
    """Whether ``data`` starts like a safetensors file: an 8-byte little-endian header size
    (at most the format's 100 MB), then '{'. Neither a torch.save zip nor a pickle starts so;
    a truncated safetensors file still does, and is then refused as one."""
    if len(data) < 9:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= MAX_HEADER and data[8:9] == b"{"


def safetensors_metadata(data: bytes) -> dict | None:
    """The header's ``__metadata__`` (string to string) of safetensors bytes; None when the
    header is not JSON or holds no such dict."""
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, RecursionError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        return None
    return meta


def read_safetensors(data: bytes, path: str) -> SafetensorsFile:
    """The tensors and metadata of a ``.safetensors`` checkpoint (BadInput naming ``path``
    when it is damaged or holds no tensor)."""
    from safetensors.torch import load

    try:  # the reader checks the header, metadata included, and every tensor's extent
        tensors = load(data)
    except Exception as e:  # noqa: BLE001 - the Rust reader's errors have no common base
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise BadInput(f"not a readable safetensors file ({msg})", path) from e
    if not tensors:
        raise BadInput("safetensors file holds no tensors", path)
    return SafetensorsFile(tensors=dict(tensors), metadata=safetensors_metadata(data) or {})


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``tensors`` and ``metadata`` as a safetensors file (each tensor copied: safetensors
    refuses tensors that share memory, as tied weights do)."""
    from safetensors.torch import save

    own = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    return save(own, metadata=dict(metadata) or None)
