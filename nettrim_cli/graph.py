"""The model as prunable units, found once per model: for each unit its layer kind, the
activation that follows it, and what else stands between it and that activation.

Activations are read from the torch.fx graph where the model traces: ``nn.ReLU`` (also one
module reused), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and ``clamp(min=0)`` give the ReLU
program (eq. 3); a unit whose output feeds anything else gets the least-squares program. Where
the model does not trace, forward hooks see only ``nn.ReLU`` modules called right after the
unit, and the prune says so in one line. A unit followed by a normalisation or a residual add
before its ReLU is reported (its program is the least-squares one until folding and residual
programs land), never silently.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from nettrim_cli.errors import BadInput
from nettrim_cli.layers import kind_of, prunable_types

# Leaves that pass data along without weights of their own to prune.
PASSTHROUGH = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
               nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.Softmax, nn.LogSoftmax)
# Layers with weights that are recognised but kept as they are (reported as not pruned).
KEPT = (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
# Activations whose program is not the ReLU one (eq. 3): a Linear followed by one is refused.
OTHER_ACTIVATIONS = (nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU)

@dataclass
class LayerInfo:
    """A layer found by tracing one forward pass, in forward order."""

    name: str  # qualified module name, e.g. "net.2"
    kind: str  # "linear", or the class name of a kept layer
    activation: str | None  # "relu" / "none" for linear layers
    in_features: int = 0
    out_features: int = 0
    bias: bool = False
    prunable: bool = True
    note: str = ""

    def as_attrs(self) -> dict:
        return {"name": self.name, "kind": self.kind, "activation": self.activation or "",
                "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias}


def trace_layers(model: nn.Module, sample: torch.Tensor, path: str = "",
                 model_path: str | None = None) -> list[LayerInfo]:
    """Run one forward pass and list the layers in the order they are called.

    A Linear whose output goes straight into an ``nn.ReLU`` gets the ReLU program; a Linear
    whose output is used otherwise gets the least-squares program (a functional relu is not
    seen, which is safe: matching pre-activations within eps bounds the post-ReLU mismatch).
    A Linear followed by another activation, or a leaf module with weights of an unknown type,
    is refused.

    ``path`` (the data file) is named when ``sample`` does not fit the model, ``model_path``
    (default: ``path``) when the model itself is not supported.
    """
    mpath = path if model_path is None else model_path
    graph = FxActivations(model)
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[nn.Module, int, int]] = []  # module, id(input), id(output)
    counts: dict[nn.Module, int] = {}

    def hook(mod, inputs, output):
        inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        calls.append((mod, id(inp) if inp is not None else -1, id(output)))
        counts[mod] = counts.get(mod, 0) + 1
        if isinstance(mod, nn.Linear) and inp is not None and inp.dim() != 2:
            raise BadInput(f"layer {names[mod]!r} receives a {inp.dim()}-D input; only "
                           "(batch, features) inputs to Linear layers are supported", path)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if len(list(m.children())) == 0]
    try:
        with torch.no_grad():
            out = model(sample)
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - the model's own error on this input
        of = f" {model_path}" if model_path else ""
        raise BadInput(f"inputs of shape {tuple(sample.shape)} do not fit the model{of} "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:200]})", path) from e
    finally:
        for h in handles:
            h.remove()
    layers: list[LayerInfo] = []
    seen: set = set()
    for i, (mod, _, out_id) in enumerate(calls):
        name = names[mod]
        if mod in seen:
            continue
        seen.add(mod)
        if isinstance(mod, prunable_types()):
            if counts[mod] > 1:
                raise BadInput(f"layer {name!r} is called {counts[mod]} times in one forward "
                               "pass; shared layers are not supported", mpath)
            nxt = calls[i + 1] if i + 1 < len(calls) else None
            act, note = _activation(name, nxt if nxt is not None and nxt[1] == out_id else None,
                                    graph, mpath)
            n_in, n_out = kind_of(mod).sizes(mod)
            layers.append(LayerInfo(name=name, kind=kind_of(mod).name, activation=act,
                                    in_features=n_in, out_features=n_out,
                                    bias=mod.bias is not None, note=note))
        elif isinstance(mod, KEPT):
            layers.append(LayerInfo(name=name, kind=type(mod).__name__.lower(), activation=None,
                                    prunable=False,
                                    note="kept dense: only Linear layers are pruned"))
        elif isinstance(mod, (nn.ReLU, *PASSTHROUGH, *OTHER_ACTIVATIONS)):
            continue
        elif any(True for _ in mod.parameters(recurse=False)):
            raise BadInput(f"layer {name!r} has unknown type {type(mod).__name__}; supported "
                           "layers with weights: Linear (pruned), Conv/BatchNorm/LayerNorm "
                           "(kept)", mpath)
    if not any(layer.prunable for layer in layers):
        raise BadInput("the model has no Linear layer to prune", mpath)
    if not isinstance(out, torch.Tensor):
        raise BadInput("the model's output is not a single tensor", mpath)
    return layers




def _activation(name: str, next_call, graph: FxActivations, mpath: str) -> tuple[str, str]:
    """The unit's activation and a note for the user: from the fx graph where the model
    traces, else from the module called right after it (forward hooks)."""
    if next_call is not None and isinstance(next_call[0], OTHER_ACTIVATIONS):
        raise BadInput(f"layer {name!r} is followed by {type(next_call[0]).__name__}; "
                       "Net-Trim needs ReLU or no activation", mpath)
    if graph.traced:
        return graph.of(name)
    act = "relu" if next_call is not None and isinstance(next_call[0], nn.ReLU) else "none"
    note = ""
    if act == "none":
        note = (f"activation read from forward hooks (the model does not trace with torch.fx: "
                f"{graph.error}); a functional ReLU after it would not be seen, so it gets the "
                "least-squares program")
    return act, note


# Leaves a ReLU commutes with (elementwise and shape-only): looked through between a unit and
# its activation.
_SHAPE_ONLY_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}
_SHAPE_ONLY_FUNCTIONS = {torch.flatten, torch.reshape, F.dropout}
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_ADDS = {operator.add, operator.iadd, torch.add}


class FxActivations:
    """The activation after each unit, read from the model's torch.fx graph (one trace)."""

    def __init__(self, model: nn.Module) -> None:
        self.found: dict[str, tuple[str, str]] = {}
        self.error = ""
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as e:  # noqa: BLE001 - any model code may fail to trace
            self.traced = False
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            return
        self.traced = True
        self.modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            if node.op == "call_module" and kind_of(self.modules[node.target]) is not None:
                self.found[node.target] = self._follow(node)

    def of(self, name: str) -> tuple[str, str]:
        return self.found.get(name, ("none", ""))

    def _follow(self, node) -> tuple[str, str]:
        while True:
            users = list(node.users)
            if len(users) != 1:
                why = "" if not users else f"its output is used in {len(users)} places"
                return "none", why and f"{why}, so it gets the least-squares program"
            user = users[0]
            if self._is_relu(user):
                return "relu", ""
            if not self._passes(user):
                return "none", self._why(user)
            node = user

    def _is_relu(self, n) -> bool:
        if n.op == "call_module":
            return isinstance(self.modules[n.target], nn.ReLU)
        if n.op == "call_function" and n.target in _RELU_FUNCTIONS:
            return True
        if n.op == "call_method" and n.target in ("relu", "relu_"):
            return True
        if n.target in (torch.clamp, torch.clamp_min, "clamp", "clamp_min", "clamp_"):
            low = n.kwargs.get("min", n.args[1] if len(n.args) > 1 else None)
            high = n.kwargs.get("max", n.args[2] if len(n.args) > 2 else None)
            return low == 0 and high is None
        return False

    def _passes(self, n) -> bool:
        if n.op == "call_module":
            return isinstance(self.modules[n.target],
                              (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Flatten,
                               nn.Unflatten))
        if n.op == "call_method":
            return n.target in _SHAPE_ONLY_METHODS
        return n.op == "call_function" and n.target in _SHAPE_ONLY_FUNCTIONS

    def _why(self, n) -> str:
        """Why a unit followed by ``n`` gets the least-squares program ('' when nothing is lost:
        its output is the network's, or goes on without an activation)."""
        if n.op == "call_module" and isinstance(self.modules[n.target],
                                                (nn.BatchNorm1d, nn.BatchNorm2d)):
            what = f"followed by {type(self.modules[n.target]).__name__}, which is not folded yet"
        elif n.op in ("call_function", "call_method") and (n.target in _ADDS
                                                           or n.target in ("add", "add_")):
            what = "its output is added to another tensor (a residual) before any activation"
        else:
            return ""
        return f"{what}, so it gets the least-squares program"
