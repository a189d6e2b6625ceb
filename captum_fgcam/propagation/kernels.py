r"""Kernels: the linear algebra behind the linear-layer rules, and its memory layout.

Rules state their equations in terms of :func:`linear_terms`,

    R_i = \sum_k x^k_i \sum_j w^k_ij R_j / z_j ,   z_j = \sum_k \sum_i x^k_i w^k_ij ,

and this module decides how it runs: which terms run as one convolution, which buffers are
shared, and the memory layout (image tensors move channels-last, the layout convolution
kernels run fastest in; only the layout changes, never the values).
"""

from __future__ import annotations

from collections.abc import Callable

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
                 dropped: list[Tensor] | None = None, opposite: bool = False) -> Tensor:
    r"""R_i = \sum_k x^k_i \sum_j w^k_ij R_j / z_j  with  z_j = \sum_k \sum_i x^k_i w^k_ij.

    The building block of the z^+ and z^B rules (no bias). With ``groups == 1`` the K
    transposed convolutions run as one, with the weights concatenated along the input
    channels; the K forward terms run as one convolution over the channel-concatenated inputs
    when the layer does not shrink the channels, else as K convolutions whose outputs are
    added (whichever moves less memory). With ``epsilon`` > 0 the denominator is
    z_j + epsilon sign(z_j) instead of "0 where z_j = 0". ``joined``: the inputs concatenated
    along the summed axis (channels, or features), if the caller has them already (``xs``
    then being its chunks, see :func:`sign_parts`). ``dropped``: a list that receives the
    relevance of the outputs with z_j = 0, if any. ``opposite`` (``xs`` = [x^+, x^-] and
    ``weights`` = [w^+, w^-]): where z_j = 0, R_j goes to the opposite-sign terms instead
    (:func:`_opposite_where_zero`), and ``dropped`` receives what is left where those are 0
    too.
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
        z = _forward_terms(layer, f, xs, weights, joined)
        if dropped is not None and not bool(z.all()):  # some z_j == 0
            leftover = relevance * (z == 0)
            if bool(leftover.any()):
                if opposite:
                    r, left = _opposite_where_zero(module, f, xs, relevance, z)
                    if left is not None:
                        dropped.append(left)
                    return r
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


def _opposite_where_zero(module: nn.Module, f: Callable[[Tensor, Tensor, Tensor | None], Tensor],
                         xs: list[Tensor], relevance: Tensor, z: Tensor
                         ) -> tuple[Tensor, Tensor | None]:
    r"""The sign-aware z^+ terms (``xs`` = [x^+, x^-], z from w^+ and w^-) with R_j of the
    outputs where z_j = 0 given to the opposite-sign terms:

    s_j = R_j / z_j (z_j != 0), s'_j = R_j / z'_j (z_j = 0), where z'_j = \sum_i x_i w_ij
    (every same-sign product being 0 there), and
    R_i = x_i^+ (w^{+T} s + w^{-T} s')_i + x_i^- (w^{-T} s + w^{+T} s')_i
        = [x_i (w^T (s + s'))_i + |x_i| (|w|^T (s - s'))_i] / 2 :
    two transposed convolutions, as many as without the fallback. Returns R and the relevance
    left where z'_j = 0 too (None if none).
    """
    w = module.weight.detach()
    zero = z == 0
    x = xs[0] + xs[1]
    s = safe_divide(relevance, z, out=z)
    opposite = torch.where(zero, safe_divide(relevance, f(x, w, None)), 0.0)
    left = relevance * (zero & (opposite == 0))
    s_sum, s_diff = s + opposite, s.sub_(opposite)
    r = transpose_linear(module, s_sum, w, x).mul_(x)
    r.addcmul_(xs[0] - xs[1], transpose_linear(module, s_diff, w.abs(), x))
    return r.mul_(0.5), (left if bool(left.any()) else None)


def _forward_terms(layer: nn.Module, f: Callable[[Tensor, Tensor, Tensor | None], Tensor],
                   xs: list[Tensor], weights: list[Tensor], joined: Tensor | None) -> Tensor:
    r"""z = \sum_k f(x^k, w^k): one convolution over the concatenated inputs where
    :func:`_concatenates_inputs`, else K added."""
    if _concatenates_inputs(layer, weights):
        dim = 1 if not fully_connected(layer) else -1
        return f(torch.cat(xs, dim=dim) if joined is None else joined,
                 torch.cat(weights, dim=1), None)
    z = f(xs[0], weights[0], None)
    for x, w in zip(xs[1:], weights[1:], strict=True):
        z += f(x, w, None)
    return z


def sign_parts(module: nn.Module, x: Tensor, weight: Tensor
               ) -> tuple[list[Tensor], Tensor | None]:
    """[x^+, x^-] (or [x] when x >= 0) in the layout :func:`linear_terms` runs in, and, where
    it runs the two terms as one convolution, the buffer holding both (x^+ and x^- are
    written straight into it: no separate copies); ``weight``: the layer's."""
    layer = layer_of(module)
    fc = fully_connected(layer)
    image = x.dim() == 4 and not fc
    layout = torch.channels_last if image else torch.contiguous_format
    if not bool(x.min() < 0):
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
