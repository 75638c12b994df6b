"""What an export holds, apart from the file format that stores it.

An ``Export`` is the checkpoint's state_dict in its own order, with each pruned weight (a
Linear or conv weight holding zeros, when the bitmask encoding is smaller) as a SparseWeight
and every other tensor as it was, plus what is needed to give back the checkpoint's form:
  - a whole ``nn.Module``: the module with its state on the meta device (a skeleton, a few
    KB: structure without data), refilled with ``load_state_dict(assign=True)``; a module
    under a key of a container also keeps the other entries, as below;
  - a state_dict under a key of a container (``{"model_state_dict": ..., "epoch": 3}``, any
    key ckpt_forms.find_state_dict accepts): the other entries and the container's key order;
  - a plain state_dict: nothing more.
Densifying gives the pruned checkpoint's tensors bit for bit (bitmask.py).
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field

import torch
from torch import nn

from nettrim_cli.errors import BadInput
from nettrim_cli.export.bitmask import DamagedEntry, SparseWeight, kept, pack, unpack

FORMAT = "nettrim-export"
VERSION = 1
ENCODING = "bitmask"
FORMS = ("module", "state_dict")
# Modules whose weight is stored sparse when it holds zeros: every layer kind a pruning tool
# zeroes (Net-Trim's Linear, and conv weights that other tools prune), not only layers.KINDS.
SPARSE_MODULES: tuple[type, ...] = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class Export:
    """A checkpoint with its pruned weights encoded sparse (see the module docstring)."""

    form: str
    tensors: dict[str, torch.Tensor | SparseWeight]
    sd_key: str | None = None
    container_keys: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    skeleton: bytes | None = None

    @property
    def sparse(self) -> dict[str, SparseWeight]:
        return {k: v for k, v in self.tensors.items() if isinstance(v, SparseWeight)}

    def meta(self) -> dict:
        """The description a file format stores next to the tensors."""
        return {"format": FORMAT, "version": VERSION, "encoding": ENCODING, "form": self.form,
                "sd_key": self.sd_key, "container_keys": list(self.container_keys)}

    def densify(self, path: str, trust: bool = False) -> tuple[object, bool]:
        """The checkpoint object this export was made from (an ``nn.Module`` or the state_dict
        container) and whether loading it needed ``trust``; BadInput naming ``path`` when the
        export is damaged."""
        sd = {}
        for name, value in self.tensors.items():
            if isinstance(value, SparseWeight):
                try:
                    value = unpack(value)
                except DamagedEntry as e:
                    raise BadInput(f"damaged export: weight {name!r}: {e}", path) from e
            sd[name] = value
        if self.form == "module":
            model, trusted = _refill(self.skeleton or b"", sd, path, trust)
            if self.sd_key is None:
                return model, trusted
            return {k: model if k == self.sd_key else self.extra[k]
                    for k in self.container_keys}, trusted
        if self.sd_key is None:
            return sd, False
        return {k: sd if k == self.sd_key else self.extra[k] for k in self.container_keys}, False


def export_checkpoint(ckpt) -> Export:
    """The Export of a loaded pruned checkpoint (``checkpoint.Checkpoint``).

    Refuses (BadInput naming the file) a checkpoint where no Linear or conv weight holds a zero:
    an unpruned model, or one not pruned by nettrim or another tool, has nothing to store
    sparse.
    """
    if ckpt.form == "module":  # a module, maybe under a key of a container
        sd = ckpt.model.state_dict()
        prefix = ""
    else:
        sd = ckpt.container[ckpt.sd_key] if ckpt.sd_key else ckpt.container
        prefix = ckpt.prefix
    names = [f"{prefix}{m}.weight" if m else f"{prefix}weight"
             for m, mod in ckpt.model.named_modules() if isinstance(mod, SPARSE_MODULES)]
    weights = [n for n in names if isinstance(sd.get(n), torch.Tensor)]
    if not any(bool((~kept(sd[n])).any()) for n in weights):
        raise BadInput("no Linear or conv weight holds a zero: the checkpoint is not pruned, so "
                       "there is nothing to store sparse", ckpt.path)
    odd = next((k for k in (ckpt.container or {}) if not isinstance(k, str)), None) \
        if ckpt.sd_key is not None else None
    if odd is not None:
        raise BadInput(f"the checkpoint's container has a key {odd!r} that is not a string, "
                       "which the export format cannot store", ckpt.path)
    tensors: dict[str, torch.Tensor | SparseWeight] = {}
    for name, t in sd.items():
        if "::" in name:  # the safetensors format names a weight's parts "NAME::values" etc.
            raise BadInput(f"state_dict key {name!r} contains '::', which the export format "
                           "reserves", ckpt.path)
        encoded = pack(t) if name in weights else None
        tensors[name] = encoded if encoded and encoded.nbytes < t.numel() * t.element_size() \
            else t.detach()
    keys = list(ckpt.container) if ckpt.sd_key else []
    extra = {k: v for k, v in ckpt.container.items() if k != ckpt.sd_key} if ckpt.sd_key else {}
    skeleton = _skeleton(ckpt.model) if ckpt.form == "module" else None
    return Export(form=ckpt.form, tensors=tensors, sd_key=ckpt.sd_key, container_keys=keys,
                  extra=extra, skeleton=skeleton)


def _skeleton(model: nn.Module) -> bytes:
    """``torch.save`` bytes of ``model`` with every state_dict tensor moved to the meta device
    (shapes and dtypes, no data); non-persistent buffers, which the state_dict lacks, stay."""
    skeleton = copy.deepcopy(model)
    for mod in skeleton.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = nn.Parameter(p.detach().to("meta"),
                                                     requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None and name not in mod._non_persistent_buffers_set:
                mod._buffers[name] = b.to("meta")
    buf = io.BytesIO()
    torch.save(skeleton, buf)
    return buf.getvalue()


def load_part(data: bytes, what: str, path: str, trust: bool) -> tuple[object, bool]:
    """A part stored as ``torch.save`` bytes, loaded as checkpoints are (the weights_only
    allowlist unless ``trust``); BadInput naming ``path`` and the part when it is unreadable."""
    from nettrim_cli.checkpoint import _torch_load_safe  # checkpoint imports this package

    try:
        return _torch_load_safe(data, path, trust)
    except BadInput as e:
        msg = str(e).removeprefix(f"{path}: ")
        raise BadInput(f"{what}: {msg}", path) from e


def _refill(skeleton: bytes, sd: dict, path: str, trust: bool) -> tuple[nn.Module, bool]:
    model, trusted = load_part(skeleton, "the module skeleton", path, trust)
    if not isinstance(model, nn.Module):
        raise BadInput(f"damaged export: the module skeleton is a {type(model).__name__}, not "
                       "an nn.Module", path)
    from nettrim_cli.checkpoint import module_damage  # checkpoint imports this package

    damage = module_damage(model)  # a damaged pickle: fails later, when a hook is registered
    if damage is not None:
        raise BadInput(f"damaged export: in the module skeleton, {damage}", path)
    try:
        # assign=True takes the tensors as they are: a dtype the module did not have is refused
        wanted = {k: v.dtype for k, v in model.state_dict().items()}
        odd = next((k for k, v in sd.items() if k in wanted and v.dtype != wanted[k]), None)
        if odd is not None:
            raise BadInput(f"damaged export: tensor {odd!r} is {sd[odd].dtype}, the module "
                           f"holds {wanted[odd]}", path)
        model.load_state_dict(sd, strict=True, assign=True)
        left = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged skeleton fails in many ways
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:200]
        raise BadInput(f"damaged export: the tensors do not fit the module ({why})",
                       path) from e
    if left:
        raise BadInput("damaged export: the module skeleton holds tensors the export lacks",
                       path)
    return model, trusted
