r"""Gradient-based CAM weightings. With A the CAM layer's output, g = dy_c/dA (y_c the logit):

- Grad-CAM:    E_k = w_k A_k,  w_k = mean_ij g_k(i, j)            (Captum's ``LayerGradCam``)
- Grad-CAM++:  E_k = w_k A_k,  w_k = \sum_ij a_k(i,j) relu(g_k(i,j)),
               a_k(i,j) = g^2 / (2 g^2 + (\sum_ab A_k(a,b)) g^3)  (0 where the denominator is 0;
               pytorch-grad-cam adds 1e-6 to it instead)
- XGrad-CAM:   E_k = w_k A_k,  w_k = \sum_ij g_k A_k / \sum_ij A_k  (0 where the sum is 0;
               pytorch-grad-cam adds 1e-7 to it)
- Layer-CAM:   E_k(i,j) = relu(g_k(i,j)) A_k(i,j)  (pixel-wise weights)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from captum._utils.gradient import compute_layer_gradients_and_eval
from captum._utils.typing import TargetType
from captum.attr import LayerGradCam
from torch import Tensor, nn

from ..propagation.rules import safe_divide


def grad_cam(forward_func: Callable[..., Any], layer: nn.Module, inputs: tuple[Tensor, ...],
             target: TargetType, additional_forward_args: Any = None) -> Tensor:
    """Grad-CAM components from Captum's ``LayerGradCam`` (``attr_dim_summation=False``)."""
    components = LayerGradCam(forward_func, layer).attribute(
        inputs, target=target, additional_forward_args=additional_forward_args,
        attr_dim_summation=False)
    return components.detach()


def _gradients_and_activations(forward_func: Callable[..., Any], layer: nn.Module,
                               inputs: tuple[Tensor, ...], target: TargetType,
                               additional_forward_args: Any) -> tuple[Tensor, Tensor]:
    grads, acts = compute_layer_gradients_and_eval(
        forward_func, layer, inputs, target, additional_forward_args)
    return grads[0].detach(), acts[0].detach()


def grad_cam_plus_plus(forward_func: Callable[..., Any], layer: nn.Module,
                       inputs: tuple[Tensor, ...], target: TargetType,
                       additional_forward_args: Any = None) -> Tensor:
    """Grad-CAM++ components (the usual closed form with exponential output)."""
    g, a = _gradients_and_activations(forward_func, layer, inputs, target,
                                      additional_forward_args)
    dims = tuple(range(2, g.dim()))
    g2 = g.pow(2)
    alpha = safe_divide(g2, 2 * g2 + a.sum(dim=dims, keepdim=True) * g.pow(3))
    weights = (alpha * g.clamp(min=0)).sum(dim=dims, keepdim=True)
    return weights * a


def xgrad_cam(forward_func: Callable[..., Any], layer: nn.Module, inputs: tuple[Tensor, ...],
              target: TargetType, additional_forward_args: Any = None) -> Tensor:
    """XGrad-CAM components."""
    g, a = _gradients_and_activations(forward_func, layer, inputs, target,
                                      additional_forward_args)
    dims = tuple(range(2, g.dim()))
    weights = safe_divide((g * a).sum(dim=dims, keepdim=True), a.sum(dim=dims, keepdim=True))
    return weights * a


def layer_cam(forward_func: Callable[..., Any], layer: nn.Module, inputs: tuple[Tensor, ...],
              target: TargetType, additional_forward_args: Any = None) -> Tensor:
    """Layer-CAM components (pixel-wise positive-gradient weights)."""
    g, a = _gradients_and_activations(forward_func, layer, inputs, target,
                                      additional_forward_args)
    return g.clamp(min=0) * a
