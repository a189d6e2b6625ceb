r"""Views: a model's linear layer seen with other parameters, never changed itself.

The one substitution mechanism of the engine: for a span of the graph, a recorded operation
may be replaced by a view that rules treat like the layer itself (its ``weight``, ``bias``,
stride and padding):

- :class:`WithBatchNorm`: a convolution or linear layer followed by BatchNorm, folded
  (``fold_batchnorm=True``);
- :class:`NegatedRows`: the output layer with some rows negated (CLRP's virtual class);
- :class:`FunctionalLinear`: a functional ``F.conv2d`` / ``F.linear`` call seen as a layer;
  also a depthwise convolution restricted to some channels (:func:`channel_subset`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONVOLUTION_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_LAYERS = (nn.Linear, *CONVOLUTION_LAYERS)
#: the convolution function by the number of spatial dimensions
CONVOLUTION_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class LinearView:
    """A convolution or linear ``layer`` seen with other parameters (``weight``, ``bias``)."""

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
    (running statistics), computed from the current parameters on every use.
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


class NegatedRows(LinearView):
    """The output layer with the rows of ``classes`` negated and no bias (CLRP's virtual
    class)."""

    def __init__(self, layer: nn.Module, classes: Tensor) -> None:
        self.layer = layer
        self.classes = classes

    @property
    def weight(self) -> Tensor:
        w = self.layer.weight.detach().clone()
        w[self.classes] = -w[self.classes]
        return w

    @property
    def bias(self) -> Tensor | None:
        return None


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


def layer_of(module: Any) -> Any:
    """The layer behind a view (the module itself otherwise): its stride, padding, groups."""
    return module.layer if isinstance(module, LinearView) else module


def fully_connected(module: Any) -> bool:
    """Whether a linear-layer module or view is fully connected (not a convolution)."""
    layer = layer_of(module)
    return isinstance(layer, nn.Linear) or getattr(layer, "fully_connected", False)


def linear_layer(module: Any) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """A convolution or fully connected module (or view) as ``f(x, weight, bias)``."""
    layer = layer_of(module)
    if isinstance(layer, nn.Linear) or getattr(layer, "fully_connected", False):
        return F.linear
    if isinstance(layer, (*CONVOLUTION_LAYERS, FunctionalLinear)):
        if layer.padding_mode != "zeros":
            raise NotImplementedError(
                f"{type(layer).__name__} with padding_mode={layer.padding_mode!r}: only "
                "zero padding is supported by the linear-layer rules")
        conv = CONVOLUTION_FUNCTIONS[layer.weight.dim() - 2]
        return lambda x, w, b: conv(x, w, b, layer.stride, layer.padding, layer.dilation,
                                    layer.groups)
    raise TypeError(
        f"{type(layer).__name__} is not a linear layer (Conv1d/2d/3d or Linear); this rule "
        "needs one")


def depthwise_channels(module: Any, relevance: Tensor) -> Tensor | None:
    """The channels holding relevance, for a depthwise convolution (None otherwise)."""
    layer = layer_of(module)
    if fully_connected(layer) or getattr(layer, "groups", 1) == 1 \
            or layer.groups != module.weight.shape[0] or module.weight.shape[1] != 1:
        return None
    dims = [0] + list(range(2, relevance.dim()))
    return (relevance != 0).any(dim=dims[0]).flatten(1).any(dim=1).nonzero().flatten() \
        if len(dims) > 1 else None


def channel_subset(module: Any, channels: Tensor) -> FunctionalLinear:
    """A depthwise convolution restricted to ``channels``."""
    layer = layer_of(module)
    weight = module.weight.detach()[channels]
    return FunctionalLinear(CONVOLUTION_FUNCTIONS[weight.dim() - 2], (
        None, weight, None, layer.stride, layer.padding, layer.dilation, len(channels)), {})
