"""Rule maps: *where* each rule applies, and the named presets.

A :class:`RuleMap` is an ordered list of (selector, rule) pairs; the first selector that
matches an operation decides its rule. Selectors are

- a module type (``nn.Conv2d``): modules that are instances of it;
- a module object (``model.features[0]``) or its dotted name (``"features.0"``);
- a function or method name as it appears in the traced graph (``torch.flatten``, ``"view"``),
  or a node's name in the traced graph (``"add_3"``);
- a :class:`Selector` object for anything else (e.g. :class:`FedByInput`).

Rules may be ours (:mod:`captum_fgcam.propagation.rules`) or Captum's LRP rule objects.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from captum.attr._utils.lrp_rules import PropagationRule
from torch import nn

from .rules import (
    EpsilonRule,
    GateRule,
    PassRule,
    RoutingRule,
    Rule,
    SignAwareZRule,
    WinnerTakeAllRule,
    ZBoxRule,
    ZPlusRule,
    ZRule,
    from_captum,
)


@dataclass(frozen=True)
class Site:
    """One operation in the traced graph, as selectors see it."""

    op: nn.Module | Callable[..., Any] | str
    name: str | None  # dotted module name for module calls
    node_name: str  # the node's name in the traced graph ("add_3")
    fed_by_input: bool  # its first argument is a model input (the image)


class Selector:
    """Base class for selectors that are predicates on a :class:`Site`."""

    def matches(self, site: Site) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class FedByInput(Selector):
    """Modules of ``types`` whose input is the model's input (the first layer)."""

    types: tuple[type, ...]

    def matches(self, site: Site) -> bool:
        return site.fed_by_input and isinstance(site.op, self.types)


def _matches(selector: Any, site: Site) -> bool:
    if isinstance(selector, tuple):
        return any(_matches(s, site) for s in selector)
    if isinstance(selector, Selector):
        return selector.matches(site)
    if isinstance(selector, type):
        return isinstance(site.op, selector)
    if isinstance(selector, nn.Module):
        return site.op is selector
    if isinstance(selector, str):
        return selector in (site.name, site.node_name) or selector == site.op
    return selector is site.op


class RuleMap:
    """An ordered (selector, rule) list; the first match wins."""

    def __init__(self, entries: Sequence[tuple[Any, Rule | PropagationRule]]) -> None:
        self.entries: list[tuple[Any, Rule]] = [(s, from_captum(r)) for s, r in entries]

    def rule_for(self, site: Site) -> Rule | None:
        for selector, rule in self.entries:
            if _matches(selector, site):
                return rule
        return None

    def updated(self, overrides: Mapping[Any, Rule | PropagationRule]) -> RuleMap:
        """A new map where ``overrides`` take precedence over this map's entries."""
        return RuleMap(list(overrides.items()) + list(self.entries))

    def __repr__(self) -> str:
        return f"RuleMap({self.entries!r})"


CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, F.max_pool2d, F.adaptive_max_pool2d)
#: Sums with non-negative weights: average pooling, means, residual additions.
SUMS: tuple[Any, ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.mean, "mean",
    operator.add, torch.add, "add",
)
#: Element-wise activations and normalisations: relevance passes unchanged (the reference
#: treats ReLU and BatchNorm so; the others get the same identity-style rule).
ELEMENTWISE: tuple[Any, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish,
    nn.Tanh, nn.Dropout, nn.Dropout2d, nn.Identity,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.dropout, F.layer_norm,
    F.group_norm, "relu", "contiguous", operator.pos, torchvision.ops.stochastic_depth,
)
#: Operations that only move elements.
ROUTING: tuple[Any, ...] = (
    nn.Flatten, torch.flatten, torch.cat, torch.concat, torch.permute, torch.transpose,
    operator.getitem, "flatten", "view", "reshape", "permute", "transpose", "narrow",
)
#: Multiplications: the gate (the broadcast operand) is treated as a constant.
GATES: tuple[Any, ...] = (operator.mul, torch.mul, "mul")


def _common(linear: Rule, sums: Rule) -> list[tuple[Any, Rule]]:
    return [(ELEMENTWISE, PassRule()), (ROUTING, RoutingRule()), (GATES, GateRule()),
            (MAX_POOLS, WinnerTakeAllRule()), (SUMS, sums), ((*CONVOLUTIONS, nn.Linear), linear)]


def _reference() -> RuleMap:
    """The paper's reference rules (spec section 2.4), extended to every torchvision CNN part.

    z^B at a convolution fed by the image, sign-aware z+ (no bias) at other convolutions and
    linear layers, winner-take-all at max pooling, pass-through at element-wise layers; sums
    (additions, average pooling) use the sign-aware z-rule; concatenations and reshapes route.
    """
    return RuleMap([(FedByInput(CONVOLUTIONS), ZBoxRule())]
                   + _common(ZPlusRule(), SignAwareZRule()))


def _epsilon() -> RuleMap:
    """LRP-epsilon (1e-6) on linear layers and sums, as Captum's LRP does by default."""
    return RuleMap(_common(EpsilonRule(1e-6), ZRule(1e-6)))


PRESETS: dict[str, Callable[[], RuleMap]] = {"reference": _reference, "epsilon": _epsilon}


def resolve_rules(rules: None | str | RuleMap | Mapping[Any, Any]) -> RuleMap:
    """Turn a ``rules`` argument into a :class:`RuleMap`.

    None -> the "reference" preset; a string -> that preset; a mapping -> its entries take
    precedence over the reference preset (``{nn.Conv2d: EpsilonRule(1e-6)}``).
    """
    if rules is None:
        return _reference()
    if isinstance(rules, RuleMap):
        return rules
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ValueError(f"unknown rule preset {rules!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[rules]()
    if isinstance(rules, Mapping):
        return _reference().updated(rules)
    raise TypeError(
        f"rules must be None, a preset name {sorted(PRESETS)}, a RuleMap or a dict "
        f"{{module type: rule}}; got {type(rules).__name__}")
