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

Each is a :class:`GradientWeighting`: its equation ``components(A, g)`` is all it defines, so
FG-CAM can feed it the activation and gradient of its own recorded forward pass (one forward
and one backward in all), while plain CAMs call it like any weighting.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from captum._utils.gradient import compute_layer_gradients_and_eval
from captum._utils.typing import TargetType
from torch import Tensor, nn

from ..propagation.core import safe_divide
from ..propagation.tokens import on_grid


class GradientWeighting:
    """A CAM weighting computed from A and g = dy_c/dA alone."""

    requires_target = True

    def __init__(self, name: str, equation: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.name = name
        self.components = equation

    def __call__(self, forward_func: Callable[..., Any], layer: nn.Module,
                 inputs: tuple[Tensor, ...], target: TargetType,
                 additional_forward_args: Any = None) -> Tensor:
        grads, acts = compute_layer_gradients_and_eval(
            forward_func, layer, inputs, target, additional_forward_args)
        return self.in_layout(acts[0].detach(), grads[0].detach(), inputs[0])

    def in_layout(self, a: Tensor, g: Tensor, image: Tensor,
                  grids: Collection[tuple[int, int]] = ()) -> Tensor:
        """The components for a layer of any layout (a transformer's token grid: computed on
        the channels-first grid, returned in the layer's layout; ``grids``: the model's
        spatial sizes, see :mod:`..propagation.tokens`)."""
        return on_grid(self.components, image, a, g, grids=grids)

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
