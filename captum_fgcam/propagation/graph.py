"""Graph facts: what each recorded operation is and how relevance can cross it, computed
from a :class:`~.capture.Capture` once, before any propagation, for the engine and for every
rule alike.

- :func:`site`: an operation as selectors see it (its kind in the operation table, names);
- :func:`first_linear`: the first linear operations on the image's path (where z^B applies);
- :func:`input_validity`: which input elements of a linear operation exist (pixels of the
  image, not zero padding the model added);
- :func:`relevance_inputs` / :func:`relevance_path`: which operands relevance flows to (the
  others are constants to the rule: attention weights, queries and keys, gates, divisors);
- :func:`ancestors`, :func:`descendants`: reachability.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from . import ops
from .capture import Capture, item_of
from .selectors import Site


def site(cap: Capture, module: nn.Module, node: fx.Node, fed_by_input: bool) -> Site:
    """How selectors see ``node`` (``module``: the model the capture ran)."""
    if node.op == "call_module":
        return Site.of(module.get_submodule(str(node.target)), str(node.target), node.name,
                       fed_by_input)
    return Site.of(node.target, None, node.name, fed_by_input)


def reachable(node: fx.Node, step: Callable[[fx.Node], Iterable[fx.Node]]) -> set[fx.Node]:
    """``node`` and every node reached from it by repeated ``step``s."""
    seen, todo = {node}, [node]
    while todo:
        for other in step(todo.pop()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def ancestors(node: fx.Node) -> set[fx.Node]:
    """``node`` and every node its value was computed from."""
    return reachable(node, lambda n: n.all_input_nodes)


def descendants(node: fx.Node) -> set[fx.Node]:
    """``node`` and every node computed from its value."""
    return reachable(node, lambda n: n.users)


def first_linear(cap: Capture, module: nn.Module) -> set[fx.Node]:
    """Linear operations on the image's path with no linear operation before them (whatever
    element-wise, routing or affine operations sit in front): where z^B applies."""
    after_linear: dict[fx.Node, bool] = {}
    from_image: dict[fx.Node, bool] = {}
    first: set[fx.Node] = set()
    for node in cap.nodes:
        inputs = node.all_input_nodes
        from_image[node] = node is cap.image or any(from_image.get(a, False) for a in inputs)
        after_linear[node] = any(after_linear.get(a, False) for a in inputs)
        if node.op in ("call_module", "call_function") and from_image[node]:
            if site(cap, module, node, False).kind == ops.LINEAR:
                if not after_linear[node] and _signal_from_image(node, from_image):
                    first.add(node)
                after_linear[node] = True
    return first


def _pixels(cap: Capture, model: nn.Module, node: fx.Node) -> Tensor | None:
    """Which elements of ``node``'s input are pixels of the image, where routing operations
    (zero padding, cropping, reshapes, a detector's unbinding and stacking of its images) sit
    between the image and it; None when every element is (or it cannot be told). Masks follow
    the recorded operations from the image: routed as the values were, kept through
    element-wise ones, all pixels after anything that mixes them (a resize)."""
    signal = node.args[0] if node.args else None
    if not isinstance(signal, fx.Node) or signal is cap.image:
        return None
    masks: dict[fx.Node, Any] = {cap.image: torch.ones_like(cap.values[cap.image],
                                                            dtype=torch.bool)}
    for link in cap.nodes[cap.position[cap.image] + 1:cap.position[signal] + 1]:
        live = [a for a in link.all_input_nodes if a in masks]
        value = cap.values.get(link)
        if not live:
            continue
        if link.target is item_of:  # one output of a multi-output routing (unbind, split)
            masks[link] = masks[link.args[0]][link.args[1]]
        elif link.op in ("call_function", "call_module") \
                and ops.kind_of(_callable(model, link)) == ops.ROUTE:
            masks[link] = _routed(cap, model, link, masks)
        elif isinstance(value, Tensor) and len(live) == 1 \
                and masks[live[0]].shape == value.shape:
            masks[link] = masks[live[0]].contiguous()  # element-wise or affine
        elif isinstance(value, Tensor):
            masks[link] = torch.ones_like(value, dtype=torch.bool)
    mask = masks.get(signal)
    return None if not isinstance(mask, Tensor) or bool(mask.all()) else mask


def _callable(model: nn.Module, node: fx.Node) -> Any:
    return model.get_submodule(str(node.target)) if node.op == "call_module" else node.target


def _routed(cap: Capture, model: nn.Module, node: fx.Node, masks: dict[fx.Node, Any]) -> Any:
    """A routing operation applied to 0/1 masks of its activation inputs (``masks``)."""
    args = fx.node.map_arg(node.args, lambda n: masks[n].float() if n in masks
                           else cap.values[n])
    routed = _callable(model, node)(*args, **node.kwargs)
    return tuple(r.bool() for r in routed) if isinstance(routed, (tuple, list)) else routed.bool()


def _padded(cap: Capture, model: nn.Module, node: fx.Node) -> Tensor | None:
    """For a linear operation right behind zero padding (``F.pad``, ``nn.ZeroPad2d``):
    which input elements are not padding."""
    signal = node.args[0] if node.args else None
    if not (isinstance(signal, fx.Node) and signal.op in ("call_function", "call_module")
            and len(signal.all_input_nodes) == 1):
        return None
    op = _callable(model, signal)
    if not (isinstance(op, nn.modules.padding._ConstantPadNd) or ops.op_name(op) == "pad"):
        return None
    source = signal.all_input_nodes[0]
    return _routed(cap, model, signal,
                   {source: torch.ones_like(cap.values[source], dtype=torch.bool)})


def _signal_from_image(node: fx.Node, from_image: dict[fx.Node, bool]) -> bool:
    signal = node.args[0] if node.args else None
    return isinstance(signal, fx.Node) and from_image.get(signal, False)


def input_validity(cap: Capture, model: nn.Module, node: fx.Node, first: bool
                   ) -> Tensor | None:
    """Which elements of a linear operation's input exist: for the first linear operation
    (``first``), the pixels of the image (routing such as zero padding or cropping may sit
    between them); for any other, the elements that are not zero padding right in front of
    it (``F.pad``, ``nn.ZeroPad2d``). None: every element does (or it cannot be told)."""
    return _pixels(cap, model, node) if first else _padded(cap, model, node)


def _kind(node: fx.Node) -> str | None:
    """The operation table's kind of a recorded function or module call."""
    if node.op == "call_function":
        return ops.kind_of(node.target)
    if node.op == "call_module":
        _, module_type = node.meta["nn_module_stack"][str(node.target)]
        return next((kind for types, kind in ops.KINDS_BY_MODULE
                     if issubclass(module_type, types)), None)
    return None


def is_attention_weights(node: fx.Node) -> bool:
    """Whether ``node`` is computed from softmax outputs (and constants) alone: a softmax,
    reshaped, dropped out, mixed across heads (CaiT's talking heads), gated and renormalised
    (ConViT), but never touching an activation except through a softmax. The walk back stops
    at softmaxes and ends at the first source that is not one (the image), so a query or key
    costs one path, not its whole history."""
    seen, todo = {node}, [node]
    while todo:
        current = todo.pop()
        if current.op == "call_function" and ops.op_name(current.target) == ops.SOFTMAX:
            continue
        inputs = current.all_input_nodes
        if current.op not in ("call_function", "call_module") or not inputs:
            return False
        for other in inputs:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return True


def _value_operand(node: fx.Node) -> fx.Node | None:
    value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value")
    return value if isinstance(value, fx.Node) else None


def carries_relevance(value: object) -> bool:
    """Whether a recorded value can hold relevance: floating-point values do; integer and
    boolean ones (indices, masks, comparisons) only select."""
    if isinstance(value, tuple):
        return any(carries_relevance(v) for v in value)
    return isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex())


