"""The held-out scene generator: backgrounds and distractors no zoo model is trained on.

``Scenes(style="held-out")`` draws the same object classes as the training generator, on
other backgrounds (plaid and value noise instead of blobs and stripes) among other distractors
(thin arcs, open rectangles, dot clusters instead of lines, dots and ellipses), so a benchmark
on it measures explanations on scenes whose statistics the model has not fitted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Generator, Tensor

from .shapes import ellipse
from .textures import _uniform, textured


def plaid(size: int, g: Generator) -> Tensor:
    """Two perpendicular square waves of random period, angle and colours, multiplied."""
    angle, ramp = _uniform(g, 0.0, math.pi / 2), torch.arange(size, dtype=torch.float32)
    c, s = math.cos(angle), math.sin(angle)
    u = c * ramp[None, :] + s * ramp[:, None]
    v = c * ramp[:, None] - s * ramp[None, :]
    bands = [((axis / _uniform(g, 6.0, 20.0)).floor() % 2) for axis in (u, v)]
    a, b, c2 = (torch.rand(3, 1, 1, generator=g) for _ in range(3))
    return a + (b - a) * bands[0] * 0.6 + (c2 - a) * bands[1] * 0.4


def value_noise(size: int, g: Generator) -> Tensor:
    """A random colour grid of 8 to 24 cells a side, bicubically upsampled: grainy patches."""
    cells = int(torch.randint(8, 25, (), generator=g))
    coarse = torch.rand(1, 3, cells, cells, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]


def held_out_background(size: int, g: Generator) -> Tensor:
    """3 x size x size in [0, 1]: plaid blended with value noise (:func:`textured`)."""
    return textured(plaid, value_noise, size, g)


def _arc(dx: Tensor, dy: Tensor, radius: float, width: float, start: float,
         span: float) -> Tensor:
    """A circular arc of ``radius`` and ``width`` from angle ``start`` over ``span`` radians."""
    r = (dx * dx + dy * dy).sqrt()
    phase = (torch.atan2(dy, dx) - start) % (2 * math.pi)
    return ((r - radius).abs() <= width / 2) & (phase <= span)


def _open_rectangle(dx: Tensor, dy: Tensor, half_w: float, half_h: float, width: float,
                    angle: float) -> Tensor:
    """The outline (``width`` thick) of a rectangle of half-sides ``half_w`` x ``half_h``."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = (c * dx + s * dy).abs(), (c * dy - s * dx).abs()
    inside = (u <= half_w) & (v <= half_h)
    return inside & ((u >= half_w - width) | (v >= half_h - width))


def held_out_distractors(image: Tensor, g: Generator, count: tuple[int, int]) -> Tensor:
    """``image`` (3 x S x S) with a random number in [count) of the held-out distractors."""
    size = image.shape[-1]
    ramp = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    for _ in range(int(torch.randint(*count, (), generator=g))):
        cx, cy, angle, a, b = (torch.rand(5, generator=g) * torch.tensor(
            [size, size, 2 * math.pi, 1.0, 1.0])).tolist()
        dx, dy = xx - cx, yy - cy
        kind = int(torch.randint(3, (), generator=g))
        if kind == 0:
            mask = _arc(dx, dy, size * (0.05 + 0.15 * a), 1.0 + 1.5 * b, angle, math.pi * (0.3 + b))
        elif kind == 1:
            mask = _open_rectangle(dx, dy, size * (0.03 + 0.08 * a), size * (0.03 + 0.08 * b),
                                   1.0 + b, angle)
        else:
            mask = torch.zeros_like(dx, dtype=torch.bool)
            for ox, oy in (torch.randn(4, 2, generator=g) * size * 0.03).tolist():
                mask |= ellipse(dx - ox, dy - oy, 1.2 + 1.5 * a, 1.2 + 1.5 * a, 0.0)
        image = torch.where(mask, torch.rand(3, 1, 1, generator=g), image)
    return image
