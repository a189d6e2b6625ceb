"""The model as a graph: tracing with ``torch.fx`` and a forward pass that records values.

Relevance propagation needs two things a plain ``nn.Module`` does not expose: the order in
which operations ran (including functional ones such as ``torch.flatten`` or ``+``) and the
value every operation produced. We trace the model once with ``torch.fx`` and run the traced
graph with an :class:`fx.Interpreter` that keeps the values of the nodes that relevance will
pass through. The traced graph calls the user's own leaf modules; the model itself is never
modified. The CAM layer's output passes through a *tap* (an ``nn.Identity`` of ours) on which
CAM weightings hook, so any module (a leaf, or a block such as ``layer4``) can be the CAM
layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

LayerRef = nn.Module | str


class LayerError(ValueError):
    """A layer argument that does not name a usable place in the model."""


def qualified_name(model: nn.Module, layer: LayerRef) -> str:
    """The dotted name of ``layer`` in ``model`` ("features.13"), checking it exists once."""
    if isinstance(layer, str):
        try:
            model.get_submodule(layer)
        except AttributeError as err:
            raise LayerError(
                f"the model has no submodule named {layer!r}; use a name from "
                "model.named_modules(), e.g. 'features.13'"
            ) from err
        return layer
    names = [name for name, module in model.named_modules(remove_duplicate=False)
             if module is layer]
    if not names:
        raise LayerError(
            f"layer {type(layer).__name__} is not a submodule of the model; pass a module "
            "taken from this model (e.g. model.features[13]) or its name ('features.13')"
        )
    if len(names) > 1:
        raise LayerError(
            f"layer {type(layer).__name__} is registered in the model under several names "
            f"{names}; a layer used in several places has no single output to explain"
        )
    return names[0]


def require_module(model: object) -> None:
    """Refuse a plain function where the model itself is needed (its graph is traced)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            "FG-CAM needs the model as an nn.Module (it traces the model's graph); got "
            f"{type(model).__name__}. Pass the model itself rather than a function.")


def resolve_module(model: nn.Module, layer: LayerRef) -> nn.Module:
    """The module ``layer`` refers to (validated as in :func:`qualified_name`)."""
    return model.get_submodule(qualified_name(model, layer))


class TracedModel:
    """``model`` traced with ``torch.fx``; nodes are kept in execution (topological) order."""

    def __init__(self, model: nn.Module) -> None:
        require_module(model)
        self.model = model
        try:
            graph = fx.Tracer().trace(model)
        except Exception as err:  # fx raises many types; all mean "not traceable"
            raise TypeError(
                f"torch.fx could not trace {type(model).__name__}: {err}. Models with "
                "data-dependent control flow cannot be traced; make the forward free of "
                "branches on tensor values."
            ) from err
        self.graph_module = fx.GraphModule(model, graph)
        self.nodes: list[fx.Node] = list(graph.nodes)
        self.position = {node: i for i, node in enumerate(self.nodes)}

    def module(self, node: fx.Node) -> nn.Module:
        return self.graph_module.get_submodule(str(node.target))

    def _scope(self, name: str) -> list[fx.Node]:
        """Nodes executed inside the module called ``name`` (itself when it is a leaf)."""
        return [n for n in self.nodes
                if (n.op == "call_module" and n.target == name)
                or any(path == name for path, _ in n.meta.get("nn_module_stack", {}).values())]

    def output_node(self, name: str) -> fx.Node:
        """The node whose value is the output of the module ``name``."""
        scope = self._scope(name)
        if not scope:
            raise LayerError(
                f"layer {name!r} is never called in the model's forward pass; choose a layer "
                "that runs (see print(model))"
            )
        calls = [n for n in scope if n.op == "call_module" and n.target == name]
        if len(calls) > 1:
            raise LayerError(
                f"layer {name!r} is called {len(calls)} times in one forward pass, so it has "
                "no single output; choose a module that runs once"
            )
        inside = set(scope)
        exits = [n for n in scope if any(user not in inside for user in n.users)]
        if len(exits) != 1:
            raise LayerError(
                f"layer {name!r} does not have a single output tensor; choose a module "
                "with one output"
            )
        return exits[0]

    def input_node(self, name: str) -> fx.Node:
        """The node feeding the module ``name`` (its first tensor input)."""
        scope = self._scope(name)
        self.output_node(name)  # validates that the layer runs once with one output
        inside = set(scope)
        for node in scope:
            for arg in node.all_input_nodes:
                if arg not in inside:
                    return arg
        raise LayerError(f"layer {name!r} has no tensor input")


class RecordingForward:
    """A callable forward function that runs the traced graph and records node values.

    Inside :meth:`recording`, the first call stores the detached value of every node in
    ``keep``; later calls (e.g. Score-CAM's masked forwards) run without recording. An
    in-place operation (``ReLU(inplace=True)``) gets a copy of its input when that input is in
    ``protect`` (its value is needed later), so recorded values are the values the operations
    actually saw. The value of ``tap_node`` is passed through the module ``tap`` on every call.
    """

    def __init__(self, traced: TracedModel, keep: set[fx.Node], protect: set[fx.Node],
                 tap_node: fx.Node, tap: nn.Module) -> None:
        self.traced = traced
        self.keep = keep
        self.protect = protect
        self.tap_node = tap_node
        self.tap = tap
        self.values: dict[fx.Node, Any] | None = None
        self._armed = False

    @contextlib.contextmanager
    def recording(self, check: Callable[[Any], None] | None = None
                  ) -> Iterator[RecordingForward]:
        """Record the next call; ``check`` sees its output before the caller does."""
        self.values, self._armed, self._check = None, True, check
        try:
            yield self
        finally:
            self._armed, self._check = False, None

    def release(self) -> None:
        self.values = None

    def __call__(self, *args: Any) -> Any:
        record = self._armed
        self._armed = False
        interpreter = _Interpreter(self, record)
        output = interpreter.run(*args)
        if record:
            self.values = interpreter.kept
            if self._check is not None:
                self._check(output)
        return output


