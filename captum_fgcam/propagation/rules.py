r"""Relevance rules: *how* relevance at an operation's output moves to its inputs.

Notation: x = the operation's input (i indexes it), R = relevance at its output (j indexes it),
w = the weights of a linear layer (convolution or fully connected), w^+ = max(0, w),
w^- = min(0, w). A quotient whose denominator is exactly 0 is 0 (no epsilon) unless a rule
says otherwise.

Every rule is linear in R once the forward values are fixed, so a whole tensor of per-channel
components (or a batch) moves through in one call. Rules are computed with the "gradient trick":
for z = f(x), the vector-Jacobian product J_f(x)^T s is one backward pass of f, which for a
convolution is a transposed convolution with the same stride, padding and groups.

A rule never modifies the module: parameters are read, modified copies are built, and the
module's ``forward`` is never called with hooks.
"""

from __future__ import annotations

import functools
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import PropagationRule
from torch import Tensor, nn

from .ops import op_name

Op = Any  # an nn.Module, a function, a method name, or a LinearView


@dataclass
class Call:
    """One recorded operation: what ran (``op``) on which arguments.

    ``args`` are the positional arguments as the operation received them (tensors or
    constants; a list argument such as ``torch.cat``'s stays a list). ``inputs`` flattens them
    one level: rules return one relevance (or None) per entry of ``inputs``.
    """

    op: Op
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: per entry of ``inputs``: whether it is an activation (computed from the model input);
    #: None: every tensor is
    live: tuple[bool, ...] | None = None

    @property
    def inputs(self) -> list[Any]:
        flat: list[Any] = []
        for arg in self.args:
            flat.extend(arg if isinstance(arg, (list, tuple)) else [arg])
        return flat

    @property
    def x(self) -> Tensor:
        return self.inputs[0]

    def run(self, inputs: list[Any]) -> Any:
        """The operation on ``inputs`` (flat, as :attr:`inputs`), without module hooks."""
        it = iter(inputs)
        args = [type(a)(next(it) for _ in a) if isinstance(a, (list, tuple)) else next(it)
                for a in self.args]
        op = self.op
        if isinstance(op, nn.Module):
            return type(op).forward(op, *args, **self.kwargs)
        if isinstance(op, str):
            return getattr(args[0], op)(*args[1:], **self.kwargs)
        return op(*args, **self.kwargs)

    def tensor_positions(self) -> list[int]:
        return [i for i, v in enumerate(self.inputs) if isinstance(v, Tensor)]

    def live_positions(self) -> list[int]:
        """Positions of the activations among :attr:`inputs`."""
        if self.live is None:
            return self.tensor_positions()
        return [i for i, v in enumerate(self.inputs) if isinstance(v, Tensor) and self.live[i]]

    def tensor_function(self) -> Callable[..., Tensor]:
        """The operation as a function of its tensor inputs (in order), the rest fixed."""
        inputs, positions = self.inputs, self.tensor_positions()

        def fn(*tensors: Tensor) -> Tensor:
            new = list(inputs)
            for p, t in zip(positions, tensors, strict=True):
                new[p] = t
            return self.run(new)

        return fn

    def function(self) -> Callable[[Tensor], Tensor]:
        """The operation as a function of its first input, everything else fixed."""
        inputs = self.inputs
        return lambda x: self.run([x] + inputs[1:])

    def to_inputs(self, relevances: list[Tensor]) -> list[Tensor | None]:
        """Place one relevance per tensor input at its position in :attr:`inputs`."""
        out: list[Tensor | None] = [None] * len(self.inputs)
        for p, r in zip(self.tensor_positions(), relevances, strict=True):
            out[p] = r
        return out


def to_first_input(call: Call, relevance: Tensor) -> list[Tensor | None]:
    """Relevance for an operation's first input; None for its other arguments."""
    return [relevance] + [None] * (len(call.inputs) - 1)


