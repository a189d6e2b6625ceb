r"""The engine: propagate per-channel relevance from a deep layer down to a shallower one.

Given components E (N x C x h x w) at the output of ``from_layer``, the upsampler walks the
captured graph (:mod:`.capture`) backwards from that output to ``to_layer``, applying at each
operation the rule its :class:`~.presets.RuleMap` selects:  R^{(in)} = rule(R^{(out)}),
starting from R = E. Where a value feeds several operations, the relevances coming back from
them are summed. Each rule is linear in R, so all C channels (and all N images) move in one
pass, never one channel at a time.

Before any propagation, :meth:`FineGrainedUpsampler.span` reads the graph facts
(:mod:`.graph`) and chooses every rule; a span's operations may then be seen through views
(:meth:`Span.substituted`: BatchNorm folding, CLRP's virtual class), the one way the engine
substitutes parameters. The engine owns the memory layout: a rule reads recorded 4-D values
in the layout of the relevance it receives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .._batching import each, finished
from .._state import preserved_state
from ..arguments import forward_args_tuple, input_tuple
from . import ops
from .capture import Capture, capture, item_of, refuse_non_finite, unwrap, where_non_finite
from .core import Call, Rule
from .graph import (
    ancestors,
    carries_relevance,
    descendants,
    first_linear,
    input_validity,
    relevance_inputs,
    relevance_path,
    site,
)
from .layers import (
    LayerError,
    LayerRef,
    Rules,
    module_inputs,
    module_output,
    qualified_name,
    require_module,
)
from .presets import resolve_rules
from .rules import PassRule, RoutingRule, SignAwareZRule
from .selectors import Site
from .tokens import as_grid
from .views import LINEAR_LAYERS, FunctionalLinear, LinearView, WithBatchNorm


class MissingRuleError(TypeError):
    """Relevance reached an operation for which no rule is registered."""


def flat_args(node: fx.Node) -> list[Any]:
    """Positional arguments, with list arguments (``torch.cat([a, b])``) flattened."""
    flat: list[Any] = []
    for arg in node.args:
        flat.extend(arg if isinstance(arg, (list, tuple)) else [arg])
    return flat


@dataclass(frozen=True)
class Step:
    """One operation of a span: its rule, what the rule sees as the operation (the module,
    the function, or a view), and the graph facts the rule's :class:`~.core.Call` carries."""

    rule: Rule
    op: Any
    live: tuple[bool, ...]
    valid: Tensor | None
    scope: nn.Module | None


@dataclass
class Span:
    """The operations between a start node (where components live) and the stop nodes (where
    relevance is returned: a layer's output, or its tensor inputs) in one capture, with the
    step chosen for each."""

    capture: Capture
    start: fx.Node
    stops: tuple[fx.Node, ...]
    steps: dict[fx.Node, Step]
    rule_for: Any  # the rule map's lookup, for rules of fused operations

    def activation(self) -> Any:
        """The recorded value at the start (the CAM layer's output, or the logits)."""
        return self.capture.values[self.start]

    def substituted(self, views: Mapping[str, LinearView]) -> Span:
        """This span with the modules named in ``views`` seen through those views."""
        steps = {node: dataclasses.replace(step, op=views[str(node.target)])
                 if node.op == "call_module" and str(node.target) in views else step
                 for node, step in self.steps.items()}
        return dataclasses.replace(self, steps=steps)


