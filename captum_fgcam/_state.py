"""Give the user's model back exactly as it was."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore buffers (e.g. BatchNorm running statistics) and ``training`` flags on exit.

    Attribution only runs the model, so parameters, hooks and ``requires_grad`` are never
    touched; buffers can change when a model in training mode runs BatchNorm, so they are
    copied back, also when an exception (or KeyboardInterrupt) leaves the block. The block
    runs outside ``torch.inference_mode()`` (attribution needs autograd), also when the call
    comes from inside one.
    """
    if model.training:
        warnings.warn(
            "the model is in training mode: BatchNorm uses batch statistics and Dropout is "
            "active during attribution; call model.eval() to explain the deployed model",
            stacklevel=3)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.inference_mode(False):
            yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                saved = buffers.get(name)
                if saved is not None and not torch.equal(b, saved):
                    b.copy_(saved)
        for m, mode in modes.items():
            m.training = mode


def usable(t: Tensor) -> Tensor:
    """``t``, or where it was made under ``torch.inference_mode()`` a copy made outside it:
    autograd cannot save inference tensors, and attribution needs autograd (same values)."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()
