"""Rule maps: *where* each rule applies, and the named presets.

A :class:`RuleMap` is a list of (selector, rule) entries (:mod:`.selectors`). The rule of an
operation is that of the first matching entry, where entries that name one operation
(:class:`~.selectors.Module`, :class:`~.selectors.Node`) come first, then the first-layer
slot (:class:`~.selectors.FedByInput`), then the rest in order; so ``{nn.Conv2d: rule}``
changes every convolution but the first layer, and ``{FedByInput(): rule}`` changes that one.

Rules may be ours (:mod:`.rules`, :mod:`.attention`) or Captum's LRP rule objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from . import ops
from .attention import AttentionRule, ProductRule
from .captum_lrp import from_captum
from .core import Rule
from .rules import (
    ArithmeticRule,
    EpsilonRule,
    PassRule,
    RoutingRule,
    SignAwareZRule,
    WinnerTakeAllRule,
    ZBoxRule,
    ZPlusRule,
    ZRule,
)
from .selectors import AnyOf, FedByInput, Kind, Module, Selector, Site, as_selector


def _precedence(selector: Selector) -> int:
    if isinstance(selector, AnyOf):
        return min(_precedence(s) for s in selector.selectors)
    return 0 if selector.explicit else 1 if isinstance(selector, FedByInput) else 2


class RuleMap:
    """(selector, rule) entries; see the module docstring for which entry wins."""

    def __init__(self, entries: Sequence[tuple[Any, Any]],
                 module_names: frozenset[str] | None = None) -> None:
        self.entries: list[tuple[Any, Rule]] = [(key, from_captum(r)) for key, r in entries]
        self._module_names = module_names
        selectors = [(as_selector(key, module_names), rule) for key, rule in self.entries]
        self._ordered = sorted(selectors, key=lambda entry: _precedence(entry[0]))

    def bind(self, model: nn.Module) -> RuleMap:
        """This map for ``model``: a string key names a module where the model has one of
        that dotted name, else a function."""
        return RuleMap(self.entries, frozenset(name for name, _ in model.named_modules()))

    def rule_for(self, site: Site) -> Rule | None:
        for selector, rule in self._ordered:
            if selector.matches(site):
                return rule
        return None

    def names_module(self, module: nn.Module, name: str) -> bool:
        """Whether an entry selects this module itself (then it is one operation, whatever
        it runs inside)."""
        site = Site.of(module, name)
        return any(isinstance(s, Module) and s.matches(site) for s, _ in self._ordered)

    def is_leaf(self, module: nn.Module, name: str) -> bool:
        """Whether the capture records ``module`` as one operation: a built-in ``torch.nn``
        module without submodules that this map has a rule for, or one it names."""
        if self.names_module(module, name):
            return True
        builtin = type(module).__module__.startswith("torch.nn.")
        if not builtin or next(module.children(), None) is not None:
            return False
        probe = Site.of(module, name, name)
        return probe.kind != ops.UNSUPPORTED and self.rule_for(probe) is not None

    def reads_values(self, op: Any) -> bool:
        """Whether the rule for a module or function reads its input values (unknown: yes)."""
        rule = self.rule_for(Site.of(op))
        return rule is None or rule.reads_values

    def updated(self, overrides: Mapping[Any, Any]) -> RuleMap:
        """A new map whose entries are ``overrides`` before this map's."""
        return RuleMap(list(overrides.items()) + list(self.entries), self._module_names)

    def __repr__(self) -> str:
        return f"RuleMap({self.entries!r})"


def _common(linear: Rule, sums: Rule, pools: Rule, conserve: bool = True
            ) -> list[tuple[Any, Rule]]:
    return [(Kind(ops.PASS), PassRule()), (Kind(ops.ROUTE), RoutingRule()),
            (Kind(ops.ARITHMETIC), ArithmeticRule(conserve)), (Kind(ops.MAX), pools),
            (Kind(ops.SUM), sums), (Kind(ops.LINEAR), linear),
            (Kind(ops.PRODUCT), ProductRule()), (Kind(ops.ATTENTION), AttentionRule())]


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
    entries take precedence over the default preset's (``{nn.Conv2d: EpsilonRule(1e-6)}``;
    the first layer keeps z^B unless the mapping has a ``FedByInput()`` or ``Module`` entry
    for it).
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
