"""Shapes as implicit functions on a pixel grid: the object classes and the distractors.

Every function takes the grid's coordinates relative to the shape's centre, in pixels, and
returns a boolean mask. Class shapes are defined in a unit frame (radius 1) that is rotated and
scaled by ``radius``, so a class is its outline, never its colour, size, position or angle.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

ShapeFn = Callable[[Tensor, Tensor], Tensor]


def _disc(u: Tensor, v: Tensor) -> Tensor:
    return u * u + v * v <= 1.0


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.8


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    """Equilateral, circumradius 1: three half-planes at distance 1/2 from the centre."""
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(3):
        a = math.pi / 2 + 2 * math.pi * k / 3
        inside &= u * math.cos(a) + v * math.sin(a) <= 0.5
    return inside


def _cross(u: Tensor, v: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _ring(u: Tensor, v: Tensor) -> Tensor:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55 ** 2)


def _star(u: Tensor, v: Tensor) -> Tensor:
    """Five points at radius 1, inner radius 0.4."""
    phase = torch.atan2(v, u) * (5 / (2 * math.pi))
    tip = (2 * (phase - phase.floor()) - 1).abs()  # 1 at a point, 0 between two points
    return u * u + v * v <= (0.4 + 0.6 * tip ** 1.5) ** 2


CLASS_SHAPES: dict[str, ShapeFn] = {
    "disc": _disc, "square": _square, "triangle": _triangle,
    "cross": _cross, "ring": _ring, "star": _star,
}


def class_shape(name: str, dx: Tensor, dy: Tensor, radius: float, angle: float) -> Tensor:
    """Mask of class shape ``name`` with circumradius ``radius`` rotated by ``angle`` (rad)."""
    c, s = math.cos(angle), math.sin(angle)
    return CLASS_SHAPES[name]((c * dx + s * dy) / radius, (c * dy - s * dx) / radius)


def ellipse(dx: Tensor, dy: Tensor, a: float, b: float, angle: float) -> Tensor:
    """Filled ellipse with semi-axes ``a`` (along ``angle``) and ``b``."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = (c * dx + s * dy) / a, (c * dy - s * dx) / b
    return u * u + v * v <= 1.0


def segment(dx: Tensor, dy: Tensor, length: float, width: float, angle: float) -> Tensor:
    """A straight line of ``length`` and ``width`` centred on the origin."""
    c, s = math.cos(angle), math.sin(angle)
    along, across = c * dx + s * dy, c * dy - s * dx
    return (along.abs() <= length / 2) & (across.abs() <= width / 2)
