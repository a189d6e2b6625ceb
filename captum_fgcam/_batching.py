"""Captum's argument conventions: selecting examples from per-example arguments (targets,
additional forward args), and results that are one tensor or a tuple (one per layer input)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .targets import Target


def take(value: Any, index: slice | Tensor, n: int) -> Any:
    """``value[index]`` for per-example values (tensors or lists of length ``n``);
    anything else (an int target, a constant argument) is shared by all examples; a target
    object keeps its own per-example data (:meth:`~captum_fgcam.targets.Target.take`)."""
    if isinstance(value, Target):
        return value.take(index)
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[index]
    if isinstance(value, list) and len(value) == n:
        if isinstance(index, slice):
            return value[index]
        return [value[i] for i in index.tolist()]
    return value


def take_all(values: tuple[Any, ...] | None, index: slice | Tensor, n: int) -> tuple[Any, ...]:
    return tuple(take(v, index, n) for v in values or ())


def each(fn: Callable[..., Tensor], *values: Tensor | tuple[Tensor, ...]
         ) -> Tensor | tuple[Tensor, ...]:
    """``fn`` applied to a tensor, or element by element to tuples of tensors."""
    if isinstance(values[0], tuple):
        return tuple(fn(*parts) for parts in zip(*values, strict=True))
    return fn(*values)


def finished(relevance: Tensor, attr_dim_summation: bool, relu_attributions: bool) -> Tensor:
    """Captum's post-processing: channels summed (keeping the dimension), then ReLU."""
    if attr_dim_summation:
        relevance = relevance.sum(dim=1, keepdim=True)
    return relevance.clamp(min=0) if relu_attributions else relevance
