"""Rule maps: *where* each rule applies, and the named presets.

A :class:`RuleMap` is an ordered list of (selector, rule) pairs; the first selector that
matches an operation decides its rule. Selectors are

- a module type (``nn.Conv2d``): modules that are instances of it;
- a module object (``model.features[0]``) or its dotted name (``"features.0"``);
- a function or method name as it appears in the traced graph (``torch.flatten``, ``"view"``);
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
from captum.attr._utils.lrp_rules import PropagationRule
from torch import nn

from .rules import (
    EpsilonRule,
    PassRule,
    Rule,
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
        return selector == site.name or selector == site.op
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
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
             nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
#: Operations relevance passes through unchanged (element-wise, or reshapes).
PASS_THROUGH: tuple[Any, ...] = (
    nn.ReLU, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    F.relu, torch.relu, torch.flatten, F.dropout, "relu", "flatten", "view", "reshape",
    "contiguous", operator.pos,
)


def _reference() -> RuleMap:
    """The paper's reference rules (spec section 2.4)."""
    return RuleMap(
        [(FedByInput(CONVOLUTIONS), ZBoxRule()), (CONVOLUTIONS, ZPlusRule()),
         (nn.Linear, ZPlusRule()), (MAX_POOLS, WinnerTakeAllRule()), (AVG_POOLS, ZRule())]
        + [(op, PassRule()) for op in PASS_THROUGH])


def _epsilon() -> RuleMap:
    """LRP-epsilon (1e-6) on every linear layer and pooling, as Captum's LRP does by default."""
    eps = EpsilonRule(1e-6)
    return RuleMap([(CONVOLUTIONS, eps), (nn.Linear, eps), (MAX_POOLS, eps), (AVG_POOLS, eps)]
                   + [(op, PassRule()) for op in PASS_THROUGH])


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