class FineGrainedUpsampler:
    r"""Relevance propagation from ``from_layer``'s output down to ``to_layer``.

    R^{(l)} = \rho_l(R^{(l+1)}) for every operation l between the two layers, with
    \rho_l the rule the ``rules`` map assigns to it (default: the conserving preset, the
    paper's rules with the relevance they drop at a 0/0 quotient passed on). This is the piece
    any CAM method plugs into: give it per-channel components at ``from_layer`` (e.g. Captum's
    ``LayerGradCam`` with ``attr_dim_summation=False``) and it returns their fine-grained
    relevance at ``to_layer``.

    Args:
        model: the ``nn.Module`` to explain (not modified; ``DataParallel``, DDP and
            ``torch.compile`` wrappers are looked through).
        from_layer: module (or dotted name) where the components live (its output); None
            or the model itself: the model's output (the class scores).
        to_layer: module (or dotted name) where relevance is returned.
        rules: None (the conserving preset), a preset name, a :class:`~.presets.RuleMap`, or
            a dict ``{selector: rule}`` (:mod:`.selectors`) overriding the conserving preset;
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
                 rules: Rules = None, fold_batchnorm: bool = False) -> None:
        require_module(model)
        self.model = model
        self.module = unwrap(model)
        require_module(self.module)
        self.from_name = (None if from_layer is None  # "": the model's output too
                          else qualified_name(self.module, from_layer) or None)
        self.to_name = qualified_name(self.module, to_layer)
        self.rules = resolve_rules(rules).bind(self.module)
        self.fold_batchnorm = fold_batchnorm

    # -- recording ---------------------------------------------------------------------
    def capture(self, inputs: Sequence[Tensor], additional_forward_args: Any = None,
                grad_from: str | None = None) -> Capture:
        """Run the model once on ``inputs`` and record what propagation needs (with
        ``grad_from``: an autograd graph from that module's output to the scores)."""
        extra = forward_args_tuple(additional_forward_args) or ()
        return capture(self.module, tuple(inputs), extra, self.rules.is_leaf,
                       self.rules.reads_values, grad_from)

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
        on_path = relevance_path(cap.values, start) & set().union(*map(descendants, stops))
        fed_by_input = first_linear(cap, self.module)
        steps: dict[fx.Node, Step] = {}
        for node in cap.nodes[cap.position[first] + 1:cap.position[start] + 1]:
            if node not in on_path or node.target is item_of or node in stops:
                continue
            where_site = site(cap, self.module, node, node in fed_by_input)
            rule = self.rules.rule_for(where_site)
            if rule is None:
                raise MissingRuleError(_missing_rule_message(
                    cap, node, where_site, self.module,
                    lambda r, n=node, w=where_site: self._step(cap, n, w, r, fed_by_input)))
            steps[node] = self._step(cap, node, where_site, rule, fed_by_input)
        span = Span(cap, start, stops, steps, self._rule_for)
        return self._fold_batchnorm(span) if self.fold_batchnorm else span

    def _step(self, cap: Capture, node: fx.Node, where: Site, rule: Rule,
              fed_by_input: set[fx.Node]) -> Step:
        """``rule`` at ``node`` with the graph facts its call carries."""
        constant = {a for a in node.all_input_nodes if not carries_relevance(cap.values[a])}
        if where.kind in (ops.PRODUCT, ops.ATTENTION):
            constant |= set(node.all_input_nodes) - set(relevance_inputs(cap.values, node))
        return Step(
            rule, _operation(where.op, node, cap),
            tuple(isinstance(a, fx.Node) and a not in constant for a in flat_args(node)),
            input_validity(cap, self.module, node, node in fed_by_input)
            if where.kind == ops.LINEAR else None,
            _scope(self.module, node))

    def _rule_for(self, op: Any) -> Rule:
        """The rule map's rule for a module or function outside the recorded graph."""
        name = next((n for n, m in self.module.named_modules() if m is op), None)
        where = Site.of(op, name)
        rule = self.rules.rule_for(where)
        if rule is None:
            raise MissingRuleError(f"no relevance rule for {where.op_name} (inside a fused "
                                   "operation)")
        return rule

    # -- propagation ---------------------------------------------------------------------
    def propagate(self, span: Span, components: Tensor,
                  grid: bool = True) -> Tensor | tuple[Tensor, ...]:
        """Relevance at the stop nodes of ``span`` for ``components`` at its start (a tensor,
        or a tuple for several stops; a stop that is also an ancestor of another keeps only
        the relevance that reaches it directly).

        ``grid``: relevance at a transformer's token grid comes back as a channels-first grid
        (default), or in the layer's own layout with its prefix tokens (the class token's
        share; :mod:`.tokens`).
        """
        return self.propagate_with_taps(span, components, (), grid)[0]

    def propagate_with_taps(self, span: Span, components: Tensor, taps: Sequence[str],
                            grid: bool = True
                            ) -> tuple[Tensor | tuple[Tensor, ...], list[Tensor]]:
        """:meth:`propagate`, also returning the relevance that passes through the outputs of
        the modules named in ``taps`` on the way (each between the start and the stops; the
        start's is ``components``), in the order given: one propagation for maps at several
        resolutions."""
        cap = span.capture
        tap_nodes = _tap_nodes(span, taps)
        values = cap.values
        _check_components(span, components, self.module)
        relevance: dict[fx.Node, Any] = {span.start: components.detach()}
        found: dict[fx.Node, Tensor] = {}
        tapped: dict[fx.Node, Tensor] = {}
        layouts = _Layouts(values)
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
            step = span.steps.get(node)
            if step is None:  # a branch the layer does not feed: its share is not the layer's
                continue
            if isinstance(r_out, list):
                r_out = tuple(None if not isinstance(v, Tensor) else
                              torch.zeros_like(v) if r is None else r
                              for r, v in zip(r_out, values[node], strict=True))
            read = layouts.like(r_out) if step.rule.reads_values else values.__getitem__
            call = _call(node, step, read, span)
            for arg, r_in in zip(flat_args(node), step.rule.propagate(call, r_out),
                                 strict=False):
                if isinstance(arg, fx.Node) and r_in is not None:
                    relevance[arg] = relevance[arg] + r_in if arg in relevance else r_in
        image = values[cap.image]  # maps at a token grid come back channels-first

        def layout(r: Tensor) -> Tensor:
            return as_grid(r, image, cap.grids) if grid else r

        maps = tuple(layout(found[stop]).contiguous() for stop in span.stops)
        for m in maps:
            refuse_non_finite(m, "the relevance map",
                              lambda: where_non_finite(span.capture, self.module))
        return (maps[0] if len(maps) == 1 else maps,
                [layout(tapped[node]) for node in tap_nodes])

    def attribute(self, inputs: Tensor | tuple[Tensor, ...], components: Tensor,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  attr_dim_summation: bool = True) -> Tensor | tuple[Tensor, ...]:
        """Forward once, then propagate ``components``; sums channels unless told not to."""
        inputs = input_tuple(inputs)
        with preserved_state(self.module):
            cap = self.capture(inputs, additional_forward_args)
            r = self.propagate(self.span(cap, attribute_to_layer_input), components)
        return each(lambda m: finished(m, attr_dim_summation, False), r)

    # -- helpers -------------------------------------------------------------------------
    def _fold_batchnorm(self, span: Span) -> Span:
        """Linear layers whose only consumer is a BatchNorm, seen together with it (a
        :class:`WithBatchNorm` view); the BatchNorm then passes relevance on."""
        views: dict[str, LinearView] = {}
        steps = dict(span.steps)
        for node, step in span.steps.items():
            if node.op != "call_module":
                continue
            norm = self.module.get_submodule(str(node.target))
            producer = node.args[0] if node.args else None
            if (isinstance(norm, nn.modules.batchnorm._BatchNorm)
                    and isinstance(producer, fx.Node) and producer.op == "call_module"
                    and len(producer.users) == 1 and producer in steps):
                layer = self.module.get_submodule(str(producer.target))
                if isinstance(layer, LINEAR_LAYERS):
                    views[str(producer.target)] = WithBatchNorm(layer, norm)
                    steps[node] = dataclasses.replace(step, rule=PassRule())
        return dataclasses.replace(span, steps=steps).substituted(views)


class _Layouts:
    """Recorded values in the layout of the relevance a rule receives: a 4-D value is read
    channels-last where the relevance is (convolution rules return it so; element-wise
    arithmetic between tensors of different layouts is slow). Each value is converted once,
    in place of the recorded one (only the layout changes, not the values)."""

    def __init__(self, values: dict[fx.Node, Any]) -> None:
        self.values = values

    def like(self, relevance: Any) -> Any:
        channels_last = (isinstance(relevance, Tensor) and relevance.dim() == 4
                         and not relevance.is_contiguous()
                         and relevance.is_contiguous(memory_format=torch.channels_last))
        return self._channels_last if channels_last else self.values.__getitem__

    def _channels_last(self, node: fx.Node) -> Any:
        v = self.values[node]
        if isinstance(v, Tensor) and v.dim() == 4 \
                and not v.is_contiguous(memory_format=torch.channels_last):
            v = self.values[node] = v.contiguous(memory_format=torch.channels_last)
        return v


def _call(node: fx.Node, step: Step, value: Any, span: Span | None) -> Call:
    """The :class:`~.core.Call` a rule sees for ``node``: recorded values, facts, view."""
    args = fx.node.map_arg(node.args, value)
    if isinstance(step.op, FunctionalLinear):
        args = args[:1]  # the weights and options live in the view
    return Call(step.op, args, fx.node.map_arg(dict(node.kwargs), value), step.live,
                step.valid, step.scope, None if span is None else span.rule_for)


def _tap_nodes(span: Span, taps: Sequence[str]) -> list[fx.Node]:
    cap = span.capture
    nodes = [module_output(cap, name) for name in taps]
    outside = [name for name, node in zip(taps, nodes, strict=True)
               if not any(cap.position[stop] < cap.position[node] for stop in span.stops)
               or cap.position[node] > cap.position[span.start]]
    if outside:
        raise LayerError(f"cannot tap {outside}: relevance passes only through modules "
                         "between the CAM layer and the layer of the map")
    return nodes


def _check_components(span: Span, components: Tensor, model: nn.Module) -> None:
    expected = span.activation().shape
    if components.shape != expected:
        raise ValueError(
            f"components have shape {tuple(components.shape)} but the start of the "
            f"propagation has shape {tuple(expected)}; give one value per element of that "
            "output (e.g. LayerGradCam(..., attr_dim_summation=False))")
    refuse_non_finite(components, "the CAM components",
                      lambda: where_non_finite(span.capture, model))


def _scope(model: nn.Module, node: fx.Node) -> nn.Module | None:
    """The innermost module ``node`` ran inside (None: the model's own forward)."""
    stack = [name for name in node.meta.get("nn_module_stack", {}) if name != str(node.target)
             or node.op != "call_module"]
    return model.get_submodule(stack[-1]) if stack else None


def _output_node(cap: Capture) -> fx.Node:
    node = next((n for n in cap.nodes if n.op == "output"), None)
    if node is None:
        raise LayerError("the model's output (the class scores) is not computed from its "
                         "input; there is nothing to explain")
    return node.args[0]


def _operation(op: Any, node: fx.Node, cap: Capture) -> Any:
    """What a rule sees as the operation: the module, a functional linear layer as a view,
    or the function."""
    if node.op == "call_function" and ops.kind_of(op) == ops.LINEAR:
        values = fx.node.map_arg(node.args, lambda n: cap.values[n])
        kwargs = fx.node.map_arg(dict(node.kwargs), lambda n: cap.values[n])
        return FunctionalLinear(op, values, kwargs)
    return op


def _missing_rule_message(cap: Capture, node: fx.Node, where: Site, model: nn.Module,
                          step: Callable[[Rule], Step]) -> str:
    """What has no rule, and the rules of this package that fit it, each only if it runs on
    the operation as recorded (a trial on the recorded values): a suggestion always works."""
    op = where.op
    what = (type(op).__name__ if isinstance(op, nn.Module)
            else f"{getattr(op, '__module__', None) or 'torch'}.{where.op_name}")
    stack = list(node.meta.get("nn_module_stack", {}))
    at = where.name or (f"{node.name} in {stack[-1]!r}" if stack else node.name)
    if where.kind == ops.UNSUPPORTED:
        return f"no relevance rule for {what} (at {at}): {ops.UNSUPPORTED_REASON}"
    inputs = relevance_inputs(cap.values, node)
    value = cap.values.get(node)
    same_shape = (len(inputs) == 1 and isinstance(value, Tensor)
                  and cap.values[inputs[0]].shape == value.shape)
    if isinstance(op, nn.Module):
        key = f"nn.{type(op).__name__}" if type(op).__module__.startswith("torch.nn") \
            else type(op).__name__
    elif any(name == where.op_name for name, _ in model.named_modules()):
        key = f"Function({where.op_name!r})"  # the string alone would name that module
    else:
        key = repr(where.op_name)
    candidates = [("if it is element-wise (each output from the input at the same place)",
                   PassRule()) if same_shape else None,
                  ("if it only moves or copies elements", RoutingRule()),
                  ("if it sums them with non-negative weights", SignAwareZRule())]
    advice = [f"{when}, rules={{{key}: {type(rule).__name__}()}}"
              for when, rule in filter(None, candidates) if _runs(cap, node, step(rule))]
    if not advice:
        return (f"no relevance rule for {what} (at {at}), and none of PassRule, RoutingRule "
                "or SignAwareZRule runs on it; write a Rule for it (docs/rules.md) or replace "
                "the operation by supported ones")
    return f"no relevance rule for {what} (at {at}); " + "; ".join(advice)


def _runs(cap: Capture, node: fx.Node, step: Step) -> bool:
    """Whether ``step``'s rule runs on ``node``'s recorded call and returns relevance of each
    input's shape (a trial with relevance 1 at every output)."""
    value = cap.values[node]
    ones: Any = (tuple(torch.ones_like(v) if isinstance(v, Tensor) else None for v in value)
                 if isinstance(value, tuple) else torch.ones_like(value))
    call = _call(node, step, cap.values.__getitem__, None)
    try:
        out = step.rule.propagate(call, ones)
    except Exception:  # any failure: not a suggestion
        return False
    return all(r is None or (isinstance(r, Tensor) and isinstance(x, Tensor)
                             and r.shape == x.shape and bool(torch.isfinite(r).all()))
               for r, x in zip(out, call.inputs, strict=False))
