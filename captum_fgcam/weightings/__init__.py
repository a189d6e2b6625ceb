"""CAM weightings: per-channel components E_k = w_k * A_k at the CAM layer.

A weighting follows the :class:`Weighting` protocol (:mod:`.protocol`): it receives the CAM
layer's output A for the real input (and dy/dA when it ``requires_gradient``) and a forward
function, and returns components with A's shape (N x C x h x w). The same weighting serves the
plain CAM (sum over channels) and its FG version (propagated); FG-CAM hands it the values of the
forward pass it records anyway. A :class:`GradientWeighting` is an equation of A and dy/dA;
Score-CAM masks the input with A; a custom weighting may be a plain function (see
:class:`FunctionWeighting`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .conceptor import ConceptorWeighting
from .gradient import (
    GradientWeighting,
    grad_cam,
    grad_cam_plus_plus,
    hires_cam,
    layer_cam,
    xgrad_cam,
)
from .protocol import CamRecord, FunctionWeighting, Weighting, components_at
from .score import ScoreCamWeighting

WEIGHTINGS: dict[str, Callable[[], Weighting]] = {
    "grad_cam": lambda: grad_cam,
    "grad_cam++": lambda: grad_cam_plus_plus,
    "xgrad_cam": lambda: xgrad_cam,
    "layer_cam": lambda: layer_cam,
    "hires_cam": lambda: hires_cam,
    "score_cam": ScoreCamWeighting,
    "conceptor": ConceptorWeighting,
}


def get_weighting(weighting: str | Weighting | Callable[..., Any]) -> Weighting:
    """A weighting by name (one of :data:`WEIGHTINGS`), a :class:`Weighting` as is, or a
    function ``(forward_func, layer, inputs, target, additional_forward_args) -> components``
    wrapped in a :class:`FunctionWeighting`."""
    if isinstance(weighting, Weighting):
        return weighting
    if callable(weighting):
        return FunctionWeighting(weighting)
    if weighting in WEIGHTINGS:
        return WEIGHTINGS[weighting]()
    raise ValueError(
        f"unknown CAM weighting {weighting!r}; choose one of {sorted(WEIGHTINGS)} or pass a "
        "callable (forward_func, layer, inputs, target, additional_forward_args) -> components")


__all__ = ["CamRecord", "ConceptorWeighting", "FunctionWeighting", "GradientWeighting",
           "ScoreCamWeighting", "WEIGHTINGS", "Weighting", "components_at", "get_weighting",
           "grad_cam", "grad_cam_plus_plus", "hires_cam", "layer_cam", "xgrad_cam"]
