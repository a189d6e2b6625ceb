"""CAM weightings: per-channel components E_k = w_k * A_k at the CAM layer.

A weighting is any callable ``(forward_func, layer, inputs, target, additional_forward_args)
-> Tensor`` returning components with the shape of ``layer``'s output (N x C x h x w). The
same weighting serves the plain CAM (sum over channels) and its FG version (propagated).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .gradient import grad_cam, grad_cam_plus_plus, layer_cam, xgrad_cam
from .score import ScoreCamWeighting

Weighting = Callable[..., Any]

WEIGHTINGS: dict[str, Callable[[], Weighting]] = {
    "grad_cam": lambda: grad_cam,
    "grad_cam++": lambda: grad_cam_plus_plus,
    "xgrad_cam": lambda: xgrad_cam,
    "layer_cam": lambda: layer_cam,
    "score_cam": ScoreCamWeighting,
}


def get_weighting(weighting: str | Weighting) -> Weighting:
    """A weighting by name (one of :data:`WEIGHTINGS`) or the callable itself."""
    if callable(weighting):
        return weighting
    if weighting in WEIGHTINGS:
        return WEIGHTINGS[weighting]()
    raise ValueError(
        f"unknown CAM weighting {weighting!r}; choose one of {sorted(WEIGHTINGS)} or pass a "
        "callable (forward_func, layer, inputs, target, additional_forward_args) -> components")


__all__ = ["ScoreCamWeighting", "WEIGHTINGS", "get_weighting", "grad_cam", "grad_cam_plus_plus",
           "layer_cam", "xgrad_cam"]
