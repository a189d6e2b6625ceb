"""The model as a graph: tracing with ``torch.fx`` and a forward pass that records values.

Relevance propagation needs two things a plain ``nn.Module`` does not expose: the order in
which operations ran (including functional ones such as ``torch.flatten`` or ``+``) and the
value every operation produced. We trace the model once with ``torch.fx`` (the CAM layer is
kept as a single opaque node, since nothing is propagated *through* it) and run the traced
graph with an :class:`fx.Interpreter` that keeps the values of the nodes that relevance will
pass through. The traced graph calls the user's own module objects, so hooks that Captum
registers on them fire as usual; the model itself is never modified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
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


def resolve_module(model: nn.Module, layer: LayerRef) -> nn.Module:
    """The module ``layer`` refers to (validated as in :func:`qualified_name`)."""
    return model.get_submodule(qualified_name(model, layer))


class _Tracer(fx.Tracer):
    """Standard fx tracing, but the modules in ``opaque`` stay single nodes."""

    def __init__(self, opaque: set[str]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.opaque or super().is_leaf_module(
            m, module_qualified_name)


class TracedModel:
    """``model`` traced with ``torch.fx``; nodes are kept in execution (topological) order."""

    def __init__(self, model: nn.Module, opaque: Sequence[str] = ()) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                "FG-CAM needs the model as an nn.Module (it traces the model's graph); got "
                f"{type(model).__name__}. Pass the model itself rather than a function."
            )
        self.model = model
        try:
            graph = _Tracer(set(opaque)).trace(model)
        except Exception as err:  # fx raises many types; all mean "not traceable"
            raise TypeError(
                f"torch.fx could not trace {type(model).__name__}: {err}. Models with "
                "data-dependent control flow cannot be traced; wrap the untraceable part "
                "in a module and pass it as cam_layer, or simplify the forward."
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
    actually saw.
    """

    def __init__(self, traced: TracedModel, keep: set[fx.Node], protect: set[fx.Node]) -> None:
        self.traced = traced
        self.keep = keep
        self.protect = protect
        self.values: dict[fx.Node, Any] | None = None
        self._armed = False

    @contextlib.contextmanager
    def recording(self) -> Iterator[RecordingForward]:
        self.values, self._armed = None, True
        try:
            yield self
        finally:
            self._armed = False

    def release(self) -> None:
        self.values = None

    def __call__(self, *args: Any) -> Any:
        record = self._armed
        self._armed = False
        interpreter = _Interpreter(self.traced, self.keep if record else set(),
                                   self.protect if record else set())
        output = interpreter.run(*args)
        if record:
            self.values = interpreter.kept
        return output


class _Interpreter(fx.Interpreter):
    def __init__(self, traced: TracedModel, keep: set[fx.Node], protect: set[fx.Node]) -> None:
        super().__init__(traced.graph_module, garbage_collect_values=True)
        self.traced = traced
        self.keep = keep
        self.protect = protect
        self.kept: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        if self.protect and _is_inplace(self.traced, n):
            first = n.args[0]
            if isinstance(first, fx.Node) and first in self.protect:
                self.env[first] = self.env[first].clone()
        result = super().run_node(n)
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


def call_target(traced: TracedModel, node: fx.Node) -> nn.Module | Callable | str:
    """What a node calls: the module, the function, or the method name."""
    if node.op == "call_module":
        return traced.module(node)
    return node.target  # type: ignore[return-value]


def tensor_args(node: fx.Node) -> list[fx.Node | None]:
    """The node's positional arguments, flattened one level (``torch.cat([a, b])``)."""
    flat: list[Any] = []
    for arg in node.args:
        if isinstance(arg, (list, tuple)):
            flat.extend(arg)
        else:
            flat.append(arg)
    return [a if isinstance(a, fx.Node) else None for a in flat]


def as_tensor_list(values: Sequence[Any]) -> list[Tensor | None]:
    return [v if isinstance(v, Tensor) else None for v in values]


def evaluate(node_args: Sequence[Any], values: dict[fx.Node, Any]) -> list[Any]:
    return [values[a] if isinstance(a, fx.Node) else a for a in node_args]




_SPATIAL_ENDS_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                         nn.Flatten, nn.Linear)
_SPATIAL_ENDS_FUNCTIONS = {"flatten", "view", "reshape", "mean", "adaptive_avg_pool2d",
                           "adaptive_max_pool2d", "adaptive_avg_pool1d", "linear"}


def find_cam_layer(model: nn.Module) -> str:
    """The default CAM layer: the module whose output feeds the first global pooling,
    flatten or linear operation (for torchvision VGG, ``features.43``, the last MaxPool).

    When that output is produced by a functional operation outside any module (DenseNet's
    final ``F.relu``), the search walks back through such single-input operations. Among the
    modules producing the output, the innermost one that runs exactly once is chosen.
    """
    traced = TracedModel(model)
    for node in traced.nodes:
        if node.op == "call_module":
            is_end = isinstance(traced.module(node), _SPATIAL_ENDS_MODULES)
        elif node.op in ("call_function", "call_method"):
            is_end = getattr(node.target, "__name__", str(node.target)) in _SPATIAL_ENDS_FUNCTIONS
        else:
            is_end = False
        if not is_end:
            continue
        feature = node.all_input_nodes[0] if node.all_input_nodes else None
        while feature is not None and feature.op in ("call_function", "call_method") \
                and not feature.meta.get("nn_module_stack") and len(feature.all_input_nodes) == 1:
            feature = feature.all_input_nodes[0]
        if feature is None or feature.op == "placeholder":
            break
        candidates = [path for path, _ in feature.meta.get("nn_module_stack", {}).values()]
        if feature.op == "call_module":
            candidates.append(str(feature.target))
        for name in reversed(candidates):
            try:
                if traced.output_node(name) is feature:
                    return name
            except LayerError:
                continue
        break
    raise LayerError(
        f"could not find a CAM layer in {type(model).__name__} (the last module with a "
        "spatial output before global pooling or flatten); pass cam_layer= explicitly")
