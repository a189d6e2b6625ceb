"""Torchvision detectors, recorded from the user's pixels.

A torchvision detector (Faster / Mask / Keypoint R-CNN, RetinaNet, FCOS, SSD, SSDlite)
normalises, resizes and batches the images inside its ``GeneralizedRCNNTransform``; the
batching copies each resized image into a zero-filled tensor in place, which no recording can
follow (the copy writes an activation into a constant). :func:`recordable` returns a view of
the detector that batches with zero padding (``F.pad``) and ``torch.stack`` instead, the same
values, so that relevance reaches the pixels of the image the user passed (normalisation and
``F.interpolate``, exactly as torchvision calls them, stay on the path). The view shares the
detector's modules and names (``backbone.body.layer4``); the detector itself is not changed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def is_torchvision_detector(model: nn.Module) -> bool:
    """Whether ``model`` batches its images with torchvision's detection transform."""
    transform = getattr(model, "transform", None)
    return type(transform).__name__ == "GeneralizedRCNNTransform" and not isinstance(
        model, RecordableDetector)


class _PaddedBatching(nn.Module):
    """The detector's transform with ``batch_images`` as zero padding and a stack."""

    def __init__(self, transform: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "original", transform)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "original"), name)

    def forward(self, images: list[Tensor], targets: Any = None) -> Any:
        return type(self.original).forward(self, images, targets)

    def batch_images(self, images: list[Tensor], size_divisible: int = 32) -> Tensor:
        """The images padded with zeros at the bottom and right to the largest size, rounded
        up to ``size_divisible``, and stacked (``GeneralizedRCNNTransform.batch_images``)."""
        h = int(math.ceil(max(i.shape[-2] for i in images) / size_divisible) * size_divisible)
        w = int(math.ceil(max(i.shape[-1] for i in images) / size_divisible) * size_divisible)
        return torch.stack([F.pad(i, (0, w - i.shape[-1], 0, h - i.shape[-2]))
                            for i in images])


class RecordableDetector(nn.Module):
    """A torchvision detector that takes an image batch (N x 3 x H x W, values in [0, 1]) and
    returns its detections, batching with recordable operations (see the module docstring)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "detector", detector)
        for name, child in detector.named_children():  # the same modules, the same names
            self._modules[name] = child
        self._modules["transform"] = _PaddedBatching(detector.transform)
        self.training = detector.training

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "detector"), name)

    def forward(self, images: Tensor | list[Tensor], *args: Any) -> Any:
        if isinstance(images, Tensor):
            images = list(images.unbind(0))
        return type(self.detector).forward(self, images, *args)


def recordable(model: nn.Module) -> nn.Module:
    """``model``, or for a torchvision detector its :class:`RecordableDetector` view."""
    return RecordableDetector(model) if is_torchvision_detector(model) else model
