r"""Gradient-based CAM weightings. With A the CAM layer's output, g = dy_c/dA (y_c the logit):

- Grad-CAM:    E_k = w_k A_k,  w_k = mean_ij g_k(i, j)            (Captum's ``LayerGradCam``)
- Grad-CAM++:  E_k = w_k A_k,  w_k = \sum_ij a_k(i,j) relu(g_k(i,j)),
               a_k(i,j) = g^2 / (2 g^2 + (\sum_ab A_k(a,b)) g^3)  (0 where the denominator is 0;
               pytorch-grad-cam adds 1e-6 to it instead)
- XGrad-CAM:   E_k = w_k A_k,  w_k = \sum_ij g_k A_k / \sum_ij A_k  (0 where the sum is 0;
               pytorch-grad-cam adds 1e-7 to it)
- Layer-CAM:   E_k(i,j) = relu(g_k(i,j)) A_k(i,j)  (pixel-wise weights)
- HiResCAM:    E_k(i,j) = g_k(i,j) A_k(i,j)  (element-wise gradient times activation; its sum
               over channels is Draelos & Carin's map, pytorch-grad-cam's ``HiResCAM``)

Each is a :class:`GradientWeighting`: its equation ``components(A, g)`` is all it defines; FG-CAM
feeds it the activation and gradient of its own recorded forward pass (one forward and one
backward in all), a plain CAM those of one pass of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..arguments import TargetType
from ..propagation.core import safe_divide
from ..propagation.tokens import on_grid
from .protocol import CamRecord


class GradientWeighting:
    """A CAM weighting computed from A and g = dy_c/dA alone."""

    requires_target = True
    requires_gradient = True

    def __init__(self, name: str, equation: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.name = name
        self.components = equation

    def weigh(self, forward_func: Callable[..., Tensor], cam: CamRecord,
              inputs: tuple[Tensor, ...], target: TargetType,
              additional_forward_args: tuple[Any, ...] | None) -> Tensor:
        """The equation on A and dy/dA, for a layer of any layout (a transformer's token
        grid: computed on the channels-first grid, returned in the layer's layout)."""
        return on_grid(self.components, inputs[0], cam.activation, cam.gradient,
                       grids=cam.grids)

    def __repr__(self) -> str:
        return f"GradientWeighting({self.name!r})"


def _spatial(t: Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.dim()))


def _grad_cam(a: Tensor, g: Tensor) -> Tensor:
    return g.mean(dim=_spatial(g), keepdim=True) * a


def _grad_cam_plus_plus(a: Tensor, g: Tensor) -> Tensor:
    dims = _spatial(g)
    g2 = g.pow(2)
    alpha = safe_divide(g2, 2 * g2 + a.sum(dim=dims, keepdim=True) * g.pow(3))
    return (alpha * g.clamp(min=0)).sum(dim=dims, keepdim=True) * a


def _xgrad_cam(a: Tensor, g: Tensor) -> Tensor:
    dims = _spatial(g)
    return safe_divide((g * a).sum(dim=dims, keepdim=True), a.sum(dim=dims, keepdim=True)) * a


def _layer_cam(a: Tensor, g: Tensor) -> Tensor:
    return g.clamp(min=0) * a


def _hires_cam(a: Tensor, g: Tensor) -> Tensor:
    return g * a


grad_cam = GradientWeighting("grad_cam", _grad_cam)
grad_cam_plus_plus = GradientWeighting("grad_cam++", _grad_cam_plus_plus)
xgrad_cam = GradientWeighting("xgrad_cam", _xgrad_cam)
layer_cam = GradientWeighting("layer_cam", _layer_cam)
hires_cam = GradientWeighting("hires_cam", _hires_cam)
