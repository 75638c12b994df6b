"""The model as prunable units, found once per model: for each unit its layer kind, the
activation that follows it, the BatchNorm folded into it and the residual term added before
its activation.

Activations are read from the torch.fx graph where the model traces: ``nn.ReLU`` (also one
module reused), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and ``clamp(min=0)`` give the ReLU
program (eq. 3). Between a unit and its ReLU the graph may hold, in this order, an eval-mode
BatchNorm (folded, ``nettrim_cli.layers.fold``), one add of another tensor s (a residual:
relu(bn(conv(x)) + s), eq. 3 with target y - s and V = -s) and shape-only steps (flatten,
view, dropout). A unit whose output feeds anything else gets the least-squares program with a
one-line note saying why. Where the model does not trace, forward hooks see only ``nn.ReLU``
modules called right after the unit, and the prune says so in one line.
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
from nettrim_cli.layers.fold import foldable

# Leaves that pass data along without weights of their own to prune.
PASSTHROUGH = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
               nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.Softmax, nn.LogSoftmax)
# Layers with weights that are recognised but kept as they are (reported as not pruned).
KEPT = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
# Activations whose program is not the ReLU one (eq. 3): a Linear followed by one is refused.
OTHER_ACTIVATIONS = (nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU)

@dataclass
class LayerInfo:
    """A layer found by tracing one forward pass, in forward order."""

    name: str  # qualified module name, e.g. "net.2"
    kind: str  # "linear", "conv", or the class name of a kept layer
    activation: str | None  # "relu" / "none" for prunable units
    in_features: int = 0  # columns of the matrix view (a conv: C_in/groups * kernel size)
    out_features: int = 0
    bias: bool = False  # the program has a bias (the unit's own, or one from a folded BN)
    prunable: bool = True
    note: str = ""
    bn: str = ""  # the eval-mode BatchNorm folded into the unit ('' for none)
    shortcut: str = ""  # fx node added to the unit's output before its ReLU ('' for none)
    in_shape: tuple[int, ...] = ()  # one sample's input and output shapes
    out_shape: tuple[int, ...] = ()
    groups: int = 1
    params: int = 0  # weights and biases of the layer
    weight_shape: tuple[int, ...] = ()  # the layer's own weight tensor shape
    flops: int = 0  # multiply-adds per sample (dense)

    def as_attrs(self) -> dict:
        return {"name": self.name, "kind": self.kind, "activation": self.activation or "",
                "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias, "bn": self.bn, "shortcut": self.shortcut,
                "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
                "groups": self.groups}


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
    shapes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def hook(mod, inputs, output):
        inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        calls.append((mod, id(inp) if inp is not None else -1, id(output)))
        counts[mod] = counts.get(mod, 0) + 1
        if inp is not None and isinstance(output, torch.Tensor):
            shapes[mod] = (tuple(inp.shape[1:]), tuple(output.shape[1:]))
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
            found = _activation(name, nxt if nxt is not None and nxt[1] == out_id else None,
                                graph, mpath)
            layers.append(_unit_info(name, mod, found, shapes[mod]))
        elif isinstance(mod, KEPT):
            folded = next((la.name for la in layers if la.bn == name), "")
            layers.append(_kept_info(name, mod, folded, shapes.get(mod, ((), ()))[1]))
        elif isinstance(mod, (nn.ReLU, *PASSTHROUGH, *OTHER_ACTIVATIONS)):
            continue
        elif any(True for _ in mod.parameters(recurse=False)):
            raise BadInput(f"layer {name!r} has unknown type {type(mod).__name__}; supported "
                           "layers with weights: Linear, Conv1d, Conv2d (pruned), "
                           "BatchNorm/LayerNorm (folded or kept)", mpath)
    if not any(layer.prunable for layer in layers):
        raise BadInput("the model has no Linear or Conv layer to prune", mpath)
    if not isinstance(out, torch.Tensor):
        raise BadInput("the model's output is not a single tensor", mpath)
    return layers




def _unit_info(name: str, mod: nn.Module, found: tuple[str, str, str, str],
               shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> LayerInfo:
    """A prunable unit: its kind's matrix sizes, activation, folded BN, shortcut, shapes."""
    act, note, bn, shortcut = found
    kind = kind_of(mod)
    n_in, n_out = kind.sizes(mod)
    in_shape, out_shape = shapes
    return LayerInfo(name=name, kind=kind.name, activation=act, in_features=n_in,
                     out_features=n_out, bias=mod.bias is not None or bool(bn), note=note,
                     bn=bn, shortcut=shortcut, in_shape=in_shape, out_shape=out_shape,
                     groups=getattr(mod, "groups", 1),
                     params=sum(p.numel() for p in mod.parameters()),
                     weight_shape=tuple(mod.weight.shape), flops=kind.flops(mod, out_shape))


