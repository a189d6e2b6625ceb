r"""Conceptor-CAM: our reading of the abstract of Qian et al., "Conceptor Learning for Class
Activation Mapping" (2022). Only the abstract is public (no code, no method section), so every
choice below is ours, stated so that it can be judged; it is not the authors' method.

The abstract: the weighted channel average of CAM is replaced by a *conceptor* (Jaeger's
C = R (R + \alpha^{-2} I)^{-1} over channel statistics R), and positive and pseudo-negative
evidence are combined with conceptor Boolean operations (NOT C = I - C, AND, OR).

Our choices, per image, with A the CAM layer's activations as a C x P matrix (P positions),
g_c = dy_c/dA and w_c = mean_p g_c (Grad-CAM's channel weights):

1. **Positive evidence:** the channels' activations weighted by the target's positive
   weights, X+ = diag(relu(w_t)) A; its correlation R+ = X+ X+^T / P.
2. **Pseudo-negative evidence:** the same for the strongest competing class
   k = argmax_{c != t} y_c (the class the model would pick without the target):
   X- = diag(relu(w_k)) A, R- = X- X-^T / P.
3. **Aperture:** each R is divided by its mean eigenvalue tr(R) / C before
   C = R (R + \alpha^{-2} I)^{-1}, so \alpha is scale-free; default \alpha = 1 (a direction
   with the mean energy gets 0.5).
4. **Combination:** C = C+ AND NOT C-, the feature directions that carry the target's
   evidence and not the competitor's, with NOT C = I - C and Jaeger's
   C AND B = (C^{-1} + B^{-1} - I)^{-1} (computed with C + \delta I, \delta = 1e-6, for
   singular conceptors; in float64).
5. **Read-out:** components E = diag(w_t) C A (C x P, reshaped to A's shape): the Grad-CAM
   weights applied to the conceptor-filtered features; the map is sum_k E_k. With no
   competing evidence and \alpha -> infinity, C -> I and this is Grad-CAM.

As an FG-CAM weighting the components are propagated like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..arguments import TargetType, layer_gradient
from ..propagation.tokens import on_grid
from .protocol import CamRecord

DELTA = 1e-6


def conceptor(r: Tensor, aperture: float) -> Tensor:
    """C = R (R + alpha^-2 I)^-1 for (batched) symmetric positive semi-definite R."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    return torch.linalg.solve(r + aperture ** -2 * eye, r)  # R and (R + a I) commute


def conceptor_not(c: Tensor) -> Tensor:
    """NOT C = I - C."""
    return torch.eye(c.shape[-1], dtype=c.dtype, device=c.device) - c


def conceptor_and(c: Tensor, b: Tensor) -> Tensor:
    """C AND B = (C^-1 + B^-1 - I)^-1 (Jaeger 2014), with C + delta I and B + delta I."""
    eye = torch.eye(c.shape[-1], dtype=c.dtype, device=c.device)
    inverse = torch.linalg.inv(c + DELTA * eye) + torch.linalg.inv(b + DELTA * eye) - eye
    return torch.linalg.inv(inverse)


def _correlation(x: Tensor) -> Tensor:
    """X X^T / P, divided by its mean eigenvalue (0 stays 0)."""
    r = x @ x.transpose(-1, -2) / x.shape[-1]
    scale = torch.diagonal(r, dim1=-2, dim2=-1).mean(dim=-1, keepdim=True)[..., None]
    return torch.where(scale > 0, r / scale.clamp(min=1e-300), r)


class ConceptorWeighting:
    """Conceptor-CAM components (module docstring); ``aperture`` is alpha."""

    requires_target = True
    requires_gradient = True

    def __init__(self, aperture: float = 1.0) -> None:
        if aperture <= 0:
            raise ValueError(f"aperture must be positive; got {aperture}")
        self.aperture = aperture

    def weigh(self, forward_func: Callable[..., Tensor], cam: CamRecord,
              inputs: tuple[Tensor, ...], target: TargetType,
              additional_forward_args: tuple[Any, ...] | None) -> Tensor:
        """The components from A and the target's gradient (recorded) and the strongest
        competitor's (one more forward pass for the scores, one with a backward pass)."""
        with torch.no_grad():
            scores = forward_func(*inputs, *(additional_forward_args or ()))
        n = scores.shape[0]
        chosen = torch.as_tensor(target, device=scores.device).reshape(-1).expand(n)
        others = scores.detach().clone()
        others[torch.arange(n), chosen] = -torch.inf
        competitor = others.argmax(dim=1)
        _, rival = layer_gradient(forward_func, cam.layer, inputs, competitor,
                                  additional_forward_args)
        return on_grid(self.components, inputs[0], cam.activation, cam.gradient, rival)

    def components(self, a: Tensor, g_target: Tensor, g_rival: Tensor) -> Tensor:
        """E = diag(w_t) (C+ AND NOT C-) A for activations ``a`` (N x C x ...) and the
        gradients of the target's and the competitor's scores."""
        n, c = a.shape[:2]
        flat = a.reshape(n, c, -1).double()
        w_target = g_target.reshape(n, c, -1).double().mean(dim=2)
        w_rival = g_rival.reshape(n, c, -1).double().mean(dim=2)
        positive = conceptor(_correlation(w_target.clamp(min=0)[..., None] * flat), self.aperture)
        negative = conceptor(_correlation(w_rival.clamp(min=0)[..., None] * flat), self.aperture)
        combined = conceptor_and(positive, conceptor_not(negative))
        e = w_target[..., None] * (combined @ flat)
        return e.to(a.dtype).reshape(a.shape)