def relevance_inputs(values: dict[fx.Node, object], node: fx.Node) -> list[fx.Node]:
    """The operands of ``node`` that relevance flows to (the others only scale or select:
    integer and boolean operands among them)."""
    args = [a for a in node.all_input_nodes if carries_relevance(values.get(a))]
    if node.op != "call_function" or len(args) < 2:
        return args
    name, kind = ops.op_name(node.target), _kind(node)
    if kind == ops.ATTENTION:
        value = _value_operand(node)
        return [] if value is None else [value]
    if kind == ops.PRODUCT:
        weights = [a for a in args if is_attention_weights(a)]
        return [a for a in args if a not in weights] if 0 < len(weights) < len(args) else args
    if name in ("mul", "div"):
        shape = values[node].shape  # type: ignore[attr-defined]
        full = [a for a in args
                if isinstance(values[a], Tensor) and values[a].shape == shape]  # type: ignore[attr-defined]
        if name == "mul":  # the signal (or both halves of a gated unit), not a gate
            return full if len(full) == len(args) == 2 else full[:1]
        return args[:1]
    return args


def relevance_path(values: dict[fx.Node, object], start: fx.Node) -> set[fx.Node]:
    """The nodes relevance can reach from ``start``: its ancestors through
    :func:`relevance_inputs`."""
    seen, todo = {start}, [start]
    while todo:
        for other in relevance_inputs(values, todo.pop()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