class _Interpreter(fx.Interpreter):
    def __init__(self, forward: RecordingForward, record: bool) -> None:
        super().__init__(forward.traced.graph_module, garbage_collect_values=True)
        self.traced = forward.traced
        self.keep = forward.keep if record else set()
        self.protect = forward.protect if record else set()
        self.tap_node, self.tap = forward.tap_node, forward.tap
        self.kept: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        if self.protect and _is_inplace(self.traced, n):
            first = n.args[0]
            if isinstance(first, fx.Node) and first in self.protect:
                self.env[first] = self.env[first].clone()
        result = super().run_node(n)
        if n is self.tap_node:
            result = self.tap(result)
        if n in self.keep:
            self.kept[n] = result.detach() if isinstance(result, Tensor) else result
        return result


def _is_inplace(traced: TracedModel, node: fx.Node) -> bool:
    if node.op == "call_module":
        return bool(getattr(traced.module(node), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (bool(node.kwargs.get("inplace", False))
                or name in {"iadd", "isub", "imul", "itruediv"}
                or (name.endswith("_") and not name.startswith("_")))
    return False




_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_POOL_FUNCTIONS = {"mean", "adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool1d"}
_FLATTENS = (nn.Flatten, nn.Linear)
_FLATTEN_FUNCTIONS = {"flatten", "view", "reshape", "linear"}


def _kind(traced: TracedModel, node: fx.Node) -> str | None:
    if node.op == "call_module":
        module = traced.module(node)
        return "pool" if isinstance(module, _POOLS) else (
            "flatten" if isinstance(module, _FLATTENS) else None)
    if node.op in ("call_function", "call_method"):
        name = getattr(node.target, "__name__", str(node.target))
        return "pool" if name in _POOL_FUNCTIONS else (
            "flatten" if name in _FLATTEN_FUNCTIONS else None)
    return None


def find_cam_layer(model: nn.Module) -> str:
    """The default CAM layer: the module whose output feeds the classifier head's pooling.

    The head's pooling is the *last* adaptive pooling (or mean) in the graph, which skips the
    pools inside squeeze-excitation blocks; a model without one uses its first flatten or
    linear operation. For torchvision VGG this gives ``features.43`` (the last MaxPool), for
    ResNet ``layer4.1`` (the last block). When the pooled value comes from a functional
    operation outside any module (DenseNet's final ``F.relu``), the search walks back through
    such single-input operations. Among the modules producing the value, the innermost one
    that runs exactly once is chosen.
    """
    traced = TracedModel(model)
    kinds = [(node, _kind(traced, node)) for node in traced.nodes]
    pools = [node for node, kind in kinds if kind == "pool"]
    flattens = [node for node, kind in kinds if kind == "flatten"]
    head = pools[-1] if pools else (flattens[0] if flattens else None)
    feature = head.all_input_nodes[0] if head is not None and head.all_input_nodes else None
    while feature is not None and feature.op in ("call_function", "call_method") \
            and not feature.meta.get("nn_module_stack") and len(feature.all_input_nodes) == 1:
        feature = feature.all_input_nodes[0]
    name = _module_producing(traced, feature)
    if name is not None:
        return name
    raise LayerError(
        f"could not find a CAM layer in {type(model).__name__} (the module whose output feeds "
        "the classifier's global pooling); pass cam_layer= explicitly")


def _module_producing(traced: TracedModel, node: fx.Node | None) -> str | None:
    """The innermost module, run exactly once, whose output is ``node``'s value."""
    if node is None or node.op == "placeholder":
        return None
    candidates = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
    if node.op == "call_module":
        candidates.append(str(node.target))
    for name in reversed(candidates):
        try:
            if traced.output_node(name) is node:
                return name
        except LayerError:
            continue
    return None


def find_output_layer(model: nn.Module) -> str:
    """The module whose output is the model's output (the logits), e.g. ``fc``."""
    traced = TracedModel(model)
    result = traced.nodes[-1].all_input_nodes
    name = _module_producing(traced, result[0] if len(result) == 1 else None)
    if name is None:
        raise LayerError(
            f"could not find the module producing {type(model).__name__}'s output (the "
            "logits); pass output_layer= explicitly")
    return name


def find_input_layer(model: nn.Module) -> str:
    """The first module fed by the model's input (the image), e.g. ``conv1`` or
    ``features.0``: its input, with ``attribute_to_layer_input=True``, is the pixels."""
    traced = TracedModel(model)
    for node in traced.nodes:
        if node.op == "call_module" and any(a.op == "placeholder" for a in node.all_input_nodes):
            return str(node.target)
    raise LayerError(f"no module of {type(model).__name__} takes the model's input directly; "
                     "name the first layer explicitly")
