"""Rule maps: *where* each rule applies, and the named presets.

A :class:`RuleMap` is an ordered list of (selector, rule) pairs; the first selector that
matches an operation decides its rule. Selectors are

- a module type (``nn.Conv2d``): modules that are instances of it;
- a module object (``model.features[0]``) or its dotted name (``"features.0"``): that module
  is then one operation, whatever it runs inside;
- a function (``F.batch_norm``, ``torch.flatten``) or its name (``"view"``, ``"add"``): every
  call of it, as function or tensor method; or a node's name in the captured graph
  (``"add_3"``);
- a :class:`Selector` object for anything else (:class:`FedByInput`, :class:`Kind`).

Rules may be ours (:mod:`captum_fgcam.propagation.rules`) or Captum's LRP rule objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from captum.attr._utils.lrp_rules import PropagationRule
from torch import nn

from . import ops
from .attention import AttentionRule, ProductRule
from .ops import op_name
from .rules import (
    ArithmeticRule,
    EpsilonRule,
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
    """One recorded operation, as selectors see it."""

    op: nn.Module | Callable[..., Any]
    name: str | None  # dotted module name for module calls
    node_name: str  # the node's name in the captured graph ("add_3")
    fed_by_input: bool  # the first linear operation on the image's path
    op_name: str = ""  # canonical function name ("relu", "add"); a module's type name
    kind: str | None = None  # its kind in the operation table (:mod:`.ops`)


class Selector:
    """Base class for selectors that are predicates on a :class:`Site`."""

    def matches(self, site: Site) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class FedByInput(Selector):
    """The first linear operation on the image's path (whatever routing, element-wise or
    affine operations sit in front of it), optionally only of module ``types``."""

    types: tuple[type, ...] = ()

    def matches(self, site: Site) -> bool:
        return site.fed_by_input and (not self.types or isinstance(site.op, self.types))


@dataclass(frozen=True)
class Kind(Selector):
    """Operations of one kind of the operation table (:data:`ops.KINDS_BY_NAME`)."""

    kind: str

    def matches(self, site: Site) -> bool:
        return site.kind == self.kind


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
        return selector in (site.name, site.node_name, site.op_name)
    if callable(selector) and not isinstance(site.op, nn.Module):
        return selector is site.op or op_name(selector) == site.op_name
    return False


def _explicit(selector: Any, module: nn.Module, name: str) -> bool:
    """Whether ``selector`` names this module itself (object, or dotted name)."""
    if isinstance(selector, tuple):
        return any(_explicit(s, module, name) for s in selector)
    return selector is module or selector == name


class RuleMap:
    """An ordered (selector, rule) list; the first match wins."""

    def __init__(self, entries: Sequence[tuple[Any, Rule | PropagationRule]]) -> None:
        self.entries: list[tuple[Any, Rule]] = [(s, from_captum(r)) for s, r in entries]

    def rule_for(self, site: Site) -> Rule | None:
        for selector, rule in self.entries:
            if _matches(selector, site):
                return rule
        return None

    def names_module(self, module: nn.Module, name: str) -> bool:
        """Whether an entry selects this module object or its name (then it is one
        operation, whatever it runs inside)."""
        return any(_explicit(selector, module, name) for selector, _ in self.entries)

    def updated(self, overrides: Mapping[Any, Rule | PropagationRule]) -> RuleMap:
        """A new map where ``overrides`` take precedence over this map's entries."""
        return RuleMap(list(overrides.items()) + list(self.entries))

    def __repr__(self) -> str:
        return f"RuleMap({self.entries!r})"


def _common(linear: Rule, sums: Rule, pools: Rule, conserve: bool = True
            ) -> list[tuple[Any, Rule]]:
    return [(Kind(ops.PASS), PassRule()), (Kind(ops.ROUTE), RoutingRule()),
            (Kind(ops.ARITHMETIC), ArithmeticRule(conserve)), (Kind(ops.MAX), pools),
            (Kind(ops.SUM), sums), (Kind(ops.LINEAR), linear),
            (Kind(ops.PRODUCT), ProductRule()), (Kind(ops.ATTENTION), AttentionRule(linear))]


def _reference() -> RuleMap:
    """The paper's reference rules (spec section 2.4), extended to every operation kind:
    exactly the authors' code on VGG.

    z^B at the first linear operation on the image's path, sign-aware z+ (no bias) at other
    convolutions and linear layers, winner-take-all at max pooling, pass-through at
    element-wise layers; sums (additions, average pooling, resampling) use the sign-aware
    z-rule; concatenations and reshapes route; affine operations with constants pass. A zero
    denominator drops its relevance.
    """
    return RuleMap([(FedByInput(), ZBoxRule())]
                   + _common(ZPlusRule(fallback=False), SignAwareZRule(fallback=False),
                             WinnerTakeAllRule(conserve=False), conserve=False))


def _conserving() -> RuleMap:
    """The default: the reference rules, and where one of its quotients is 0/0 relevance is
    passed on instead of dropped: at z+ (a neuron a bias drives while no input votes for it,
    a dead channel) to the opposite-sign contributions, then by the w^2 rule; at sums and
    average pooling by the weights; at max pooling to the arg-max. Identical to the
    reference wherever its denominators are non-zero; conserves relevance at every layer."""
    return RuleMap([(FedByInput(), ZBoxRule())]
                   + _common(ZPlusRule(), SignAwareZRule(), WinnerTakeAllRule()))


def _zplus() -> RuleMap:
    """The conserving rules with the sign-aware z+ rule at the first linear operation as well,
    instead of z^B: a pixel receives relevance in proportion to its actual contribution, so a
    uniform background receives none (z^B divides by w x - w+ l - w- h and spreads relevance
    over the receptive field whatever the contrast). On scenes-vgg16bn it raises the input
    maps' energy proportion (FG-Grad-CAM-D 0.547 -> 0.591, ``benchmarks/first_layer_rule.py``);
    maps at other layers are unchanged."""
    return RuleMap(_common(ZPlusRule(), SignAwareZRule(), WinnerTakeAllRule()))


def _epsilon() -> RuleMap:
    """LRP-epsilon (1e-6) on linear layers and sums, as Captum's LRP does by default."""
    return RuleMap(_common(EpsilonRule(1e-6), ZRule(1e-6), WinnerTakeAllRule()))


PRESETS: dict[str, Callable[[], RuleMap]] = {
    "conserving": _conserving, "reference": _reference, "zplus": _zplus, "epsilon": _epsilon}


def resolve_rules(rules: None | str | RuleMap | Mapping[Any, Any]) -> RuleMap:
    """Turn a ``rules`` argument into a :class:`RuleMap`.

    None -> the "conserving" preset (the default); a string -> that preset; a mapping -> its
    entries take precedence over the default preset (``{nn.Conv2d: EpsilonRule(1e-6)}``).
    """
    if rules is None:
        return _conserving()
    if isinstance(rules, RuleMap):
        return rules
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ValueError(f"unknown rule preset {rules!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[rules]()
    if isinstance(rules, Mapping):
        return _conserving().updated(rules)
    raise TypeError(
        f"rules must be None, a preset name {sorted(PRESETS)}, a RuleMap or a dict "
        f"{{module type: rule}}; got {type(rules).__name__}")
