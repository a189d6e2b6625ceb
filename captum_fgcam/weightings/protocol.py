"""The weighting protocol: one call, whoever records the CAM layer.

A :class:`Weighting` receives the CAM layer's output A for the real input (a
:class:`CamRecord`; with ``requires_gradient``, also g = dy/dA of the targets' scores) and a
forward function returning the class scores, and returns components E (A's shape). FG-CAM fills
the record from the forward pass it records anyway; a plain CAM from one pass of its own
(:func:`components_at`). A custom weighting written as a function
``(forward_func, layer, inputs, target, additional_forward_args) -> components`` is wrapped in
a :class:`FunctionWeighting`: it runs the model itself and hooks ``layer``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from captum.attr import LayerActivation
from torch import Tensor, nn

from ..arguments import TargetType, layer_gradient


@dataclass(frozen=True)
class CamRecord:
    """The CAM layer as a weighting sees it, for the real input."""

    layer: nn.Module  #: the model's own module: hook it to read its output for other inputs
    activation: Tensor  #: A, its output (detached, in the layer's layout)
    gradient: Tensor | None = None  #: dy/dA, for weightings with ``requires_gradient``
    grids: Collection[tuple[int, int]] = ()  #: the model's spatial sizes (token layouts)


@runtime_checkable
class Weighting(Protocol):
    """What FG-CAM and the plain CAMs call to get components."""

    requires_target: bool  #: a missing target is an error for a model with several outputs
    requires_gradient: bool  #: the record must hold dy/dA

    def weigh(self, forward_func: Callable[..., Tensor], cam: CamRecord,
              inputs: tuple[Tensor, ...], target: TargetType,
              additional_forward_args: tuple[Any, ...] | None) -> Tensor: ...


class FunctionWeighting:
    """A weighting written as a function ``(forward_func, layer, inputs, target,
    additional_forward_args) -> components`` that runs ``forward_func`` itself (any number of
    times, on any inputs) and reads the CAM layer by hooking ``layer``; its
    ``requires_target`` attribute, if any, is kept (default False)."""

    requires_gradient = False

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.requires_target = bool(getattr(function, "requires_target", False))

    def weigh(self, forward_func: Callable[..., Tensor], cam: CamRecord,
              inputs: tuple[Tensor, ...], target: TargetType,
              additional_forward_args: tuple[Any, ...] | None) -> Any:
        return self.function(forward_func, cam.layer, inputs, target, additional_forward_args)

    def __repr__(self) -> str:
        return repr(self.function)


def components_at(weighting: Weighting, forward_func: Callable[..., Tensor], layer: nn.Module,
                  inputs: tuple[Tensor, ...], target: TargetType,
                  additional_forward_args: tuple[Any, ...] | None,
                  check: Callable[[CamRecord], None] = lambda cam: None) -> Tensor:
    """The components of ``weighting`` at ``layer`` with nothing recorded yet (plain CAMs): A,
    and dy/dA where the weighting needs it, from one pass of ``forward_func``; ``check`` sees
    them before the weighting runs."""
    if weighting.requires_gradient:
        activation, gradient = layer_gradient(forward_func, layer, inputs, target,
                                              additional_forward_args)
    else:
        activation, gradient = LayerActivation(forward_func, layer).attribute(
            inputs, additional_forward_args=additional_forward_args).detach(), None
    cam = CamRecord(layer, activation, gradient)
    check(cam)
    return weighting.weigh(forward_func, cam, inputs, target, additional_forward_args)
