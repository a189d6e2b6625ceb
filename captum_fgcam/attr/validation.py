"""Checks that turn bad input into errors that name the problem and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..arguments import TargetType
from ..propagation.views import CONVOLUTION_LAYERS

UNSUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def check_parameters(model: nn.Module) -> None:
    """Refuse NaN or Inf in the model's parameters and buffers, naming them.

    One sum per tensor (NaN and Inf survive a sum; ~3 % of an ``attribute`` call on VGG16-bn,
    ``benchmarks/checks.py``), then the exact test only if a sum is not finite.
    """
    named = [(n, t) for n, t in (*model.named_parameters(), *model.named_buffers())
             if t.is_floating_point() and t.numel()]
    if not named:
        return
    with torch.no_grad():
        sums = torch.stack([t.sum().to(named[0][1].device) for _, t in named])
    if bool(torch.isfinite(sums).all()):
        return
    bad = [n for n, t in named if not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(
            f"the model's {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold NaN or "
            "Inf: every map of this model would be meaningless; reload or repair the weights")


def check_inputs(model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Type, dtype, rank, emptiness, finiteness and device of the inputs, the model's
    precision and the finiteness of its parameters, before any work."""
    first = next((p for p in model.parameters()), None)
    if first is not None and first.dtype in UNSUPPORTED_DTYPES:
        raise TypeError(
            f"the model's parameters are {first.dtype}: half precision is not supported "
            "(relevance ratios lose too many digits); explain a float32 copy, e.g. "
            "copy.deepcopy(model).float(), with float32 inputs")
    conv = next((m for m in model.modules() if isinstance(m, CONVOLUTION_LAYERS)), None)
    image_rank = conv.weight.dim() if conv is not None else None
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"input {i} is a {type(x).__name__}; pass a torch.Tensor")
        if not x.is_floating_point():
            raise TypeError(f"input {i} has dtype {x.dtype}; convert images to float "
                            "(e.g. x.float() / 255, then normalise)")
        if x.dtype in UNSUPPORTED_DTYPES:
            raise TypeError(
                f"input {i} has dtype {x.dtype}: half precision is not supported (relevance "
                "ratios lose too many digits); pass x.float() and a model.float()")
        if first is not None and i == 0 and x.dtype != first.dtype:
            raise TypeError(
                f"input {i} has dtype {x.dtype} but the model's parameters are {first.dtype}; "
                f"convert one of them (x.to({first.dtype}))")
        if i == 0 and image_rank is not None and x.dim() != image_rank:
            raise ValueError(
                f"input has {x.dim()} dimensions but the model's first convolution expects "
                f"{image_rank} (a batch, N x C x H x W for images); add the batch dimension "
                "with x.unsqueeze(0)")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"input {i} has an empty batch (shape {tuple(x.shape)}); pass at "
                             "least one example")
        if first is not None and x.device != first.device:
            raise ValueError(f"input {i} is on {x.device} but the model is on {first.device}; "
                             f"move one of them (x.to({str(first.device)!r}))")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"input {i} contains NaN or Inf; clean the input first")
    check_parameters(model)


def as_target(target: Any) -> TargetType:
    """A target in one of Captum's forms: numpy arrays and numpy integers become tensors and
    ints, an (N, 1) column of indices a vector; floats and booleans (Python, numpy or tensor)
    are refused before any work (a float 1.7 would silently select class 1, a boolean class 0
    or 1)."""
    if isinstance(target, np.ndarray):
        target = torch.as_tensor(target)
    elif isinstance(target, np.integer):
        target = int(target)
    if isinstance(target, (bool, np.bool_)) or (isinstance(target, Tensor)
                                                and target.dtype == torch.bool):
        raise TypeError("target is a boolean; pass class indices as integers")
    if isinstance(target, Tensor):
        if target.is_floating_point():
            raise TypeError(f"target has dtype {target.dtype}; pass class indices as integers "
                            "(e.g. labels.long())")
        if target.dim() == 2 and target.shape[1] == 1:  # a column of class indices
            target = target.flatten()
    if isinstance(target, (float, np.floating)):
        raise TypeError(f"target {target!r} is a float; pass a class index as an integer")
    if isinstance(target, list):
        bad = [t for t in target if isinstance(t, (bool, float, np.bool_, np.floating))]
        if bad:
            raise TypeError(f"target holds {bad[0]!r}; pass class indices as integers")
        return [int(t) if isinstance(t, np.integer) else t for t in target]
    return target


def check_target(target: TargetType, n: int, output: Any, required: bool = True) -> None:
    """Target forms as in Captum, each index within the model's output for ``n`` examples.

    ``required``: a missing target is an error for a model with several outputs (built-in
    weightings explain one class); custom weightings may not need one.
    """
    if not isinstance(output, Tensor) or output.dim() == 0 or output.shape[0] != n:
        raise ValueError(
            f"the model returned {type(output).__name__} of shape "
            f"{tuple(getattr(output, 'shape', ()))} for {n} examples; the forward must return "
            "one row of scores per example")
    classes = output.shape[1] if output.dim() > 1 else 1
    if target is None:
        if required and output[0].numel() != 1:
            raise ValueError(f"the model has {classes} outputs per example: pass target= (a "
                             "class index, or one per example)")
        return
    if isinstance(target, Tensor):
        if target.dtype.is_floating_point:
            raise TypeError(f"target has dtype {target.dtype}; pass class indices as integers "
                            "(e.g. labels.long())")
        if target.numel() != 1 and target.shape[0] != n:
            raise ValueError(f"target has {target.shape[0]} entries for {n} examples; give one "
                             "per example, or a single class for all")
        values = target.flatten().tolist()
    elif isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"target has {len(target)} entries for {n} examples; give one per "
                             "example, or a single class for all")
        values = [t[0] if isinstance(t, tuple) else t for t in target]
    elif isinstance(target, tuple):
        values = [target[0]]
    else:
        values = [target]
    bad = [v for v in values if not 0 <= int(v) < classes]
    if bad:
        raise ValueError(f"target {bad[0]} is out of range: the model has {classes} classes "
                         f"(0 to {classes - 1})")
