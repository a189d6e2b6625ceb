r"""The engine: propagate per-channel relevance from a deep layer down to a shallower one.

Given components E (N x C x h x w) at the output of ``from_layer``, the upsampler walks the
traced graph backwards from that output to ``to_layer``, applying at each operation the rule
its :class:`RuleMap` selects:  R^{(in)} = rule(R^{(out)}),  starting from R = E. Where a value
feeds several operations, the relevances coming back from them are summed. Each rule is linear
in R, so all C channels (and all N images) move in one pass, never one channel at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from captum._utils.common import _format_additional_forward_args, _format_tensor_into_tuples
from torch import Tensor, nn

from .._state import preserved_state
from .graph import (
    LayerError,
    LayerRef,
    RecordingForward,
    TracedModel,
    qualified_name,
    require_module,
)
from .presets import RuleMap, Site, resolve_rules
from .rules import LINEAR_LAYERS, Call, GateRule, PassRule, RoutingRule, Rule, WithBatchNorm


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


class FineGrainedUpsampler:
    r"""Relevance propagation from ``from_layer``'s output down to ``to_layer``.

    R^{(l)} = \rho_l(R^{(l+1)}) for every operation l between the two layers, with
    \rho_l the rule the ``rules`` map assigns to it (default: the paper's reference rules,
    which conserve \sum R at every step). This is the piece any CAM method plugs into: give it
    per-channel components at ``from_layer`` (e.g. Captum's ``LayerGradCam`` with
    ``attr_dim_summation=False``) and it returns their fine-grained relevance at ``to_layer``.

    Args:
        model: the ``nn.Module`` to explain (traced with ``torch.fx``; not modified).
        from_layer: module (or dotted name) where the components live (its output).
        to_layer: module (or dotted name) where relevance is returned.
        rules: None (reference rules), a preset name, a :class:`RuleMap`, or a dict
            ``{module type / module / name: rule}`` overriding the reference rules; Captum's
            ``EpsilonRule``, ``GammaRule``, ``Alpha1_Beta0_Rule``, ``IdentityRule`` are accepted.
        fold_batchnorm: treat each convolution or linear layer followed by BatchNorm as one
            linear layer with folded parameters (as Zennit's canonizers do); default: BatchNorm
            passes relevance through, as in the reference.

    Examples::

        >>> cam = LayerGradCam(model, model.features[43])
        >>> comps = cam.attribute(x, target=3, attr_dim_summation=False).detach()
        >>> up = FineGrainedUpsampler(model, model.features[43], model.features[0])
        >>> image_map = up.attribute(x, comps, attribute_to_layer_input=True)  # N x 1 x H x W
    """

    def __init__(self, model: nn.Module, from_layer: LayerRef, to_layer: LayerRef,
                 rules: None | str | RuleMap | Mapping[Any, Any] = None,
                 fold_batchnorm: bool = False) -> None:
        require_module(model)
        self.model = model
        self.from_name = qualified_name(model, from_layer)
        self.to_name = qualified_name(model, to_layer)
        self.rules = resolve_rules(rules)
        self.traced = TracedModel(model)
        self.start = self.traced.output_node(self.from_name)
        self.to_output = self.traced.output_node(self.to_name)
        self.to_input = self.traced.input_node(self.to_name)
        position = self.traced.position
        if position[self.to_output] > position[self.start]:
            raise LayerError(
                f"layer {self.to_name!r} comes after the CAM layer "
                f"{self.from_name!r}; relevance only moves towards the input. Choose a "
                "shallower layer, or a deeper cam_layer")
        span = self.traced.nodes[position[self.to_input]:position[self.start] + 1]
        self._rules: dict[fx.Node, Rule] = {}
        self.folded = self._fold_batchnorm(span) if fold_batchnorm else {}
        keep = set(span) | {arg for node in span for arg in node.all_input_nodes}
        protect = {arg for node in span if node.op.startswith("call")
                   for arg in node.all_input_nodes if self._uses_input_values(node)}
        #: rank of the image batch the first layer expects (4 for Conv2d), if it can be told
        self.image_rank = next(
            (self.traced.module(n).weight.dim() for n in self.traced.nodes
             if n.op == "call_module" and isinstance(self.traced.module(n), LINEAR_LAYERS[1:])
             and any(a.op == "placeholder" for a in n.all_input_nodes)), None)
        #: CAM weightings hook this identity module: its output is ``from_layer``'s output.
        self.tap = nn.Identity()
        self.forward = RecordingForward(self.traced, keep, protect, self.start, self.tap)

    # -- recording ---------------------------------------------------------------------
    def record(self, inputs: Sequence[Tensor], additional_forward_args: Any = None) -> Tensor:
        """One forward pass (no gradients) that records the values propagation needs."""
        extra = _format_additional_forward_args(additional_forward_args) or ()
        with torch.no_grad(), self.forward.recording():
            return self.forward(*inputs, *extra)

    def activation(self) -> Tensor:
        """The recorded output of ``from_layer``."""
        return self._values()[self.start]

    # -- propagation ---------------------------------------------------------------------
    def propagate(self, components: Tensor, attribute_to_layer_input: bool = False,
                  views: Mapping[str, Any] | None = None) -> Tensor:
        """Relevance at ``to_layer`` (output, or input) for ``components`` at ``from_layer``.

        Needs a recorded forward pass (:meth:`record`, or a weighting's forward through
        ``self.forward`` inside ``self.forward.recording()``). ``views`` maps module names to
        :class:`LinearView` objects that rules see instead of those modules (CLRP's virtual
        class).
        """
        views = views or {}
        values = self._values()
        expected = values[self.start].shape
        if components.shape != expected:
            raise ValueError(
                f"components have shape {tuple(components.shape)} but the output of "
                f"{self.from_name!r} has shape {tuple(expected)}; give one value per element "
                "of that output (e.g. LayerGradCam(..., attr_dim_summation=False))")
        stop = self.to_input if attribute_to_layer_input else self.to_output
        relevance: dict[fx.Node, Tensor] = {self.start: components.detach()}
        nodes = self.traced.nodes
        position = self.traced.position
        for node in reversed(nodes[position[stop]:position[self.start] + 1]):
            r_out = relevance.pop(node, None)
            if node is stop:
                break
            if r_out is None:
                continue
            op = views.get(str(node.target)) if node.op == "call_module" else None
            rule = self._rule(node)
            value = _channels_last(values) if rule.channels_last else values.__getitem__
            call = Call(op or self._call_target(node), fx.node.map_arg(node.args, value),
                        fx.node.map_arg(dict(node.kwargs), value))
            for arg, r_in in zip(flat_args(node), rule.propagate(call, r_out), strict=True):
                if isinstance(arg, fx.Node) and r_in is not None:
                    relevance[arg] = relevance[arg] + r_in if arg in relevance else r_in
        return r_out.contiguous() if r_out is not None else torch.zeros_like(values[stop])

    def attribute(self, inputs: Tensor | tuple[Tensor, ...], components: Tensor,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  attr_dim_summation: bool = True) -> Tensor:
        """Forward once, then propagate ``components``; sums channels unless told not to."""
        inputs = _format_tensor_into_tuples(inputs)
        with preserved_state(self.model):
            try:
                self.record(inputs, additional_forward_args)
                r = self.propagate(components, attribute_to_layer_input)
            finally:
                self.forward.release()
        return r.sum(dim=1, keepdim=True) if attr_dim_summation else r

    # -- helpers -------------------------------------------------------------------------
    def _values(self) -> dict[fx.Node, Any]:
        if self.forward.values is None:
            raise RuntimeError("no forward pass has been recorded; call record() first")
        return self.forward.values

    def _call_target(self, node: fx.Node) -> Any:
        if node in self.folded:
            return self.folded[node]
        return self.traced.module(node) if node.op == "call_module" else node.target

    def _fold_batchnorm(self, span: list[fx.Node]) -> dict[fx.Node, WithBatchNorm]:
        """Linear layers whose only consumer is a BatchNorm, seen together with it."""
        folded = {}
        for node in span:
            if node.op != "call_module":
                continue
            norm = self.traced.module(node)
            producer = node.args[0] if node.args else None
            if (isinstance(norm, nn.modules.batchnorm._BatchNorm)
                    and isinstance(producer, fx.Node) and producer.op == "call_module"
                    and isinstance(self.traced.module(producer), LINEAR_LAYERS)
                    and len(producer.users) == 1):
                folded[producer] = WithBatchNorm(self.traced.module(producer), norm)
                self._rules[node] = PassRule()
        return folded

    def _site(self, node: fx.Node) -> Site:
        op = self.traced.module(node) if node.op == "call_module" else node.target
        return Site(op, str(node.target) if node.op == "call_module" else None, node.name,
                    self._fed_by_image(node))

    def _fed_by_image(self, node: fx.Node) -> bool:
        """Whether ``node``'s signal operand is the model input, directly or through
        operations that only move or mask pixels (slicing, reshapes, a constant 0/1 mask)."""
        source = _signal(node)
        while source is not None and source.op != "placeholder":
            rule = self._rules.get(source) or self.rules.rule_for(self._site_of_op(source))
            constant_gate = (isinstance(rule, GateRule)
                             and all(a.op == "get_attr" for a in source.all_input_nodes
                                     if a is not _signal(source)))
            if not (isinstance(rule, RoutingRule) or constant_gate):
                return False
            source = _signal(source)
        return source is not None

    def _site_of_op(self, node: fx.Node) -> Site:
        op = self.traced.module(node) if node.op == "call_module" else node.target
        return Site(op, str(node.target) if node.op == "call_module" else None, node.name, False)

    def _uses_input_values(self, node: fx.Node) -> bool:
        rule = self._rules.get(node) or self.rules.rule_for(self._site(node))
        return rule is None or rule.uses_input_values

    def _rule(self, node: fx.Node) -> Rule:
        if node not in self._rules:
            site = self._site(node)
            op, name = site.op, site.name
            rule = self.rules.rule_for(site)
            if rule is None:
                what = (type(op).__name__ if isinstance(op, nn.Module) else repr(op)
                        if isinstance(op, str) else f"{op.__module__}.{op.__qualname__}")
                raise MissingRuleError(
                    f"no relevance rule for {what} (at {name or node.name!r}). Register one, "
                    f"e.g. rules={{{what}: PassRule()}} for an element-wise operation or "
                    f"rules={{{what}: ZPlusRule()}} for a linear layer")
            self._rules[node] = rule
        return self._rules[node]


def _signal(node: fx.Node) -> fx.Node | None:
    """The first operand of ``node`` that is computed (not a parameter or buffer)."""
    return next((a for a in node.all_input_nodes if a.op != "get_attr"), None)
