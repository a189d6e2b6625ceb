"""What each recorded operation is: one table of operation kinds, by module type and by name.

The capture records torch functions and tensor methods under their Python names
(``F.relu``, ``torch.relu``, ``Tensor.relu`` and ``Tensor.relu_`` are all "relu"; ``x + y``
is "add"). Every name and module type below belongs to exactly one kind; the presets give each
kind its rule (:mod:`.presets`), and the graph facts (:mod:`.graph`) ask this table what an
operation is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .views import LINEAR_LAYERS

#: dunder and alias names -> canonical names
_ALIASES = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add", "__sub__": "sub",
    "__isub__": "sub", "__rsub__": "rsub", "__mul__": "mul", "__rmul__": "mul",
    "__imul__": "mul", "__truediv__": "div", "__itruediv__": "div", "__div__": "div",
    "__rtruediv__": "rdiv", "true_divide": "div", "multiply": "mul", "subtract": "sub",
    "__neg__": "neg", "negative": "neg", "__pos__": "pos", "__getitem__": "getitem",
    "__matmul__": "matmul", "__rmatmul__": "matmul", "concat": "cat", "concatenate": "cat",
    "clip": "clamp", "clamp_min": "clamp", "clamp_max": "clamp", "moveaxis": "movedim",
    "swapaxes": "transpose", "swapdims": "transpose", "max_pool2d_with_indices": "max_pool2d",
    "max_pool1d_with_indices": "max_pool1d", "max_pool3d_with_indices": "max_pool3d",
    "native_channel_shuffle": "channel_shuffle",
}


def op_name(func: Any) -> str:
    """The canonical name of a torch function or tensor method ("relu_" -> "relu")."""
    name = getattr(func, "__name__", None) or str(func)
    name = _ALIASES.get(name, name)
    if name.endswith("_") and not name.endswith("__"):
        name = _ALIASES.get(name[:-1], name[:-1])
    return name


def is_inplace(func: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a call overwrites its first argument (``relu_``, ``+=``, ``inplace=True``)."""
    name = getattr(func, "__name__", "") if not isinstance(func, str) else func
    return (bool(kwargs.get("inplace", False)) or name.startswith("__i")
            or (name.endswith("_") and not name.endswith("__")))


def out_of_place(func: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The out-of-place twin of an in-place call (``Tensor.__iadd__`` -> ``Tensor.__add__``,
    ``relu_`` -> ``relu``, ``inplace=True`` -> ``inplace=False``): rules re-run operations on
    copies of their recorded inputs."""
    if kwargs.get("inplace"):
        return func, {**kwargs, "inplace": False}
    name = getattr(func, "__name__", "")
    twin = None
    if name.startswith("__i") and name.endswith("__"):
        twin = getattr(torch.Tensor, "__" + name[3:], None)
    elif name.endswith("_") and not name.endswith("__"):
        twin = getattr(torch.Tensor, name[:-1], None) or getattr(torch, name[:-1], None)
    return (twin or func), kwargs


LINEAR = "linear"          # convolutions and fully connected layers
PASS = "pass"              # element-wise activations, normalisations, dropout, casts
ROUTE = "route"            # operations that only move elements
MAX = "max"                # max pooling
SUM = "sum"                # sums with non-negative weights: average pooling, means, resampling
ARITHMETIC = "arithmetic"  # + - * / with activations or constants
PRODUCT = "product"        # bilinear products of tensors: matmul, bmm, einsum
ATTENTION = "attention"    # fused attention: softmax(q k^T / sqrt(d) + mask) v
UNSUPPORTED = "unsupported"

KINDS_BY_NAME: dict[str, str] = {
    **dict.fromkeys(["conv1d", "conv2d", "conv3d", "linear"], LINEAR),
    **dict.fromkeys([
        "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
        "mish", "hardswish", "hardsigmoid", "sigmoid", "tanh", "hardtanh", "softplus",
        "clamp", "batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm",
        "local_response_norm", "dropout", "dropout1d", "dropout2d", "dropout3d",
        "alpha_dropout", "feature_alpha_dropout", "contiguous", "clone", "to", "float",
        "double", "type", "type_as", "detach", "pos", "stochastic_depth"], PASS),
    **dict.fromkeys([
        "flatten", "unflatten", "view", "view_as", "reshape", "reshape_as", "permute",
        "transpose", "t", "movedim", "cat", "stack", "chunk", "split", "split_with_sizes",
        "tensor_split", "unbind", "getitem", "narrow", "squeeze", "unsqueeze", "expand",
        "expand_as", "repeat", "flip", "roll", "pixel_shuffle", "pixel_unshuffle",
        "channel_shuffle", "pad"], ROUTE),
    **dict.fromkeys([
        "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
        "adaptive_max_pool3d", "amax"], MAX),
    **dict.fromkeys([
        "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
        "adaptive_avg_pool3d", "mean", "sum", "interpolate", "upsample", "upsample_nearest",
        "upsample_bilinear"], SUM),
    **dict.fromkeys(["add", "sub", "rsub", "mul", "div", "neg", "addcmul"], ARITHMETIC),
    **dict.fromkeys(["matmul", "bmm", "einsum"], PRODUCT),
    **dict.fromkeys(["scaled_dot_product_attention", "multi_head_attention_forward"], ATTENTION),
    **dict.fromkeys([
        "_native_multi_head_attention", "_transformer_encoder_layer_fwd", "baddbmm", "softmax",
        "log_softmax"], UNSUPPORTED),
}

#: functions whose result depends on an activation's shape, dtype or device only (a mask built
#: with ``x.new_zeros``): constants, not recorded
CONSTANT_FACTORIES = frozenset([
    "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like", "ones_like",
    "empty_like", "full_like"])

#: the softmax, whose output FG-CAM treats as constant attention weights where it weights a
#: product (:mod:`.attention`)
SOFTMAX = "softmax"

KINDS_BY_MODULE: tuple[tuple[tuple[type, ...], str], ...] = (
    (LINEAR_LAYERS, LINEAR),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
      nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
      nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
      nn.Identity, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
      nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm), PASS),
    ((nn.Flatten, nn.Unflatten, nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle,
      nn.modules.padding._ConstantPadNd), ROUTE),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
      nn.AdaptiveMaxPool3d), MAX),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
      nn.AdaptiveAvgPool3d, nn.Upsample), SUM),
    ((nn.Softmax, nn.LogSoftmax), UNSUPPORTED),
)

#: why an unsupported operation has no rule, and what to use instead
UNSUPPORTED_REASON = (
    "relevance reaches a softmax (or a fused attention kernel) other than as the weights of an "
    "attention product. FG-CAM treats softmax outputs as constant attention weights where they "
    "weight a matmul / bmm / einsum with the values (CP-LRP, Ali et al. 2022); a softmax whose "
    "output is used otherwise, or a kernel such as _native_multi_head_attention, has no "
    "relevance rule. Write the attention as softmax(q @ k.T) @ v or "
    "F.scaled_dot_product_attention, or register a rule for it")


def kind_of(op: Any) -> str | None:
    """The kind of a module or function (None: not in the table)."""
    if isinstance(op, nn.Module):
        for types, kind in KINDS_BY_MODULE:
            if isinstance(op, types):
                return kind
        return None
    return KINDS_BY_NAME.get(op if isinstance(op, str) else op_name(op))
