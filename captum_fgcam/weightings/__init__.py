"""CAM weightings: per-channel components E_k = w_k * A_k at the CAM layer.

A weighting follows the :class:`Weighting` protocol: a callable ``(forward_func, layer,
inputs, target, additional_forward_args) -> Tensor`` returning components with the shape of
``layer``'s output (N x C x h x w), with a ``requires_target`` flag (a plain function without
it is taken not to need one). It may run ``forward_func`` any number of times, on any inputs
(baselines, noise, masked copies): FG-CAM records the forward pass of the real input itself.
The same weighting serves the plain CAM (sum over channels) and its FG version (propagated).
Built-in weightings also let FG-CAM reuse its recorded pass: a :class:`GradientWeighting` is
an equation of A and dy/dA; Score-CAM's ``from_activation`` takes the recorded A.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from captum._utils.typing import TargetType
from torch import Tensor, nn

from .conceptor import ConceptorWeighting
from .gradient import (
    GradientWeighting,
    grad_cam,
    grad_cam_plus_plus,
    hires_cam,
    layer_cam,
    xgrad_cam,
)
from .score import ScoreCamWeighting


@runtime_checkable
class Weighting(Protocol):
    """What FG-CAM and the plain CAMs call to get components."""

    requires_target: bool

    def __call__(self, forward_func: Any, layer: nn.Module, inputs: tuple[Tensor, ...],
                 target: TargetType, additional_forward_args: Any = None) -> Tensor: ...


WEIGHTINGS: dict[str, Any] = {
    "grad_cam": lambda: grad_cam,
    "grad_cam++": lambda: grad_cam_plus_plus,
    "xgrad_cam": lambda: xgrad_cam,
    "layer_cam": lambda: layer_cam,
    "hires_cam": lambda: hires_cam,
    "score_cam": ScoreCamWeighting,
    "conceptor": ConceptorWeighting,
}


def get_weighting(weighting: str | Any) -> Any:
    """A weighting by name (one of :data:`WEIGHTINGS`) or the callable itself."""
    if callable(weighting):
        return weighting
    if weighting in WEIGHTINGS:
        return WEIGHTINGS[weighting]()
    raise ValueError(
        f"unknown CAM weighting {weighting!r}; choose one of {sorted(WEIGHTINGS)} or pass a "
        "callable (forward_func, layer, inputs, target, additional_forward_args) -> components")


def requires_target(weighting: Any) -> bool:
    """The weighting's ``requires_target`` (False for a plain function without it)."""
    return bool(getattr(weighting, "requires_target", False))


__all__ = ["ConceptorWeighting", "GradientWeighting", "ScoreCamWeighting", "WEIGHTINGS",
           "Weighting", "get_weighting", "grad_cam", "grad_cam_plus_plus", "hires_cam",
           "layer_cam", "requires_target", "xgrad_cam"]
