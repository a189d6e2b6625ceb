"""Selectors: *which* recorded operations an entry of a rule map applies to.

A :class:`Site` is one recorded operation with the graph facts selectors may test. Selector
kinds, each matching one thing only:

- a module type (``nn.Conv2d``, or a tuple of types): modules that are instances of it;
- :class:`Module` (``Module(model.features[0])``, ``Module("features.0")``): that module,
  which is then recorded as one operation, whatever it runs inside;
- :class:`Function` (``Function(F.batch_norm)``, ``Function("view")``): every call of that
  function, as function or tensor method;
- :class:`Node` (``Node("add_3")``): one node of the captured graph;
- :class:`Kind` (``Kind("sum")``): operations of one kind of the operation table;
- :class:`FedByInput`: the first linear operation on the image's path (the first-layer slot,
  which only :class:`Module` and :class:`Node` entries override).

As dictionary keys, a module object means :class:`Module`, a function :class:`Function`, and
a string the module of that dotted name if the model has one, else the function of that name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .ops import kind_of, op_name


@dataclass(frozen=True)
class Site:
    """One recorded operation, as selectors see it."""

    op: nn.Module | Callable[..., Any]
    name: str | None  # dotted module name for module calls
    node_name: str  # the node's name in the captured graph ("add_3")
    fed_by_input: bool  # the first linear operation on the image's path
    op_name: str = ""  # canonical function name ("relu", "add"); a module's type name
    kind: str | None = None  # its kind in the operation table (:mod:`.ops`)

    @classmethod
    def of(cls, op: Any, name: str | None = None, node_name: str = "",
           fed_by_input: bool = False) -> Site:
        """The site of a module or function, its names and kind read from the table."""
        label = type(op).__name__ if isinstance(op, nn.Module) else op_name(op)
        return cls(op, name, node_name, fed_by_input, label, kind_of(op))


class Selector:
    """A predicate on a :class:`Site`."""

    #: explicit selectors name one operation; they take precedence over the first-layer
    #: slot and over selectors of types, functions and kinds
    explicit: bool = False

    def matches(self, site: Site) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Module(Selector):
    """One module of the model, by object or dotted name."""

    target: nn.Module | str
    explicit = True

    def matches(self, site: Site) -> bool:
        return site.op is self.target if isinstance(self.target, nn.Module) \
            else site.name == self.target


@dataclass(frozen=True)
class Node(Selector):
    """One node of the captured graph, by name (``"add_3"``; see the missing-rule message)."""

    name: str
    explicit = True

    def matches(self, site: Site) -> bool:
        return site.node_name == self.name


@dataclass(frozen=True)
class Function(Selector):
    """Every call of a torch function or tensor method, by object or canonical name."""

    target: Callable[..., Any] | str

    def matches(self, site: Site) -> bool:
        if isinstance(site.op, nn.Module):
            return False
        name = self.target if isinstance(self.target, str) else op_name(self.target)
        return self.target is site.op or name == site.op_name


@dataclass(frozen=True)
class Kind(Selector):
    """Operations of one kind of the operation table (:data:`.ops.KINDS_BY_NAME`)."""

    kind: str

    def matches(self, site: Site) -> bool:
        return site.kind == self.kind


@dataclass(frozen=True)
class FedByInput(Selector):
    """The first linear operation on the image's path (whatever routing, element-wise or
    affine operations sit in front of it), optionally only of module ``types``."""

    types: tuple[type, ...] = ()

    def matches(self, site: Site) -> bool:
        return site.fed_by_input and (not self.types or isinstance(site.op, self.types))


@dataclass(frozen=True)
class Type(Selector):
    """Modules that are instances of ``types``."""

    types: tuple[type, ...]

    def matches(self, site: Site) -> bool:
        return isinstance(site.op, self.types)


@dataclass(frozen=True)
class AnyOf(Selector):
    """Any of several selectors (a tuple key)."""

    selectors: tuple[Selector, ...]

    @property
    def explicit(self) -> bool:  # type: ignore[override]
        return all(s.explicit for s in self.selectors)

    def matches(self, site: Site) -> bool:
        return any(s.matches(site) for s in self.selectors)


def as_selector(key: Any, module_names: set[str] | None = None) -> Selector:
    """A rule map key as a typed selector (module docstring); ``module_names``: the model's,
    to read a string as a module name where the model has one."""
    if isinstance(key, Selector):
        return key
    if isinstance(key, tuple):
        parts = tuple(as_selector(k, module_names) for k in key)
        types = tuple(t for p in parts if isinstance(p, Type) for t in p.types)
        return Type(types) if len(types) == len(key) else AnyOf(parts)
    if isinstance(key, type):
        return Type((key,))
    if isinstance(key, nn.Module):
        return Module(key)
    if isinstance(key, str):
        return Module(key) if module_names is not None and key in module_names \
            else Function(key)
    if callable(key):
        return Function(key)
    raise TypeError(f"cannot select operations by {key!r}: use a module type, a module, a "
                    "function, a name, or a selector (Module, Function, Node, Kind, FedByInput)")
