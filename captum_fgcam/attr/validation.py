"""Checks that turn bad input into errors that name the problem and the fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._state import usable
from ..arguments import TargetType, select_targets
from ..propagation.capture import refuse_non_finite
from ..propagation.views import CONVOLUTION_LAYERS
from ..targets import Target, scores_of, target_object

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


def check_inputs(model: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Type, dtype, rank, emptiness, finiteness and device of the inputs, the model's
    precision and the finiteness of its parameters, before any work; returns the inputs,
    those made under ``torch.inference_mode()`` copied outside it (autograd may use them)."""
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
    return tuple(usable(x) for x in inputs)


def as_target(target: Any, n: int | None = None, model: Any = None) -> TargetType:
    """The one normalisation of a target, run by every entry point (attributions, registry,
    Quantus adapter, metrics) before any work: Captum's forms, checked, in one canonical form.

    Accepted: None; a class index (a Python or numpy integer, a 0-d or one-element integer
    tensor) -> int; a tuple of indices into an output with several dimensions per example;
    one class per example (a 1-d integer tensor, an (N, 1) column, a numpy array, a list of
    ints) -> a 1-d int64 tensor of length ``n``; a list of tuples (one multi-dimensional index
    per example). Refused, naming the fix: negative indices (Python's counting from the end is
    not a class index, and would explain the last class in some methods only), floats and
    booleans (1.7 or True would select class 1), uint8 tensors (how masks and images are
    stored, not labels), (N, k > 1) tensors, a length other than ``n``, strings and other
    objects. A tensor made under ``torch.inference_mode()`` is copied outside it. A target
    object (:mod:`captum_fgcam.targets`) is kept, after checking that ``model`` (if given) can
    give what it reads (a detector in eval mode); a plain function ``output -> scores``
    becomes one.
    """
    if target is None:
        return None
    obj = target_object(target)
    if obj is not None:
        obj.check_model(model)
        return obj
    if isinstance(target, np.ndarray):
        if target.dtype.kind not in "biuf":
            raise TypeError(f"target is a numpy array of {target.dtype}; pass class indices "
                            "as integers")
        target = torch.as_tensor(target)
    if isinstance(target, Tensor):
        return _tensor_target(usable(target), n)
    if isinstance(target, tuple):
        if not target:
            raise ValueError("target is an empty tuple; pass a class index (an int), or one "
                             "index per output dimension")
        return tuple(_index(t) for t in target)
    if isinstance(target, list):
        if n is not None and len(target) != n:
            raise ValueError(f"target has {len(target)} entries for {n} examples; give one per "
                             "example, or a single class for all")
        if target and all(isinstance(t, tuple) for t in target):
            if len({len(t) for t in target}) > 1 or not target[0]:
                raise ValueError("target's tuples differ in length (or are empty); give one "
                                 "index per output dimension for every example")
            return [tuple(_index(i) for i in t) for t in target]
        return torch.tensor([_index(t) for t in target], dtype=torch.long)
    return _index(target)


def _index(value: Any) -> int:
    """One class index as an int, or an error naming what it is and what to pass."""
    if isinstance(value, Tensor) and value.dim() == 0:
        value = _tensor_target(value, None)
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"target {value!r} is a boolean; pass class indices as integers")
    if isinstance(value, (float, np.floating)):
        raise TypeError(f"target {value!r} is a float; pass a class index as an integer")
    if isinstance(value, (str, bytes)):
        raise TypeError(f"target {value!r} is a string; pass class indices as integers "
                        f"(with a list of class names: names.index({value!r}))")
    if not isinstance(value, (int, np.integer)):
        raise TypeError(f"target is a {type(value).__name__}; pass a class index (an int), "
                        "a tuple of indices, or one per example (a tensor or a list)")
    if value < 0:
        raise ValueError(f"target {int(value)} is out of range: class indices count from 0 "
                         "(negative ones, Python's counting from the end, are not supported; "
                         "for the last class pass classes - 1)")
    return int(value)


