"""Captum's argument conventions, written out so that we import nothing private from Captum.

Every attribution takes ``inputs`` (a tensor or a tuple of tensors), ``target`` (which output
is explained) and ``additional_forward_args`` (further arguments of the forward), with the
meanings Captum gives them; these helpers put them into one form, select the targets' scores,
and compute the gradient of those scores at a layer (what CAM weightings need). Each matches
the Captum 0.9 function named in its docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .targets import Target, scores_of

#: a target in one of Captum's forms: None (a model with one output), a class index, a tuple
#: of indices into the output's trailing dimensions, a tensor or a list with one per example;
#: or a target object (:mod:`captum_fgcam.targets`: output -> one score per example)
TargetType = None | int | tuple[int, ...] | Tensor | list[tuple[int, ...]] | list[int] | Target


def input_tuple(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``inputs`` as a tuple of tensors (Captum's ``_format_tensor_into_tuples``)."""
    if isinstance(inputs, tuple):
        return inputs
    if not isinstance(inputs, Tensor):
        raise TypeError("`inputs` must be a torch.Tensor or a tuple[torch.Tensor] but found: "
                        f"{type(inputs)}")
    return (inputs,)


def forward_args_tuple(additional_forward_args: Any) -> tuple[Any, ...] | None:
    """Further forward arguments as a tuple, None as None (Captum's
    ``_format_additional_forward_args``)."""
    if additional_forward_args is None or isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def select_targets(output: Tensor, target: TargetType) -> Tensor:
    """The scores ``target`` selects in ``output`` (N x ...), Captum's ``_select_targets``:
    None: all; an int or a tuple: those trailing indices for every example; a tensor or a list
    of ints, one per example (N x C output): y[n, t_n]; a list of tuples: y[(n, *t_n)]."""
    if target is None:
        return output
    if isinstance(target, Tensor) and target.numel() == 1 \
            and isinstance(target.item(), int):
        target = int(target.item())
    if isinstance(target, (int, tuple)):
        index = (target,) if isinstance(target, int) else target
        if len(index) > output.dim() - 1:
            raise ValueError(f"cannot choose target column with output shape "
                             f"{tuple(output.shape)}")
        return output[(slice(None), *index)]
    n = output.shape[0]
    if isinstance(target, list) and target and isinstance(target[0], tuple):
        if len(target) != n:
            raise ValueError("target list length does not match output")
        return torch.stack([output[(i, *t)] for i, t in enumerate(target)])
    if isinstance(target, list) and target and not isinstance(target[0], int):
        raise ValueError(f"target element type {type(target[0])} in list is not valid")
    if not isinstance(target, (list, Tensor)):
        raise ValueError(f"target type {type(target)} is not valid")
    index = torch.as_tensor(target, device=output.device)
    if index.dim() != 1 or index.numel() != n or output.dim() != 2:
        raise ValueError(f"target of shape {tuple(index.shape)} is not valid for output of "
                         f"shape {tuple(output.shape)} (one index per example of a 2D output)")
    return torch.gather(output, 1, index.reshape(n, 1)).squeeze(-1)


def target_scores(output: Any, target: TargetType) -> Tensor:
    """The explained scores in a model's ``output``: ``target(output)`` for a target object
    (one per example), else Captum's selection (:func:`select_targets`) in its score tensor
    (:func:`~captum_fgcam.targets.scores_of`)."""
    if isinstance(target, Target):
        return target(output)
    return select_targets(scores_of(output), target)


def layer_gradient(forward_func: Callable[..., Any], layer: nn.Module,
                   inputs: Tensor | tuple[Tensor, ...], target: TargetType = None,
                   additional_forward_args: Any = None) -> tuple[Tensor, Tensor]:
    r"""(A, dy/dA): ``layer``'s output A for ``inputs`` and the gradient of the selected scores
    y = \sum_n y_{n, target_n} with respect to it, from one forward and one backward pass
    (Captum's ``compute_layer_gradients_and_eval``, one device).

    A forward hook on ``layer`` records its output (the first tensor of a tuple; the last call
    of a layer that runs several times) and passes a copy on, so that in-place operations
    after it cannot change the recorded value. Use it in a custom CAM weighting, where
    ``layer`` is the CAM layer FG-CAM hands over.
    """
    seen: list[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        for value in outputs:
            if value.is_floating_point() and not value.requires_grad:
                value.requires_grad_()
        seen.append(outputs[0])
        copies = [value.clone() for value in outputs]
        if isinstance(output, Tensor):
            return copies[0]
        return copies if isinstance(output, list) else tuple(copies)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            extra = forward_args_tuple(additional_forward_args) or ()
            output = target_scores(forward_func(*input_tuple(inputs), *extra), target)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"the layer {type(layer).__name__} did not run in the forward pass; "
                         "pass a module the model calls")
    if len({a.device for a in seen}) > 1:
        raise ValueError("the layer ran on several devices (a DataParallel model): pass the "
                         "model itself (model.module)")
    if output[0].numel() != 1:
        raise ValueError("Target not provided when necessary, cannot take gradient with "
                         "respect to multiple outputs.")
    (gradient,) = torch.autograd.grad(torch.unbind(output), seen[-1])
    return seen[-1].detach(), gradient
