"""Random background textures: smooth colour blobs, oriented stripes and pixel noise."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Generator, Tensor


def _uniform(g: Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def blobs(size: int, g: Generator) -> Tensor:
    """A coarse random colour field, bilinearly upsampled: soft blobs of colour."""
    cells = int(torch.randint(3, 9, (), generator=g))
    coarse = torch.rand(1, 3, cells, cells, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]


def stripes(size: int, g: Generator) -> Tensor:
    """Sinusoidal stripes between two random colours, random period and orientation."""
    period, angle = _uniform(g, 4.0, 24.0), _uniform(g, 0.0, math.pi)
    ramp = torch.arange(size, dtype=torch.float32)
    phase = (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]) / period
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * phase + _uniform(g, 0.0, 2 * math.pi))
    a, b = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
    return a + (b - a) * wave


def textured(first: Callable[[int, Generator], Tensor], second: Callable[[int, Generator], Tensor],
             size: int, g: Generator) -> Tensor:
    """3 x size x size in [0, 1]: a random blend of two textures, random contrast and level,
    plus pixel noise."""
    mix = _uniform(g, 0.0, 1.0)
    texture = mix * first(size, g) + (1 - mix) * second(size, g)
    contrast, level = _uniform(g, 0.3, 0.8), _uniform(g, 0.25, 0.75)
    texture = level + contrast * (texture - texture.mean())
    noise = _uniform(g, 0.0, 0.12) * torch.randn(3, size, size, generator=g)
    return (texture + noise).clamp(0, 1)


def background(size: int, g: Generator) -> Tensor:
    """The training generator's background: blobs blended with stripes (:func:`textured`)."""
    return textured(blobs, stripes, size, g)