class Rule(ABC):
    """How relevance crosses one operation. Subclasses implement :meth:`propagate`."""

    #: False for rules that only need the shape of an operation's inputs (then an in-place
    #: operation need not keep a copy of the value it overwrites)
    reads_values: bool = True
    #: True for rules that read recorded 4-D values in the channels-last memory format (the
    #: layout relevance moves in after a convolution); only the layout changes, not the values.
    channels_last: bool = False

    @abstractmethod
    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        """Relevance for each of ``call.inputs`` (None for non-tensor inputs)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def safe_divide(numerator: Tensor, denominator: Tensor, out: Tensor | None = None) -> Tensor:
    """numerator / denominator, and 0 where the denominator is exactly 0.

    (Division by 0 gives +-inf or NaN exactly there, which are then replaced by 0.) With
    ``out`` (e.g. ``out=denominator`` when the denominator is not needed afterwards) the
    quotient is written there instead of into new memory.
    """
    return torch.div(numerator, denominator, out=out).nan_to_num_(nan=0.0, posinf=0.0,
                                                                   neginf=0.0)


def vector_jacobian(fn: Callable[..., Tensor], inputs: list[Tensor],
                    scale: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """Run z = fn(*inputs), then return J^T s for s = scale(z), one tensor per input."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        z = fn(*leaves)
        s = scale(tuple(t.detach() for t in z) if isinstance(z, tuple) else z.detach())
        # an input the output does not depend on (``expand_as``'s shape donor) gets zeros
        return list(torch.autograd.grad(z, leaves, s, allow_unused=True,
                                        materialize_grads=True))


LINEAR_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class LinearView:
    """A convolution or linear ``layer`` seen with other parameters (``weight``, ``bias``).

    Rules treat a view like the layer itself; the model's modules are never changed.
    """

    layer: nn.Module

    @property
    def weight(self) -> Tensor:
        raise NotImplementedError

    @property
    def bias(self) -> Tensor | None:
        raise NotImplementedError