def _kept_info(name: str, mod: nn.Module, folded: str, out_shape: tuple[int, ...]
               ) -> LayerInfo:
    """A layer with weights that is not pruned (a norm), folded into ``folded`` or not."""
    weight = getattr(mod, "weight", None)
    return LayerInfo(
        name=name, kind=type(mod).__name__.lower(), activation=None, prunable=False,
        note=f"folded into {folded} for its program; kept as a module" if folded
        else "kept dense: not directly after a pruned unit",
        params=sum(p.numel() for p in mod.parameters()),
        weight_shape=tuple(weight.shape) if isinstance(weight, torch.Tensor) else (),
        out_shape=out_shape)


def _activation(name: str, next_call, graph: FxActivations, mpath: str
                ) -> tuple[str, str, str, str]:
    """The unit's activation, a note for the user, the BN folded into it and its shortcut
    node: from the fx graph where the model traces, else from the module called right after
    it (forward hooks: no BN, no shortcut)."""
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
    return act, note, "", ""


# Leaves a ReLU commutes with (elementwise and shape-only): looked through between a unit and
# its activation.
_SHAPE_ONLY_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}
_SHAPE_ONLY_FUNCTIONS = {torch.flatten, torch.reshape, F.dropout, F.max_pool1d, F.max_pool2d}
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_ADDS = {operator.add, operator.iadd, torch.add}


class FxActivations:
    """The activation after each unit, its folded BN and its shortcut, read from the model's
    torch.fx graph (one trace)."""

    def __init__(self, model: nn.Module) -> None:
        self.found: dict[str, tuple[str, str, str, str]] = {}
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

    def of(self, name: str) -> tuple[str, str, str, str]:
        return self.found.get(name, ("none", "", "", ""))

    def _follow(self, node) -> tuple[str, str, str, str]:
        """Walk from the unit to its ReLU: [BatchNorm] [add of a shortcut] [shape-only
        steps] ReLU. Returns (activation, note, bn, shortcut node)."""
        bn, shortcut, moved = "", "", False
        while True:
            users = list(node.users)
            if len(users) != 1:
                why = "" if not users else f"its output is used in {len(users)} places"
                return "none", why and f"{why}, so it gets the least-squares program", bn, ""
            user = users[0]
            if self._is_relu(user):
                return "relu", "", bn, shortcut
            if not (bn or shortcut or moved) and self._is_bn(user):
                why = foldable(self.modules[user.target])
                if why:
                    return "none", (f"followed by {user.target}, which is not folded ({why}), "
                                    "so it gets the least-squares program"), "", ""
                bn = user.target
            elif not (shortcut or moved) and self._is_add(user):
                other = [a for a in user.args[:2] if a is not node]
                if len(other) != 1 or not isinstance(other[0], torch.fx.Node) or user.kwargs:
                    return "none", ("its output is added to something other than one tensor "
                                    "before its ReLU, so it gets the least-squares program"), \
                        bn, ""
                shortcut = other[0].name
            elif self._passes(user):
                moved = True
            else:
                # a residual without a ReLU after the add: matching the unit's own output in
                # least squares is exact, so nothing is lost and no shortcut is needed
                return "none", self._why(user), bn, ""
            node = user

    def _is_bn(self, n) -> bool:
        return n.op == "call_module" and isinstance(self.modules[n.target],
                                                    (nn.BatchNorm1d, nn.BatchNorm2d))

    def _is_add(self, n) -> bool:
        return (n.op == "call_function" and n.target in _ADDS) or \
            (n.op == "call_method" and n.target in ("add", "add_"))

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
                               nn.Unflatten, nn.MaxPool1d, nn.MaxPool2d))  # max commutes with ReLU
        if n.op == "call_method":
            return n.target in _SHAPE_ONLY_METHODS
        return n.op == "call_function" and n.target in _SHAPE_ONLY_FUNCTIONS

    def _why(self, n) -> str:
        """Why a unit followed by ``n`` gets the least-squares program ('' when nothing is lost:
        its output is the network's, or goes on without an activation)."""
        if self._is_bn(n):
            what = f"followed by {n.target} after other steps (only a BatchNorm right after the " \
                   "unit is folded)"
        elif n.op in ("call_function", "call_method") and (n.target in _ADDS
                                                           or n.target in ("add", "add_")):
            what = ("its output is added to another tensor after other steps or a second add "
                    "(only one add right after the unit or its BatchNorm is supported)")
        else:
            return ""
        return f"{what}, so it gets the least-squares program"


class NodeValues:
    """Runs the model through its fx graph and keeps the values of named nodes (a residual
    unit's shortcut s); forward hooks on the model's modules fire as in a plain call."""

    def __init__(self, model: nn.Module) -> None:
        self.gm = torch.fx.symbolic_trace(model)

    def __call__(self, batch: torch.Tensor, names: set[str]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        kept: dict[str, torch.Tensor] = {}

        class Keep(torch.fx.Interpreter):
            def run_node(self, n):
                value = super().run_node(n)
                if n.name in names:
                    kept[n.name] = value
                return value

        return Keep(self.gm).run(batch), kept
