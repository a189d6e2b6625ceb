"""Selecting examples from per-example arguments (targets, additional forward args)."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def take(value: Any, index: slice | Tensor, n: int) -> Any:
    """``value[index]`` for per-example values (tensors or lists of length ``n``);
    anything else (an int target, a constant argument) is shared by all examples."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[index]
    if isinstance(value, list) and len(value) == n:
        if isinstance(index, slice):
            return value[index]
        return [value[i] for i in index.tolist()]
    return value


def take_all(values: tuple[Any, ...] | None, index: slice | Tensor, n: int) -> tuple[Any, ...]:
    return tuple(take(v, index, n) for v in values or ())