class WithBatchNorm(LinearView):
    r"""A convolution or linear layer followed by BatchNorm, seen as one linear layer:

    s = \gamma / \sqrt{\sigma^2 + \epsilon},  w' = w s,  b' = (b - \mu) s + \beta
    (running statistics). Computed from the current parameters on every use; the model's
    modules are not changed.
    """

    def __init__(self, layer: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> None:
        self.layer = layer
        self.norm = norm

    def _scale(self) -> Tensor:
        norm = self.norm
        gamma = norm.weight.detach() if norm.weight is not None else 1.0
        return gamma / torch.sqrt(norm.running_var + norm.eps)

    @property
    def weight(self) -> Tensor:
        w = self.layer.weight.detach()
        return w * self._scale().reshape(-1, *([1] * (w.dim() - 1)))

    @property
    def bias(self) -> Tensor:
        norm = self.norm
        b = self.layer.bias.detach() if self.layer.bias is not None else 0.0
        shift = norm.bias.detach() if norm.bias is not None else 0.0
        return (b - norm.running_mean) * self._scale() + shift

    def __repr__(self) -> str:
        return f"WithBatchNorm({self.layer!r}, {self.norm!r})"


class FunctionalLinear(LinearView):
    """A functional convolution or ``F.linear`` call (``F.conv2d(x, w, b, stride, ...)``)
    seen as a layer, so the linear-layer rules treat it like the module."""

    padding_mode = "zeros"

    def __init__(self, function: Callable[..., Tensor], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        bound = dict(zip(names, args, strict=False)) | kwargs
        self.layer = self
        self._weight = bound["weight"].detach()
        b = bound.get("bias")
        self._bias = b.detach() if isinstance(b, Tensor) else None
        self.fully_connected = self._weight.dim() == 2
        dims = self._weight.dim() - 2

        def tup(v: Any, default: int) -> tuple[Any, ...] | str:
            v = default if v is None else v
            return v if isinstance(v, str) else tuple(v) if isinstance(v, (list, tuple)) \
                else (v,) * dims
        self.stride = tup(bound.get("stride"), 1)
        self.padding = tup(bound.get("padding"), 0)
        self.dilation = tup(bound.get("dilation"), 1)
        self.groups = int(bound.get("groups") or 1)
        self.function = function

    @property
    def weight(self) -> Tensor:
        return self._weight

    @property
    def bias(self) -> Tensor | None:
        return self._bias

    def __repr__(self) -> str:
        return f"FunctionalLinear({getattr(self.function, '__name__', self.function)})"


def fully_connected(module: Any) -> bool:
    """Whether a linear-layer module or view is fully connected (not a convolution)."""
    layer = module.layer if isinstance(module, LinearView) else module
    return isinstance(layer, nn.Linear) or getattr(layer, "fully_connected", False)


def linear_layer(module: Any) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """A convolution or fully connected module as ``f(x, weight, bias)``."""
    if isinstance(module, FunctionalLinear):
        if module.fully_connected:
            return F.linear
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[module.weight.dim() - 2]
        return lambda x, w, b: conv(x, w, b, module.stride, module.padding, module.dilation,
                                    module.groups)
    if isinstance(module, LinearView):
        return linear_layer(module.layer)
    if isinstance(module, nn.Linear):
        return F.linear
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.padding_mode != "zeros":
            raise NotImplementedError(
                f"{type(module).__name__} with padding_mode={module.padding_mode!r}: only "
                "zero padding is supported by the linear-layer rules")
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[module.weight.dim() - 2]
        return lambda x, w, b: conv(x, w, b, module.stride, module.padding, module.dilation,
                                    module.groups)
    raise TypeError(
        f"{type(module).__name__} is not a linear layer (Conv1d/2d/3d or Linear); this rule "
        "needs one")


def _stabilise(z: Tensor, epsilon: float) -> Tensor:
    """z + epsilon sign(z) with sign(0) = 1 (Captum's and Zennit's convention)."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def transpose_linear(module: Any, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
    """w^T s: the transposed convolution (or matrix product) back to the shape of ``x``.

    Calls the convolution's backward kernel directly (what autograd would run, without
    building a graph); ``x`` only provides the shape and layout.
    """
    layer = module.layer if isinstance(module, LinearView) else module
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
    z_j + epsilon sign(z_j) instead of "0 where z_j = 0". Image tensors are processed in the
    channels-last memory format, which the convolution kernels run fastest in (values are
    unchanged; only the layout differs). ``joined``: the inputs concatenated along that axis
    (channels, or features), if the caller has them already (``xs`` then being its chunks).
    ``dropped``: a list that receives the relevance of the outputs with z_j = 0, if any.
    """
    layer = module.layer if isinstance(module, LinearView) else module
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
        s = (relevance / _stabilise(z, epsilon) if epsilon
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


def _total(terms: Iterable[Tensor]) -> Tensor:
    """Sum of tensors without Python's ``0 +`` start (which costs a full copy)."""
    return functools.reduce(operator.add, terms)


class PassRule(Rule):
    r"""Relevance passes unchanged: R_i = R_i (reshaped to the input's shape).

    For element-wise operations (ReLU, BatchNorm as in the reference, Dropout) and reshapes
    (flatten, view). Conserves relevance exactly.
    """

    reads_values = False

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        return to_first_input(call, relevance.reshape(call.x.shape))


class WinnerTakeAllRule(Rule):
    r"""Max pooling: each window's relevance goes to its arg-max input.

    R_i = \sum_j [i = argmax_{window j} x] R_j ; ties go where PyTorch's pooling puts the
    gradient. The reference's form x_i R_j / z_j is the same wherever z_j != 0; where the
    window's maximum z_j is 0 it is 0/0: ``conserve=True`` (default) passes R_j on to the
    arg-max (conserving relevance exactly), ``conserve=False`` drops it as the reference does.
    """

    channels_last = True

    def __init__(self, conserve: bool = True) -> None:
        self.conserve = conserve

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        scale = ((lambda z: relevance) if self.conserve
                 else (lambda z: torch.where(z == 0, 0, relevance)))
        (routed,) = vector_jacobian(call.function(), [call.x], scale)
        return to_first_input(call, routed)


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
        scale = ((lambda z: relevance / _stabilise(z, self.epsilon)) if self.epsilon
                 else (lambda z: safe_divide(relevance, z)))
        grads = vector_jacobian(call.tensor_function(), tensors, scale)
        return call.to_inputs([x * g for x, g in zip(tensors, grads, strict=True)])


class SignAwareZRule(Rule):
    r"""The sign-aware z-rule for operations that sum their inputs with non-negative
    weights (residual additions, average pooling, means, resampling):

    z_j = \sum_i c_ij with c_ij = w_ij x_i ;  R_i = \sum_j c_ij^{s_j} R_j / \sum_i' c_i'j^{s_j} ,
    where s_j = sign(z_j), c^+ = max(0, c) and c^- = min(0, c): an output's relevance goes to
    the contributions that share its sign, so a sum of large opposite terms never inflates
    relevance. Conserves relevance exactly wherever z_j != 0. Where z_j = 0 (an all-zero
    pooling window) ``fallback=True`` (default) shares R_j by the weights,
    R_i = w_ij R_j / \sum_i' w_i'j, and ``fallback=False`` drops it (the reference).
    """

    channels_last = True

    def __init__(self, fallback: bool = True) -> None:
        self.fallback = fallback

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        tensors = [call.inputs[p] for p in call.tensor_positions()]
        if _is_plain_sum(call, tensors, relevance):
            return call.to_inputs(self._plain_sum(tensors, relevance, self.fallback))
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

    @staticmethod
    def _plain_sum(tensors: list[Tensor], relevance: Tensor,
                   fallback: bool = True) -> list[Tensor]:
        r"""The same rule for z = a + b + ... of equal shapes, without autograd.

        With s = sign(z), the contributions sharing the output's sign are c^{s} = s p with
        p = max(0, s c) >= 0, so R_i = p_i R / \sum_i' p_i' (s cancels). Where z = 0 every
        p is 0: with ``fallback`` each of the K terms gets R / K, else R is dropped.
        """
        with torch.no_grad():
            sign = torch.sign(_total(tensors)) if len(tensors) == 1 else _total(tensors).sign_()
            parts = [(t * sign).clamp_(min=0) for t in tensors]
            ratio = safe_divide(relevance, _total(parts))
            shares = [part.mul_(ratio) for part in parts]
            if fallback and bool((sign == 0).any()):
                even = torch.where(sign == 0, relevance / len(tensors), 0.0)
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
                "output's shape; register a rule for this operation (e.g. rules={'mul_1': "
                "ZRule()}) or give the gate a broadcast shape")
        out: list[Tensor | None] = [None] * len(call.inputs)
        gates = [call.inputs[p] for p in positions if p != full[0]]
        out[full[0]] = relevance
        for gate in gates:
            out[full[0]] = torch.where(gate != 0, out[full[0]], 0.0)
        return out


class ArithmeticRule(Rule):
    r"""``+ - * /`` between activations and constants (parameters, buffers, numbers).

    With one activation x among the operands, y is an affine function of x (a shift
    x + b, x - b, b - x, a scale x * c, x / c, ``addcmul(b, c, x)``; biases ignored as z+
    ignores them), and the
    z-rule gives R_x = R (reduced over broadcast dimensions), 0 where a scale is 0 (in-model
    normalisation, layer scale, fixed masks). With several activations: a sum
    y = \sum_i s_i x_i (s_i = +-1) uses the sign-aware z-rule of :class:`SignAwareZRule` on
    the contributions c_i = s_i x_i; a product x * g treats the broadcast operand g as a gate
    (:class:`GateRule`), and a product a * b of two activations of the output's shape (a
    gated linear unit) gives each half, R_a = R_b = R / 2 (AttnLRP's uniform rule for
    multiplicative gates); a quotient x / d gives all relevance to the numerator. Conserves
    relevance wherever the sum is non-zero and no scale is 0; where a sum is 0,
    ``fallback`` as in :class:`SignAwareZRule`.
    """

    channels_last = True

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
            shares = SignAwareZRule._plain_sum(parts, relevance, self.fallback)
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
    R_i = w_ij^2 R_j / \sum_i' w_i'j^2; relevance is then conserved at every neuron with a
    non-zero weight. Where z_j != 0 the rule is the paper's. ``fallback=False`` drops R_j.
    """

    def __init__(self, epsilon: float = 0.0, fallback: bool = True) -> None:
        self.epsilon = epsilon
        self.fallback = fallback

    #: which input elements exist (False: zero padding added in front of the layer)
    valid: Tensor | None = None

    def within(self, valid: Tensor) -> ZPlusRule:
        """This rule for an input whose elements where ``valid`` is False are padding added
        by the model (``F.pad``): the w^2 fallback gives them nothing, as for the padding a
        convolution adds itself."""
        rule = ZPlusRule(self.epsilon, self.fallback)
        rule.valid = valid
        return rule

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        module, x = call.op, call.x
        w = module.weight.detach()
        layer = module.layer if isinstance(module, LinearView) else module
        image = x.dim() == 4 and not fully_connected(layer)  # see linear_terms
        layout = torch.channels_last if image else torch.contiguous_format
        dropped: list[Tensor] | None = [] if self.fallback else None
        if not bool(x.min() < 0):
            xs = [x.contiguous(memory_format=layout)]
            r = linear_terms(module, xs, [w.clamp(min=0)], relevance, self.epsilon,
                             dropped=dropped)
            if dropped:
                r = r + self._fallback(module, xs, [w.clamp(max=0)], dropped[0])
            return to_first_input(call, r)
        weights = [w.clamp(min=0), w.clamp(max=0)]
        # x^+ and x^- are written straight into the layout (and, where the forward term
        # concatenates them, the buffer) linear_terms uses: no separate copies.
        joined = None
        if _concatenates_inputs(layer, weights):
            dim = -1 if fully_connected(layer) else 1  # the axis the layer sums over
            joined = _empty_like_cat([x, x], dim=dim, layout=layout)
            parts = list(joined.chunk(2, dim=dim))
        else:
            parts = [torch.empty_like(x, memory_format=layout) for _ in range(2)]
        torch.clamp(x, min=0, out=parts[0])
        torch.clamp(x, max=0, out=parts[1])
        r = linear_terms(module, parts, weights, relevance, self.epsilon, joined=joined,
                         dropped=dropped)
        if dropped:
            r = r + self._fallback(module, parts, weights[::-1], dropped[0])
        return to_first_input(call, r)

    def _fallback(self, module: Any, xs: list[Tensor], weights: list[Tensor],
                  relevance: Tensor) -> Tensor:
        r"""``relevance`` (where z_j = 0) to the opposite-sign contributions; where those are
        all 0 too, the w^2 rule R_i = w_ij^2 R_j / \sum_i' w_i'j^2 (over the inputs that
        exist: zero padding holds none). For a depthwise convolution only the channels that
        hold such relevance are computed."""
        channels = _depthwise_channels(module, relevance)
        if channels is not None:
            sub = _channel_subset(module, channels)
            r = torch.zeros_like(xs[0])
            r[:, channels] = self._fallback_terms(
                sub, [x[:, channels] for x in xs], [w[channels] for w in weights],
                relevance[:, channels], None if self.valid is None
                else self.valid.expand_as(xs[0])[:, channels])
            return r
        return self._fallback_terms(module, xs, weights, relevance, self.valid)

    def _fallback_terms(self, module: Any, xs: list[Tensor], weights: list[Tensor],
                        relevance: Tensor, valid: Tensor | None) -> Tensor:
        dropped: list[Tensor] = []
        r = linear_terms(module, xs, weights, relevance, self.epsilon, dropped=dropped)
        if dropped:
            w = module.weight.detach()
            exists = (torch.ones_like(xs[0]) if valid is None
                      else valid.to(xs[0]).expand_as(xs[0]))
            r = r + linear_terms(module, [exists], [w * w], dropped[0], self.epsilon)
        return r


def _depthwise_channels(module: Any, relevance: Tensor) -> Tensor | None:
    """The channels holding relevance, for a depthwise convolution (None otherwise)."""
    layer = module.layer if isinstance(module, LinearView) else module
    if fully_connected(layer) or getattr(layer, "groups", 1) == 1 \
            or layer.groups != module.weight.shape[0] or module.weight.shape[1] != 1:
        return None
    dims = [0] + list(range(2, relevance.dim()))
    return (relevance != 0).any(dim=dims[0]).flatten(1).any(dim=1).nonzero().flatten() \
        if len(dims) > 1 else None


def _channel_subset(module: Any, channels: Tensor) -> FunctionalLinear:
    """A depthwise convolution restricted to ``channels``."""
    layer = module.layer if isinstance(module, LinearView) else module
    weight = module.weight.detach()[channels]
    dims = weight.dim() - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return FunctionalLinear(conv, (None, weight, None, layer.stride, layer.padding,
                                   layer.dilation, len(channels)), {})


class _StabilisedLinearRule(Rule):
    r"""LRP for a linear layer with modified parameters (w', b') and a stabiliser:

    z_j = \sum_i x_i w'_ij + b'_j ;  R_i = x_i \sum_j w'_ij R_j / (z_j + \epsilon sign(z_j)),
    with sign(0) = 1 (Captum's convention). For operations without parameters (pooling) the
    operation itself is used as z = f(x).
    """

    epsilon: float = 1e-9

    def modify(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return weight, bias

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        module = call.op
        if isinstance(module, (LinearView, *LINEAR_LAYERS)):
            f = linear_layer(module)
            bias = module.bias.detach() if module.bias is not None else None
            w, b = self.modify(module.weight.detach(), bias)
            fn = lambda x: f(x, w, b)  # noqa: E731
        else:
            fn = call.function()
        (grad,) = vector_jacobian(fn, [call.x],
                                  lambda z: relevance / _stabilise(z, self.epsilon))
        return to_first_input(call, call.x * grad)


class EpsilonRule(_StabilisedLinearRule):
    r"""LRP-epsilon: R_i = x_i \sum_j w_ij R_j / (z_j + \epsilon sign(z_j)), z_j with bias
    (without it if ``zero_bias``, as Zennit's ``zero_params=["bias"]``)."""

    def __init__(self, epsilon: float = 1e-9, zero_bias: bool = False) -> None:
        self.epsilon = epsilon
        self.zero_bias = zero_bias

    def modify(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return weight, None if self.zero_bias else bias


class GammaRule(_StabilisedLinearRule):
    r"""LRP-gamma: w' = w + \gamma w^+ (bias kept unless ``set_bias_to_zero``), epsilon 1e-9."""

    def __init__(self, gamma: float = 0.25, set_bias_to_zero: bool = False) -> None:
        self.gamma = gamma
        self.set_bias_to_zero = set_bias_to_zero

    def modify(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        bias = None if self.set_bias_to_zero else bias
        return weight + self.gamma * weight.clamp(min=0), bias


class AlphaOneBetaZeroRule(_StabilisedLinearRule):
    r"""LRP-alpha1-beta0 as Captum defines it: w' = w^+ (bias kept unless zeroed), epsilon 1e-9."""

    def __init__(self, set_bias_to_zero: bool = False) -> None:
        self.set_bias_to_zero = set_bias_to_zero

    def modify(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return weight.clamp(min=0), None if self.set_bias_to_zero else bias


class ZBoxRule(Rule, PropagationRule):
    r"""The z^B rule for a layer fed by the image, with input bounds l <= x <= h:

    z_j = \sum_i (x_i w_ij - l_i w_ij^+ - h_i w_ij^-) ;
    R_i = \sum_j (x_i w_ij - l_i w_ij^+ - h_i w_ij^-) R_j / z_j   (bias ignored,
    zero padding for x, l and h alike).

    Bounds: ``low``/``high`` tensors broadcastable to the input (e.g. per channel, shape
    (C, 1, 1)), or None for the per-image minimum and maximum of the input over all channels
    and pixels (the reference behaviour). :meth:`from_normalization` builds the bounds
    implied by ``transforms.Normalize(mean, std)`` on images in [0, 1].

    Also a Captum ``PropagationRule``: set ``model.features[0].rule = ZBoxRule()`` and use
    Captum's own ``LRP``.
    """

    def __init__(self, low: Tensor | None = None, high: Tensor | None = None) -> None:
        if (low is None) != (high is None):
            raise ValueError("give both low and high bounds, or neither (per-image min/max)")
        self.low = low
        self.high = high
        # Captum keeps these as class attributes shared by all rules; ours are per instance.
        self.relevance_input: dict[Any, Any] = {}
        self.relevance_output: dict[Any, Any] = {}

    @classmethod
    def from_normalization(cls, mean: Any, std: Any) -> ZBoxRule:
        """Bounds (0 - mean) / std and (1 - mean) / std per channel."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        return cls(low=-mean / std, high=(1 - mean) / std)

    def within(self, valid: Tensor) -> ZBoxRule:
        """This rule for an input whose elements where ``valid`` is False are not pixels (zero
        padding a model adds in front of its first layer, ``F.pad``): their bounds are 0, and
        per-image bounds are taken over the pixels only."""
        rule = ZBoxRule(self.low, self.high)
        rule.valid = valid
        return rule

    valid: Tensor | None = None

    def bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Tensors l and h with the shape of x."""
        valid = None if self.valid is None else self.valid.to(x.device).expand_as(x)
        if self.low is None or self.high is None:
            flat = x.reshape(x.shape[0], -1)
            shape = (-1,) + (1,) * (x.dim() - 1)
            mins = flat if valid is None else torch.where(valid, x, float("inf")).reshape(
                flat.shape)
            maxs = flat if valid is None else torch.where(valid, x, float("-inf")).reshape(
                flat.shape)
            low, high = mins.min(dim=1).values.reshape(shape), maxs.max(dim=1).values.reshape(shape)
        else:
            low, high = self.low.to(x), self.high.to(x)
        low, high = low.expand_as(x), high.expand_as(x)
        if valid is not None:
            low, high = low * valid, high * valid
        return low.contiguous(), high.contiguous()

    def _terms(self, module: nn.Module, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Inputs [x, l, h] and weights [w, -w^+, -w^-] of the three z^B terms."""
        w = module.weight.detach()
        low, high = self.bounds(x)
        return [x, low, high], [w, -w.clamp(min=0), -w.clamp(max=0)]

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        return to_first_input(call, linear_terms(call.op, *self._terms(call.op, call.x),
                                                 relevance))

    # --- Captum LRP protocol -------------------------------------------------------------
    def _manipulate_weights(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        """z^B uses the module's own weights: nothing to change."""

    def forward_hook(self, module: nn.Module, inputs: Any, outputs: Tensor) -> Tensor:
        """Captum's LRP calls this during its propagation forward pass.

        Captum passes relevance backwards as gradients: at the output we turn R into
        s = R / z^B; autograd then computes w^T s at the input, where we add the bound terms.
        """
        x = inputs[0].data
        xs, weights = self._terms(module, x)
        f = linear_layer(module)
        with torch.no_grad():
            z = _total(f(a, w, None) for a, w in zip(xs, weights, strict=True))
        state: dict[str, Tensor] = {}

        def output_hook(grad: Tensor) -> Tensor:
            self.relevance_output[grad.device] = grad.data
            state["relevance"] = grad
            return safe_divide(grad, z)

        def input_hook(grad: Tensor) -> Tensor:
            relevance = linear_terms(module, xs, weights, state["relevance"])
            self.relevance_input[grad.device] = relevance.data
            grad.replace_out = relevance  # read by Captum's activation hooks
            return relevance

        self._has_single_input = True
        self._handle_input_hooks = [inputs[0].register_hook(input_hook)]
        inputs[0].hook_registered = True
        self._handle_output_hook = outputs.register_hook(output_hook)
        return outputs.clone()


def from_captum(rule: PropagationRule) -> Rule:
    """Our equivalent of one of Captum's LRP rule objects (same equations, same stabiliser)."""
    from captum.attr._utils import lrp_rules as captum_rules

    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, captum_rules.IdentityRule):
        return PassRule()
    if isinstance(rule, captum_rules.EpsilonRule):
        return EpsilonRule(rule.STABILITY_FACTOR)
    if isinstance(rule, captum_rules.GammaRule):
        return GammaRule(rule.gamma, rule.set_bias_to_zero)
    if isinstance(rule, captum_rules.Alpha1_Beta0_Rule):
        return AlphaOneBetaZeroRule(rule.set_bias_to_zero)
    raise TypeError(
        f"unsupported Captum rule {type(rule).__name__}: pass EpsilonRule, GammaRule, "
        "Alpha1_Beta0_Rule, IdentityRule, or a captum_fgcam.propagation Rule")
