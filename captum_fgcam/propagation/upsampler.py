r"""The engine: propagate per-channel relevance from a deep layer down to a shallower one.

Given components E (N x C x h x w) at the output of ``from_layer``, the upsampler walks the
captured graph (:mod:`.capture`) backwards from that output to ``to_layer``, applying at each
operation the rule its :class:`RuleMap` selects:  R^{(in)} = rule(R^{(out)}),  starting from
R = E. Where a value feeds several operations, the relevances coming back from them are summed.
Each rule is linear in R, so all C channels (and all N images) move in one pass, never one
channel at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from captum._utils.common import _format_additional_forward_args, _format_tensor_into_tuples
from torch import Tensor, nn

from .._batching import each, finished
from .._state import preserved_state
from . import ops
from .attention import relevance_inputs, relevance_path
from .capture import Capture, capture, item_of, unwrap, where_non_finite
from .graph import (
    LayerError,
    LayerRef,
    ancestors,
    leaf_test,
    module_inputs,
    module_output,
    qualified_name,
    reachable,
    require_module,
    site,
)
from .presets import RuleMap, Site, resolve_rules
from .rules import (
    LINEAR_LAYERS,
    Call,
    FunctionalLinear,
    PassRule,
    Rule,
    WithBatchNorm,
    ZBoxRule,
    ZPlusRule,
)
from .tokens import as_grid


class MissingRuleError(TypeError):
    """Relevance reached an operation for which no rule is registered."""


def flat_args(node: fx.Node) -> list[Any]:
    """Positional arguments, with list arguments (``torch.cat([a, b])``) flattened."""
    flat: list[Any] = []
    for arg in node.args:
        flat.extend(arg if isinstance(arg, (list, tuple)) else [arg])
    return flat


def _channels_last(values: dict[fx.Node, Any]) -> Callable[[fx.Node], Any]:
    """Look up recorded values, turning 4-D tensors into the channels-last memory format.

    Relevance moves channels-last (the layout convolutions run fastest in on CPU), so rules
    that ask for it (:attr:`Rule.channels_last`) read recorded values in the same layout:
    element-wise arithmetic between tensors of different layouts is slow. Each value is
    converted once and kept converted (only the layout changes, not the values).
    """
    def value(node: fx.Node) -> Any:
        v = values[node]
        if isinstance(v, Tensor) and v.dim() == 4 \
                and not v.is_contiguous(memory_format=torch.channels_last):
            v = values[node] = v.contiguous(memory_format=torch.channels_last)
        return v

    return value


@dataclass
class Span:
    """The operations between a start node (where components live) and the stop nodes (where
    relevance is returned: a layer's output, or its tensor inputs) in one capture, with the
    rule chosen for each."""

    capture: Capture
    start: fx.Node
    stops: tuple[fx.Node, ...]
    rules: dict[fx.Node, Rule]
    ops: dict[fx.Node, Any]  # what each rule sees as the operation (module, view, function)
    #: per product or fused attention: the operands that receive no relevance (attention
    #: weights, queries and keys: constants to the rule)
    frozen: dict[fx.Node, set[fx.Node]] = field(default_factory=dict)

    def activation(self) -> Any:
        """The recorded value at the start (the CAM layer's output, or the logits)."""
        return self.capture.values[self.start]


class FineGrainedUpsampler:
    r"""Relevance propagation from ``from_layer``'s output down to ``to_layer``.

    R^{(l)} = \rho_l(R^{(l+1)}) for every operation l between the two layers, with
    \rho_l the rule the ``rules`` map assigns to it (default: the paper's reference rules,
    which conserve \sum R at every step). This is the piece any CAM method plugs into: give it
    per-channel components at ``from_layer`` (e.g. Captum's ``LayerGradCam`` with
    ``attr_dim_summation=False``) and it returns their fine-grained relevance at ``to_layer``.

    Args:
        model: the ``nn.Module`` to explain (not modified; ``DataParallel``, DDP and
            ``torch.compile`` wrappers are looked through).
        from_layer: module (or dotted name) where the components live (its output); None:
            the model's output (the class scores).
        to_layer: module (or dotted name) where relevance is returned.
        rules: None (reference rules), a preset name, a :class:`RuleMap`, or a dict
            ``{module type / module / name / function: rule}`` overriding the reference rules;
            Captum's ``EpsilonRule``, ``GammaRule``, ``Alpha1_Beta0_Rule``, ``IdentityRule``
            are accepted.
        fold_batchnorm: treat each convolution or linear layer followed by BatchNorm as one
            linear layer with folded parameters (as Zennit's canonizers do); default: BatchNorm
            passes relevance through, as in the reference.

    Examples::

        >>> cam = LayerGradCam(model, model.features[43])
        >>> comps = cam.attribute(x, target=3, attr_dim_summation=False).detach()
        >>> up = FineGrainedUpsampler(model, model.features[43], model.features[0])
        >>> image_map = up.attribute(x, comps, attribute_to_layer_input=True)  # N x 1 x H x W
    """

    def __init__(self, model: nn.Module, from_layer: LayerRef | None, to_layer: LayerRef,
                 rules: None | str | RuleMap | Mapping[Any, Any] = None,
                 fold_batchnorm: bool = False) -> None:
        require_module(model)
        self.model = model
        self.module = unwrap(model)
        require_module(self.module)
        self.from_name = (None if from_layer is None
                          else qualified_name(self.module, from_layer))
        self.to_name = qualified_name(self.module, to_layer)
        self.rules = resolve_rules(rules)
        self.fold_batchnorm = fold_batchnorm
        self._is_leaf = leaf_test(self.rules)

    # -- recording ---------------------------------------------------------------------
    def capture(self, inputs: Sequence[Tensor], additional_forward_args: Any = None,
                grad_from: str | None = None) -> Capture:
        """Run the model once on ``inputs`` and record what propagation needs (with
        ``grad_from``: an autograd graph from that module's output to the scores)."""
        extra = _format_additional_forward_args(additional_forward_args) or ()
        return capture(self.module, tuple(inputs), extra, self._is_leaf, self._reads_values,
                       grad_from)

    def _reads_values(self, op: Any) -> bool:
        """Whether the rule for a module or function reads its input values (unknown: yes)."""
        if isinstance(op, nn.Module):
            where = Site(op, None, "", False, type(op).__name__, ops.kind_of(op))
        else:
            where = Site(op, None, "", False, ops.op_name(op), ops.kind_of(op))
        rule = self.rules.rule_for(where)
        return rule is None or rule.reads_values

    def span(self, cap: Capture, attribute_to_layer_input: bool = False,
             from_name: str | None = None) -> Span:
        """Locate the layers in ``cap`` and choose every rule on the way, before any
        propagation: a layer that is not there, comes after the start or does not feed it,
        and an operation without a rule, are reported here."""
        from_name = from_name or self.from_name
        start = (module_output(cap, from_name) if from_name is not None
                 else _output_node(cap))
        stops = (module_inputs(cap, self.to_name) if attribute_to_layer_input
                 else (module_output(cap, self.to_name),))
        where = (f"the CAM layer {from_name!r}" if from_name is not None
                 else "the model's output")
        if any(cap.position[stop] > cap.position[start] for stop in stops):
            raise LayerError(
                f"layer {self.to_name!r} comes after {where}; relevance only moves towards "
                "the input. Choose a shallower layer, or a deeper cam_layer")
        feeding = ancestors(start)
        if not any(stop in feeding for stop in stops):
            raise LayerError(
                f"layer {self.to_name!r} does not feed {where} (it sits on a side branch); "
                "its map would be all zero. Choose a layer on the path to it")
        first = min(stops, key=cap.position.__getitem__)
        on_path = relevance_path(cap.values, start) & set().union(*map(_descendants, stops))
        first_linear = _first_linear(cap, self.module)
        rules: dict[fx.Node, Rule] = {}
        targets: dict[fx.Node, Any] = {}
        frozen: dict[fx.Node, set[fx.Node]] = {}
        folded, norms = self._fold_batchnorm(cap, on_path) if self.fold_batchnorm else ({}, set())
        for node in cap.nodes[cap.position[first] + 1:cap.position[start] + 1]:
            if node not in on_path or node.target is item_of or node in stops:
                continue
            where_site = site(cap, self.module, node, node in first_linear)
            rule = PassRule() if node in norms else self.rules.rule_for(where_site)
            if rule is None:
                raise MissingRuleError(_missing_rule_message(cap, node, where_site))
            if isinstance(rule, ZBoxRule) and node in first_linear:
                valid = _pixels(cap, self.module, node)
                rule = rule if valid is None else rule.within(valid)
            elif isinstance(rule, ZPlusRule) and \
                    (valid := _padded(cap, self.module, node)) is not None:
                rule = rule.within(valid)
            rules[node] = rule
            targets[node] = folded.get(node) or _operation(where_site.op, node, cap)
            if where_site.kind in (ops.PRODUCT, ops.ATTENTION):
                frozen[node] = set(node.all_input_nodes) - set(relevance_inputs(cap.values, node))
        return Span(cap, start, stops, rules, targets, frozen)

    # -- propagation ---------------------------------------------------------------------
    def propagate(self, span: Span, components: Tensor,
                  views: Mapping[str, Any] | None = None,
                  grid: bool = True) -> Tensor | tuple[Tensor, ...]:
        """Relevance at the stop nodes of ``span`` for ``components`` at its start (a tensor,
        or a tuple for several stops; a stop that is also an ancestor of another keeps only
        the relevance that reaches it directly).

        ``views`` maps module names to :class:`LinearView` objects that rules see instead of
        those modules (CLRP's virtual class). ``grid``: relevance at a transformer's token grid
        comes back as a channels-first grid (default), or in the layer's own layout with its
        prefix tokens (the class token's share; :mod:`.tokens`).
        """
        return self.propagate_with_taps(span, components, (), views, grid)[0]

    def propagate_with_taps(self, span: Span, components: Tensor, taps: Sequence[str],
                            views: Mapping[str, Any] | None = None, grid: bool = True
                            ) -> tuple[Tensor | tuple[Tensor, ...], list[Tensor]]:
        """:meth:`propagate`, also returning the relevance that passes through the outputs of
        the modules named in ``taps`` on the way (each between the start and the stops; the
        start's is ``components``), in the order given: one propagation for maps at several
        resolutions."""
        cap = span.capture
        tap_nodes = [module_output(cap, name) for name in taps]
        outside = [name for name, node in zip(taps, tap_nodes, strict=True)
                   if not any(cap.position[stop] < cap.position[node] for stop in span.stops)
                   or cap.position[node] > cap.position[span.start]]
        if outside:
            raise LayerError(f"cannot tap {outside}: relevance passes only through modules "
                             "between the CAM layer and the layer of the map")
        tapped: dict[fx.Node, Tensor] = {}
        views = views or {}
        values = span.capture.values
        expected = values[span.start].shape
        if components.shape != expected:
            raise ValueError(
                f"components have shape {tuple(components.shape)} but the start of the "
                f"propagation has shape {tuple(expected)}; give one value per element of that "
                "output (e.g. LayerGradCam(..., attr_dim_summation=False))")
        if not bool(torch.isfinite(components).all()):
            raise ValueError("the CAM components contain NaN or Inf: "
                             f"{where_non_finite(span.capture, self.module)}")
        relevance: dict[fx.Node, Any] = {span.start: components.detach()}
        found: dict[fx.Node, Tensor] = {}
        first = min(span.stops, key=cap.position.__getitem__)
        for node in reversed(cap.nodes[cap.position[first]:cap.position[span.start] + 1]):
            r_out = relevance.pop(node, None)
            if node in tap_nodes:
                tapped[node] = torch.zeros_like(values[node]) if r_out is None else r_out
            if node in span.stops:
                found[node] = torch.zeros_like(values[node]) if r_out is None else r_out
                if len(found) == len(span.stops):
                    break
                continue
            if r_out is None:
                continue
            if node.target is item_of:  # one output of a multi-output operation
                parent, index = node.args
                slots = relevance.setdefault(parent, [None] * len(values[parent]))
                slots[index] = r_out if slots[index] is None else slots[index] + r_out
                continue
            rule = span.rules.get(node)
            if rule is None:  # a branch the layer does not feed: its share is not the layer's
                continue
            if isinstance(r_out, list):
                r_out = tuple(None if not isinstance(v, Tensor) else
                              torch.zeros_like(v) if r is None else r
                              for r, v in zip(r_out, values[node], strict=True))
            op = views.get(str(node.target)) if node.op == "call_module" else None
            value = _channels_last(values) if rule.channels_last else values.__getitem__
            args = fx.node.map_arg(node.args, value)
            if isinstance(span.ops[node], FunctionalLinear) and op is None:
                args = args[:1]
            flat = flat_args(node)
            constants = span.frozen.get(node, set())
            call = Call(op or span.ops[node], args, fx.node.map_arg(dict(node.kwargs), value),
                        tuple(isinstance(a, fx.Node) and a not in constants for a in flat))
            for arg, r_in in zip(flat, rule.propagate(call, r_out), strict=False):
                if isinstance(arg, fx.Node) and r_in is not None:
                    relevance[arg] = relevance[arg] + r_in if arg in relevance else r_in
        image = values[cap.image]  # maps at a token grid come back channels-first

        def layout(r: Tensor) -> Tensor:
            return as_grid(r, image, cap.grids) if grid else r

        maps = tuple(layout(found[stop]).contiguous() for stop in span.stops)
        if not all(bool(torch.isfinite(m).all()) for m in maps):
            raise ValueError("the relevance map contains NaN or Inf: "
                             f"{where_non_finite(span.capture, self.module)}")
        return (maps[0] if len(maps) == 1 else maps,
                [layout(tapped[node]) for node in tap_nodes])

    def attribute(self, inputs: Tensor | tuple[Tensor, ...], components: Tensor,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  attr_dim_summation: bool = True) -> Tensor | tuple[Tensor, ...]:
        """Forward once, then propagate ``components``; sums channels unless told not to."""
        inputs = _format_tensor_into_tuples(inputs)
        with preserved_state(self.module):
            cap = self.capture(inputs, additional_forward_args)
            r = self.propagate(self.span(cap, attribute_to_layer_input), components)
        return each(lambda m: finished(m, attr_dim_summation, False), r)

    # -- helpers -------------------------------------------------------------------------
    def _fold_batchnorm(self, cap: Capture, on_path: set[fx.Node]
                        ) -> tuple[dict[fx.Node, WithBatchNorm], set[fx.Node]]:
        """Linear layers whose only consumer is a BatchNorm, seen together with it: the
        linear nodes' folded views, and the BatchNorm nodes (which then pass relevance)."""
        folded: dict[fx.Node, WithBatchNorm] = {}
        norms: set[fx.Node] = set()
        for node in cap.nodes:
            if node.op != "call_module" or node not in on_path:
                continue
            norm = self.module.get_submodule(str(node.target))
            producer = node.args[0] if node.args else None
            if (isinstance(norm, nn.modules.batchnorm._BatchNorm)
                    and isinstance(producer, fx.Node) and producer.op == "call_module"
                    and len(producer.users) == 1):
                layer = self.module.get_submodule(str(producer.target))
                if isinstance(layer, LINEAR_LAYERS):
                    folded[producer] = WithBatchNorm(layer, norm)
                    norms.add(node)
        return folded, norms


def _output_node(cap: Capture) -> fx.Node:
    node = next((n for n in cap.nodes if n.op == "output"), None)
    if node is None:
        raise LayerError("the model's output (the class scores) is not computed from its "
                         "input; there is nothing to explain")
    return node.args[0]


def _descendants(node: fx.Node) -> set[fx.Node]:
    return reachable(node, lambda n: n.users)


def _first_linear(cap: Capture, module: nn.Module) -> set[fx.Node]:
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
    (zero padding, cropping, reshapes) sit between the image and it; None when every element
    is (or it cannot be told)."""
    masks: dict[fx.Node, Tensor] = {cap.image: torch.ones_like(cap.values[cap.image],
                                                               dtype=torch.bool)}
    signal = node.args[0] if node.args else None
    chain = []
    while isinstance(signal, fx.Node) and signal is not cap.image:
        chain.append(signal)
        live = signal.all_input_nodes
        signal = live[0] if len(live) == 1 else None
    if signal is not cap.image:
        return None
    for link in reversed(chain):
        source = link.all_input_nodes[0]
        if ops.kind_of(_callable(model, link)) == ops.ROUTE:
            masks[link] = _routed(cap, model, link, masks[source])
        else:  # element-wise or affine: the same elements (in a fresh layout, as they return)
            masks[link] = masks[source].contiguous()
    mask = masks[chain[0]] if chain else None
    return None if mask is None or bool(mask.all()) else mask


def _callable(model: nn.Module, node: fx.Node) -> Any:
    return model.get_submodule(str(node.target)) if node.op == "call_module" else node.target


def _routed(cap: Capture, model: nn.Module, node: fx.Node, mask: Tensor) -> Tensor:
    """A routing operation applied to a 0/1 mask of its (single) activation input."""
    source = node.all_input_nodes[0]
    args = fx.node.map_arg(node.args, lambda n: mask.float() if n is source else cap.values[n])
    return _callable(model, node)(*args, **node.kwargs).bool()


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
    source = cap.values[signal.all_input_nodes[0]]
    return _routed(cap, model, signal, torch.ones_like(source, dtype=torch.bool))


def _signal_from_image(node: fx.Node, from_image: dict[fx.Node, bool]) -> bool:
    signal = node.args[0] if node.args else None
    return isinstance(signal, fx.Node) and from_image.get(signal, False)


def _operation(op: Any, node: fx.Node, cap: Capture) -> Any:
    """What a rule sees as the operation: the module, a functional linear layer as a view,
    or the function."""
    if node.op == "call_function" and ops.kind_of(op) == ops.LINEAR:
        values = fx.node.map_arg(node.args, lambda n: cap.values[n])
        kwargs = fx.node.map_arg(dict(node.kwargs), lambda n: cap.values[n])
        return FunctionalLinear(op, values, kwargs)
    return op


def _missing_rule_message(cap: Capture, node: fx.Node, where: Any) -> str:
    op = where.op
    what = (type(op).__name__ if isinstance(op, nn.Module)
            else f"{getattr(op, '__module__', None) or 'torch'}.{where.op_name}")
    stack = list(node.meta.get("nn_module_stack", {}))
    at = where.name or (f"{node.name} in {stack[-1]!r}" if stack else node.name)
    if where.kind == ops.UNSUPPORTED:
        return f"no relevance rule for {what} (at {at}): {ops.UNSUPPORTED_REASON}"
    inputs = [a for a in node.all_input_nodes]
    value = cap.values.get(node)
    same_shape = (len(inputs) == 1 and isinstance(value, Tensor)
                  and cap.values[inputs[0]].shape == value.shape)
    key = type(op).__name__ if isinstance(op, nn.Module) else repr(where.op_name)
    advice = [f"if it only moves or copies elements, rules={{{key}: RoutingRule()}}",
              f"if it sums them with non-negative weights, rules={{{key}: SignAwareZRule()}}"]
    if same_shape:
        advice.insert(0, f"if it is element-wise (each output from the input at the same "
                         f"place), register rules={{{key}: PassRule()}}")
    return f"no relevance rule for {what} (at {at}); " + "; ".join(advice)