def _tensor_target(target: Tensor, n: int | None) -> int | Tensor:
    """A tensor target as an int (one element) or a 1-d int64 tensor (one per example)."""
    if target.dtype == torch.bool:
        raise TypeError("target is a boolean tensor; pass class indices as integers")
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"target has dtype {target.dtype}; pass class indices as integers "
                        "(e.g. labels.long())")
    if target.dtype == torch.uint8:
        raise TypeError("target has dtype torch.uint8, the dtype of masks and images, not of "
                        "class indices; if it holds labels, pass target.long()")
    if target.dim() == 2 and target.shape[1] == 1:  # a column of class indices
        target = target.flatten()
    if target.numel() == 1:
        return _index(int(target.item()))
    if target.dim() != 1:
        raise ValueError(f"target has shape {tuple(target.shape)}; pass one class index per "
                         "example (shape (N,)), or for an output with several dimensions per "
                         "example a list of tuples, one per example")
    if n is not None and target.shape[0] != n:
        raise ValueError(f"target has {target.shape[0]} entries for {n} examples; give one per "
                         "example, or a single class for all")
    if bool((target < 0).any()):
        _index(int(target.min()))  # names the negative index
    return target.long()


def check_target(target: TargetType, n: int | None, output: Any, required: bool = True) -> None:
    """A normalised target (:func:`as_target`) against the model's output for ``n`` examples
    (None: any number of rows): every index within its dimension, one score per example.

    ``required``: a missing target is an error for a model with several outputs (built-in
    weightings explain one class); custom weightings may not need one.
    """
    if not isinstance(output, Tensor) or output.dim() == 0 \
            or (n is not None and output.shape[0] != n):
        raise ValueError(
            f"the model returned {type(output).__name__} of shape "
            f"{tuple(getattr(output, 'shape', ()))} for {n} examples; the forward must return "
            "one row of scores per example")
    dims = tuple(output.shape[1:])
    if target is None:
        if required and output[0].numel() != 1:
            raise ValueError(f"the model has {output[0].numel()} outputs per example: pass "
                             "target= (a class index, or one per example)")
        return
    if isinstance(target, Tensor):
        indices = [(int(target.max()),)]
        if len(dims) != 1:
            raise ValueError(f"target has one class index per example, but the model's "
                             f"output has shape {tuple(output.shape)}; pass a list of tuples, "
                             f"one index per output dimension for each example")
    elif isinstance(target, list):
        indices = target
    else:
        indices = [target if isinstance(target, tuple) else (target,)]
    for index in indices:
        if len(index) > len(dims) or (required and len(index) != len(dims)):
            raise ValueError(f"target {index if len(index) > 1 else index[0]} has {len(index)} "
                             f"{'index' if len(index) == 1 else 'indices'} but the model's "
                             f"output has {len(dims)} dimension(s) per example, shape "
                             f"{tuple(output.shape)}; give one index per dimension")
        for i, size in zip(index, dims, strict=False):
            if i >= size:
                raise ValueError(f"target {i} is out of range: the model has {size} classes "
                                 f"(0 to {size - 1})" if len(dims) == 1 else
                                 f"target index {i} is out of range for an output dimension "
                                 f"of size {size} (0 to {size - 1})")



def object_scores(target: Target, output: Any, n: int) -> Tensor:
    """A target object's scores in the real input's ``output``, after its own check
    (:meth:`~captum_fgcam.targets.Target.check`: it selects something): one float score
    per example."""
    target.check(output)
    scores = target(output)
    if scores.shape[0] != n:
        raise ValueError(f"the target {target!r} returned {scores.shape[0]} scores for {n} "
                         f"examples; a target returns one float score per example, shape "
                         f"({n},)")
    return scores


def explained_scores(output: Any, target: TargetType, n: int,
                     locate: Callable[[], str], required: bool = True) -> Tensor:
    """The scores explained in the real input's ``output``, y_n, after every check: a target
    object's (:func:`object_scores`), Captum's targets against the score tensor
    (:func:`check_target`); NaN or Inf refused, located by ``locate``. Call it under
    autograd for a gradient."""
    if isinstance(target, Target):
        scores = object_scores(target, output, n)
        refuse_non_finite(scores, "the target's scores", locate)
        return scores
    scores = scores_of(output)
    check_target(target, n, scores, required)
    refuse_non_finite(scores, "the model's scores", locate)
    return select_targets(scores, target)
