r"""Relevance rules: *how* relevance at an operation's output moves to its inputs.

Notation: x = the operation's input (i indexes it), R = relevance at its output (j indexes it),
w = the weights of a linear layer (convolution or fully connected), w^+ = max(0, w),
w^- = min(0, w), c^+ / c^- likewise for contributions. A quotient whose denominator is exactly
0 is 0 (no epsilon) unless a rule says otherwise.

Each rule states its equation; the machinery it is written with lives elsewhere: the recorded
operation and the rule interface in :mod:`.core`, the linear algebra and memory layout in
:mod:`.kernels`, substituted parameters (BatchNorm folding, CLRP) in :mod:`.views`. A rule
never modifies the model: parameters are read, modified copies are built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .captum_lrp import CaptumLinearTerms
from .core import Call, Rule, safe_divide, stabilise, total, vector_jacobian
from .kernels import linear_terms, sign_parts
from .ops import op_name
from .views import LINEAR_LAYERS, LinearView, channel_subset, depthwise_channels, linear_layer


class PassRule(Rule):
    r"""Relevance passes unchanged: R_i = R_i (reshaped to the input's shape).

    For element-wise operations (ReLU, BatchNorm as in the reference, Dropout) and reshapes
    (flatten, view). Conserves relevance exactly.
    """

    reads_values = False

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        return call.to_first_input(relevance.reshape(call.x.shape))


class RoutingRule(Rule):
    r"""For operations that only move elements (concatenation, permutation, reshapes):
    each input element gets the relevance of the output element it became, R_in = J^T R
    (J is a 0/1 matrix). Conserves relevance exactly.
    """

    reads_values = False

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        tensors = [call.inputs[p] for p in call.tensor_positions()]
        return call.to_inputs(vector_jacobian(call.tensor_function(), tensors,
                                              lambda _: relevance))


class WinnerTakeAllRule(Rule):
    r"""Max pooling: each window's relevance goes to its arg-max input.

    R_i = \sum_j [i = argmax_{window j} x] R_j ; ties go where PyTorch's pooling puts the
    gradient. The reference's form x_i R_j / z_j is the same wherever z_j != 0; where the
    window's maximum z_j is 0 it is 0/0: ``conserve=True`` (default) passes R_j on to the
    arg-max (conserving relevance exactly), ``conserve=False`` drops it as the reference does.
    """

    def __init__(self, conserve: bool = True) -> None:
        self.conserve = conserve

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        scale = ((lambda z: relevance) if self.conserve
                 else (lambda z: torch.where(z == 0, 0, relevance)))
        (routed,) = vector_jacobian(call.function(), [call.x], scale)
        return call.to_first_input(routed)


class ZRule(Rule):
    r"""The z-rule for an operation that is linear in its tensor inputs (sums, pooling):

    z_j = \sum_i x_i w_ij ;  R_i = x_i \sum_j w_ij R_j / z_j ,
    with z_j + \epsilon sign(z_j) as denominator when ``epsilon`` > 0 (Zennit's ``Norm`` rule
    with its stabiliser 1e-6) and 0 where z_j = 0 otherwise. Conserves relevance where no
    z_j is 0 (epsilon = 0).
    """

    def __init__(self, epsilon: float = 0.0) -> None:
        self.epsilon = epsilon

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        tensors = [call.inputs[p] for p in call.tensor_positions()]
        scale = ((lambda z: relevance / stabilise(z, self.epsilon)) if self.epsilon
                 else (lambda z: safe_divide(relevance, z)))
        grads = vector_jacobian(call.tensor_function(), tensors, scale)
        return call.to_inputs([x * g for x, g in zip(tensors, grads, strict=True)])


class SignAwareZRule(Rule):
    r"""The sign-aware z-rule for operations that sum their inputs with non-negative
    weights (residual additions, average pooling, means, resampling):

    z_j = \sum_i c_ij with c_ij = w_ij x_i ;  R_i = \sum_j c_ij^{s_j} R_j / \sum_i' c_i'j^{s_j} ,
    where s_j = sign(z_j): an output's relevance goes to the contributions that share its
    sign, so a sum of large opposite terms never inflates relevance. Conserves relevance
    exactly wherever z_j != 0. Where z_j = 0 (an all-zero pooling window) ``fallback=True``
    (default) shares R_j by the weights, R_i = w_ij R_j / \sum_i' w_i'j, and
    ``fallback=False`` drops it (the reference).
    """

    def __init__(self, fallback: bool = True) -> None:
        self.fallback = fallback

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        tensors = [call.inputs[p] for p in call.tensor_positions()]
        if _is_plain_sum(call, tensors, relevance):
            return call.to_inputs(sign_aware_sum(tensors, relevance, self.fallback))
        fn = call.tensor_function()
        pos = [t.clamp(min=0) for t in tensors]
        neg = [t.clamp(max=0) for t in tensors]
        with torch.no_grad():
            z_pos, z_neg = fn(*pos), fn(*neg)
            sign = z_pos + z_neg
        g_pos = vector_jacobian(fn, pos, lambda _: torch.where(
            sign > 0, safe_divide(relevance, z_pos), 0.0))
        g_neg = vector_jacobian(fn, neg, lambda _: torch.where(
            sign < 0, safe_divide(relevance, z_neg), 0.0))
        shares = [p * gp + n * gn for p, gp, n, gn in zip(pos, g_pos, neg, g_neg, strict=True)]
        if self.fallback and bool((sign == 0).any()):
            ones = [torch.ones_like(t) for t in tensors]
            with torch.no_grad():
                z_ones = fn(*ones)
            left = vector_jacobian(fn, ones, lambda _: torch.where(
                sign == 0, safe_divide(relevance, z_ones), 0.0))
            shares = [s + g for s, g in zip(shares, left, strict=True)]
        return call.to_inputs(shares)


def sign_aware_sum(tensors: list[Tensor], relevance: Tensor, fallback: bool = True
                   ) -> list[Tensor]:
    r""":class:`SignAwareZRule` for z = a + b + ... of equal shapes, without autograd.

    With s = sign(z), the contributions sharing the output's sign are c^{s} = s p with
    p = max(0, s c) >= 0, so R_i = p_i R / \sum_i' p_i' (s cancels). Where z = 0 every
    p is 0: with ``fallback`` each of the K terms gets R / K, else R is dropped.
    """
    with torch.no_grad():
        sign = torch.sign(total(tensors)) if len(tensors) == 1 else total(tensors).sign_()
        parts = [(t * sign).clamp_(min=0) for t in tensors]
        zero = (sign == 0) if fallback else None
        denominator = sign.copy_(parts[0])  # the sum of the parts, in sign's memory
        for part in parts[1:]:
            denominator.add_(part)
        ratio = safe_divide(relevance, denominator, out=denominator)
        shares = [part.mul_(ratio) for part in parts]
        if zero is not None and bool(zero.any()):
            even = torch.where(zero, relevance / len(tensors), 0.0)
            shares = [share.add_(even) for share in shares]
        return shares


def _is_plain_sum(call: Call, tensors: list[Tensor], relevance: Tensor) -> bool:
    """An addition of tensors that all have the output's shape (no broadcast, no alpha)."""
    return (op_name(call.op) == "add" and not call.kwargs
            and len(tensors) == len(call.inputs)
            and all(t.shape == relevance.shape for t in tensors))


class GateRule(Rule):
    r"""A multiplicative gate y = g \odot x (squeeze-excitation ``x * scale``, layer scale,
    a fixed 0/1 mask): the gate g is treated as a constant, so y is linear in x with weight g
    and the z-rule gives R_x = g x R / (g x) = R where g != 0, and R_x = 0 where g = 0 (the
    output holds nothing of x there); the gate receives none. The signal x is the tensor
    operand with the output's shape; the other operand is the gate (broadcast, a buffer or a
    parameter). Conserves relevance where no gate element is 0.
    """

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        positions = call.tensor_positions()
        full = [p for p in positions if call.inputs[p].shape == relevance.shape]
        if len(full) != 1:
            raise ValueError(
                f"cannot tell signal from gate in {call.op!r}: {len(full)} operands have the "
                "output's shape; register a rule for this operation (e.g. rules={Node('mul_1'):"
                " ZRule()}) or give the gate a broadcast shape")
        out: list[Tensor | None] = [None] * len(call.inputs)
        gates = [call.inputs[p] for p in positions if p != full[0]]
        out[full[0]] = relevance
        gates += [v for v in call.inputs if isinstance(v, Tensor) and not v.is_floating_point()]
        for gate in gates:
            out[full[0]] = torch.where(gate != 0, out[full[0]], 0.0)
        return out


class ArithmeticRule(Rule):
    r"""``+ - * /`` between activations and constants (parameters, buffers, numbers).

    With one activation x among the operands, y is an affine function of x (a shift
    x + b, x - b, b - x, a scale x * c, x / c, ``addcmul(b, c, x)``; biases ignored as z+
    ignores them), and the z-rule gives R_x = R (reduced over broadcast dimensions), 0 where a
    scale is 0 (in-model normalisation, layer scale, fixed masks). With several activations:
    a sum y = \sum_i s_i x_i (s_i = +-1) uses the sign-aware z-rule (:func:`sign_aware_sum`)
    on the contributions c_i = s_i x_i; a product x * g treats the broadcast operand g as a
    gate (:class:`GateRule`), and a product a * b of two activations of the output's shape (a
    gated linear unit) gives each half, R_a = R_b = R / 2 (AttnLRP's uniform rule for
    multiplicative gates); a quotient x / d gives all relevance to the numerator. Conserves
    relevance wherever the sum is non-zero and no scale is 0; where a sum is 0,
    ``fallback`` as in :class:`SignAwareZRule`.
    """

    def __init__(self, fallback: bool = True) -> None:
        self.fallback = fallback

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        name = op_name(call.op)
        live = call.live_positions()
        inputs = call.inputs
        out: list[Tensor | None] = [None] * len(inputs)
        if name in ("add", "sub") and len(live) > 1:
            alpha = call.kwargs.get("alpha", 1)
            signs = [1.0] + [(-1.0 if name == "sub" else 1.0) * alpha] * (len(live) - 1)
            parts = [inputs[p] if s == 1.0 and inputs[p].shape == relevance.shape
                     else inputs[p].expand_as(relevance) * s
                     for p, s in zip(live, signs, strict=True)]
            shares = sign_aware_sum(parts, relevance, self.fallback)
            for p, share in zip(live, shares, strict=True):
                out[p] = share.sum_to_size(inputs[p].shape)
            return out
        if name == "mul" and len(live) > 1:
            full = [p for p in live if inputs[p].shape == relevance.shape]
            if len(full) == len(live) == 2:  # a gated unit (SwiGLU): the uniform rule
                out[live[0]], out[live[1]] = relevance / 2, relevance / 2
                return out
            return GateRule().propagate(call, relevance)
        if len(live) > 1:
            raise ValueError(f"{name} of several activations has no rule; register one")
        if name == "div" and live and live[0] != 0:
            raise ValueError("relevance cannot pass through a division by an activation "
                             "(c / x); register a rule for it")
        signal = live[0]
        r = relevance
        for p, v in enumerate(inputs):
            if p != signal and isinstance(v, Tensor) and name == "mul":
                r = torch.where(v != 0, r, 0.0)
            elif p != signal and name == "mul" and v == 0:
                r = torch.zeros_like(r)
        out[signal] = r.sum_to_size(inputs[signal].shape)
        return out


class ZPlusRule(Rule):
    r"""The sign-aware z^+ rule for a linear layer, without bias:

    z_j = \sum_i x_i^+ w_ij^+ + x_i^- w_ij^- ;
    R_i = x_i^+ \sum_j w_ij^+ R_j / z_j + x_i^- \sum_j w_ij^- R_j / z_j .
    Conserves relevance where no z_j is 0. For non-negative x (after a ReLU) only the first
    term is computed. ``epsilon`` > 0 stabilises the denominator as Zennit's ``ZPlus`` does
    (z_j + epsilon sign(z_j)); the reference uses none.

    Where z_j = 0 the paper's quotient is 0/0 (the reference code drops R_j): a neuron that a
    bias drives while its inputs vote against it, or whose inputs are all 0 (a dead channel
    before a depthwise convolution). With ``fallback=True`` (default) R_j goes to the
    opposite-sign contributions instead, R_i = (x_i^+ w_ij^- + x_i^- w_ij^+) R_j / z'_j with
    z'_j their sum, and where those are 0 too, by the w^2 rule
    R_i = w_ij^2 R_j / \sum_i' w_i'j^2 over the inputs that exist (zero padding, added by the
    layer or by the model in front of it, holds none); relevance is then conserved at every
    neuron with a non-zero weight. Where z_j != 0 the rule is the paper's.
    ``fallback=False`` drops R_j.
    """

    def __init__(self, epsilon: float = 0.0, fallback: bool = True) -> None:
        self.epsilon = epsilon
        self.fallback = fallback

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        layer, w = call.op, call.op.weight.detach()
        xs, joined = sign_parts(layer, call.x, w)  # [x^+, x^-], or [x] for x >= 0
        same_sign = [w.clamp(min=0), w.clamp(max=0)]
        dropped: list[Tensor] | None = [] if self.fallback else None
        r = linear_terms(layer, xs, same_sign[:len(xs)], relevance, self.epsilon,
                         joined=joined, dropped=dropped)
        if dropped:
            opposite = same_sign[::-1][:len(xs)]
            r = r + self._fallback(layer, xs, opposite, dropped[0], call.valid)
        return call.to_first_input(r)

    def _fallback(self, layer: Any, xs: list[Tensor], weights: list[Tensor],
                  relevance: Tensor, valid: Tensor | None) -> Tensor:
        """The opposite-sign terms, then the w^2 rule, for ``relevance`` where z_j = 0 (for
        a depthwise convolution, only the channels holding such relevance are computed)."""
        channels = depthwise_channels(layer, relevance)
        if channels is None:
            return self._opposite_then_squares(layer, xs, weights, relevance, valid)
        r = torch.zeros_like(xs[0])
        r[:, channels] = self._opposite_then_squares(
            channel_subset(layer, channels), [x[:, channels] for x in xs],
            [w[channels] for w in weights], relevance[:, channels],
            None if valid is None else valid.expand_as(xs[0])[:, channels])
        return r

    def _opposite_then_squares(self, layer: Any, xs: list[Tensor], weights: list[Tensor],
                               relevance: Tensor, valid: Tensor | None) -> Tensor:
        dropped: list[Tensor] = []
        r = linear_terms(layer, xs, weights, relevance, self.epsilon, dropped=dropped)
        if dropped:
            w = layer.weight.detach()
            exists = (torch.ones_like(xs[0]) if valid is None
                      else valid.to(xs[0]).expand_as(xs[0]))
            r = r + linear_terms(layer, [exists], [w * w], dropped[0], self.epsilon)
        return r


class _StabilisedLinearRule(Rule):
    r"""LRP for a linear layer with modified parameters (w', b') and a stabiliser:

    z_j = \sum_i x_i w'_ij + b'_j ;  R_i = x_i \sum_j w'_ij R_j / (z_j + \epsilon sign(z_j)),
    with sign(0) = 1 (Captum's convention). For operations without parameters (pooling) the
    operation itself is used as z = f(x).
    """

    epsilon: float = 1e-9
    set_bias_to_zero: bool = False

    def modify(self, weight: Tensor) -> Tensor:
        return weight

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        layer = call.op
        if isinstance(layer, (LinearView, *LINEAR_LAYERS)):
            f = linear_layer(layer)
            bias = None if self.set_bias_to_zero or layer.bias is None else layer.bias.detach()
            w = self.modify(layer.weight.detach())
            fn = lambda x: f(x, w, bias)  # noqa: E731
        else:
            fn = call.function()
        (grad,) = vector_jacobian(fn, [call.x],
                                  lambda z: relevance / stabilise(z, self.epsilon))
        return call.to_first_input(call.x * grad)


class EpsilonRule(_StabilisedLinearRule):
    r"""LRP-epsilon: R_i = x_i \sum_j w_ij R_j / (z_j + \epsilon sign(z_j)), z_j with bias
    (without it if ``set_bias_to_zero``, as Zennit's ``zero_params=["bias"]``)."""

    def __init__(self, epsilon: float = 1e-9, set_bias_to_zero: bool = False) -> None:
        self.epsilon = epsilon
        self.set_bias_to_zero = set_bias_to_zero


class GammaRule(_StabilisedLinearRule):
    r"""LRP-gamma: w' = w + \gamma w^+ (bias kept unless ``set_bias_to_zero``), epsilon 1e-9."""

    def __init__(self, gamma: float = 0.25, set_bias_to_zero: bool = False) -> None:
        self.gamma = gamma
        self.set_bias_to_zero = set_bias_to_zero

    def modify(self, weight: Tensor) -> Tensor:
        return weight + self.gamma * weight.clamp(min=0)


class AlphaOneBetaZeroRule(_StabilisedLinearRule):
    r"""LRP-alpha1-beta0 as Captum defines it: w' = w^+ (bias kept unless zeroed), epsilon 1e-9."""

    def __init__(self, set_bias_to_zero: bool = False) -> None:
        self.set_bias_to_zero = set_bias_to_zero

    def modify(self, weight: Tensor) -> Tensor:
        return weight.clamp(min=0)


class ZBoxRule(Rule, CaptumLinearTerms):
    r"""The z^B rule for a layer fed by the image, with input bounds l <= x <= h:

    z_j = \sum_i (x_i w_ij - l_i w_ij^+ - h_i w_ij^-) ;
    R_i = \sum_j (x_i w_ij - l_i w_ij^+ - h_i w_ij^-) R_j / z_j   (bias ignored,
    zero padding for x, l and h alike),

    each contribution computed as (x_i - l_i) w_ij^+ + (x_i - h_i) w_ij^-, the same sum
    without cancellation: every term is >= 0, and where l = x = h (a constant image with
    per-image bounds) exactly 0, so z_j = 0 and the map is exactly 0 (no contrast, no
    relevance; not the rounding noise of x w - l w^+ - h w^-).

    Bounds: ``low``/``high`` tensors broadcastable to the input (e.g. per channel, shape
    (C, 1, 1)), or None for the per-image minimum and maximum of the input over all channels
    and pixels (the reference behaviour). :meth:`from_normalization` builds the bounds
    implied by ``transforms.Normalize(mean, std)`` on images in [0, 1]. Elements of the input
    that are not pixels (zero padding the model adds in front of its first layer) have bounds
    0 and do not count towards per-image bounds.

    Also a Captum ``PropagationRule``: set ``model.features[0].rule = ZBoxRule()`` and use
    Captum's own ``LRP``.
    """

    def __init__(self, low: Tensor | None = None, high: Tensor | None = None) -> None:
        if (low is None) != (high is None):
            raise ValueError("give both low and high bounds, or neither (per-image min/max)")
        self.low = low
        self.high = high

    @classmethod
    def from_normalization(cls, mean: Any, std: Any) -> ZBoxRule:
        """Bounds (0 - mean) / std and (1 - mean) / std per channel."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        return cls(low=-mean / std, high=(1 - mean) / std)

    def bounds(self, x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Tensors l and h with the shape of x (``valid``: which elements are pixels)."""
        valid = None if valid is None else valid.to(x.device).expand_as(x)
        if self.low is None or self.high is None:
            flat = x.reshape(x.shape[0], -1)
            shape = (-1,) + (1,) * (x.dim() - 1)
            mins = flat if valid is None else torch.where(valid, x, float("inf")).reshape(
                flat.shape)
            maxs = flat if valid is None else torch.where(valid, x, float("-inf")).reshape(
                flat.shape)
            low, high = mins.amin(dim=1).reshape(shape), maxs.amax(dim=1).reshape(shape)
        else:
            low, high = self.low.to(x), self.high.to(x)
        low, high = low.expand_as(x), high.expand_as(x)
        if valid is not None:
            low, high = low * valid, high * valid
        return low.contiguous(), high.contiguous()

    def terms(self, module: Any, x: Tensor, valid: Tensor | None = None
              ) -> tuple[list[Tensor], list[Tensor]]:
        """Inputs [x - l, x - h] and weights [w^+, w^-] of the z^B terms."""
        w = module.weight.detach()
        low, high = self.bounds(x, valid)
        return [x - low, x - high], [w.clamp(min=0), w.clamp(max=0)]

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        return call.to_first_input(
            linear_terms(call.op, *self.terms(call.op, call.x, call.valid), relevance))
