r"""Kernels: the linear algebra behind the linear-layer rules, and its memory layout.

Rules state their equations in terms of :func:`linear_terms`,

    R_i = \sum_k x^k_i \sum_j w^k_ij R_j / z_j ,   z_j = \sum_k \sum_i x^k_i w^k_ij ,

and this module decides how it runs: which terms run as one convolution, which buffers are
shared, and the memory layout (image tensors move channels-last, the layout convolution
kernels run fastest in; only the layout changes, never the values).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .core import safe_divide, stabilise, vector_jacobian
from .views import fully_connected, layer_of, linear_layer


def transpose_linear(module: nn.Module, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
    """w^T s: the transposed convolution (or matrix product) back to the shape of ``x``.

    Calls the convolution's backward kernel directly (what autograd would run, without
    building a graph); ``x`` only provides the shape and layout.
    """
    layer = layer_of(module)
    if fully_connected(layer):
        return s @ weight
    if isinstance(layer.padding, str):  # "same"/"valid": let autograd work out the padding
        f = linear_layer(layer)
        (grad,) = vector_jacobian(lambda a: f(a, weight, None), [x], lambda _: s)
        return grad
    dims = weight.dim() - 2
    return torch.ops.aten.convolution_backward(
        s, x, weight, None, list(layer.stride), list(layer.padding), list(layer.dilation),
        False, [0] * dims, layer.groups, [True, False, False])[0]


def linear_terms(module: nn.Module, xs: list[Tensor], weights: list[Tensor],
                 relevance: Tensor, epsilon: float = 0.0, joined: Tensor | None = None,
                 dropped: list[Tensor] | None = None) -> Tensor:
    r"""R_i = \sum_k x^k_i \sum_j w^k_ij R_j / z_j  with  z_j = \sum_k \sum_i x^k_i w^k_ij.

    The building block of the z^+ and z^B rules (no bias). With ``groups == 1`` the K
    transposed convolutions run as one, with the weights concatenated along the input
    channels; the K forward terms run as one convolution over the channel-concatenated inputs
    when the layer does not shrink the channels, else as K convolutions whose outputs are
    added (whichever moves less memory). With ``epsilon`` > 0 the denominator is
    z_j + epsilon sign(z_j) instead of "0 where z_j = 0". ``joined``: the inputs concatenated
    along the summed axis (channels, or features), if the caller has them already (``xs``
    then being its chunks, see :func:`sign_parts`). ``dropped``: a list that receives the
    relevance of the outputs with z_j = 0, if any.
    """
    layer = layer_of(module)
    is_conv = not fully_connected(layer)
    if relevance.dim() == 4 and is_conv and joined is None:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    if relevance.dim() == 4 and is_conv:
        relevance = relevance.contiguous(memory_format=torch.channels_last)
    f = linear_layer(module)
    dim = 1 if is_conv else -1  # the axis a layer sums over: channels, or features
    joint = len(xs) > 1 and getattr(layer, "groups", 1) == 1

    with torch.no_grad():
        if _concatenates_inputs(layer, weights):
            z = f(torch.cat(xs, dim=dim) if joined is None else joined,
                  torch.cat(weights, dim=1), None)
        else:
            z = f(xs[0], weights[0], None)
            for x, w in zip(xs[1:], weights[1:], strict=True):
                z += f(x, w, None)
        if dropped is not None and not bool(z.all()):  # some z_j == 0
            leftover = relevance * (z == 0)
            if bool(leftover.any()):
                dropped.append(leftover)
        s = (relevance / stabilise(z, epsilon) if epsilon
             else safe_divide(relevance, z, out=z))
        if joint:
            if joined is not None:
                x_all = joined
            else:  # only the shape and layout matter (a matrix product needs neither)
                x_all = _empty_like_cat(xs, dim) if is_conv else xs[0]
            grads = transpose_linear(module, s, torch.cat(weights, dim=1), x_all).chunk(
                len(xs), dim=dim)
            r = xs[0] * grads[0]
        else:
            grads = [transpose_linear(module, s, w, x) for x, w in zip(xs, weights, strict=True)]
            r = grads[0].mul_(xs[0])
        for x, g in zip(xs[1:], grads[1:], strict=True):
            r.addcmul_(x, g)
        return r


def sign_parts(module: nn.Module, x: Tensor, weight: Tensor
               ) -> tuple[list[Tensor], Tensor | None]:
    """[x^+, x^-] (or [x] when x >= 0) in the layout :func:`linear_terms` runs in, and, where
    it runs the two terms as one convolution, the buffer holding both (x^+ and x^- are
    written straight into it: no separate copies); ``weight``: the layer's."""
    layer = layer_of(module)
    fc = fully_connected(layer)
    image = x.dim() == 4 and not fc
    layout = torch.channels_last if image else torch.contiguous_format
    if not bool(x.amin() < 0):  # Tensor.min() is ~20x slower channels-last
        return [x.contiguous(memory_format=layout)], None
    joined = None
    if _concatenates_inputs(layer, [weight, weight]):
        dim = -1 if fc else 1  # the axis the layer sums over
        joined = _empty_like_cat([x, x], dim=dim, layout=layout)
        parts = list(joined.chunk(2, dim=dim))
    else:
        parts = [torch.empty_like(x, memory_format=layout) for _ in range(2)]
    torch.clamp(x, min=0, out=parts[0])
    torch.clamp(x, max=0, out=parts[1])
    return parts, joined


def _concatenates_inputs(layer: nn.Module, weights: list[Tensor]) -> bool:
    """Whether linear_terms runs the forward terms as one convolution over concatenated
    inputs (K > 1 terms, groups == 1, and the layer does not shrink the channels; otherwise
    adding K outputs moves less memory than concatenating K inputs)."""
    return (len(weights) > 1 and getattr(layer, "groups", 1) == 1
            and weights[0].shape[0] >= weights[0].shape[1])


def _empty_like_cat(xs: list[Tensor], dim: int,
                    layout: torch.memory_format | None = None) -> Tensor:
    """An uninitialised tensor with the shape of ``torch.cat(xs, dim)``, in ``layout``
    (default: channels-last if the first of ``xs`` is a channels-last image batch)."""
    shape = list(xs[0].shape)
    shape[dim] = sum(x.shape[dim] for x in xs)
    if layout is None:
        four_d_channels_last = xs[0].dim() == 4 and xs[0].is_contiguous(
            memory_format=torch.channels_last)
        layout = torch.channels_last if four_d_channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=xs[0].dtype, device=xs[0].device, memory_format=layout)
