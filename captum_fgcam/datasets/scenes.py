"""`Scenes`: procedural images of shape-defined objects on cluttered textured backgrounds."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Generator, Tensor
from torch.utils.data import Dataset

from .held_out import held_out_background, held_out_distractors
from .shapes import CLASS_SHAPES, class_shape, ellipse, segment
from .textures import background

_SPLITS = {"train": 0, "test": 1}
_STYLES = {"training": 0, "held-out": 1}


class Scenes(Dataset):
    """Procedural scenes, generated on the fly and deterministic by ``(seed, split, index)``.

    Each image shows one or two objects whose class is their *shape* (``Scenes.classes``) with
    random size, position, rotation and colour, on a random texture (colour blobs, stripes,
    noise) cluttered with non-class distractors (thin lines, small dots, elongated ellipses)
    drawn beneath the objects. Items are ``(image, label, mask, box)``:

    - ``image``: float 3 x H x W, normalised with ``Scenes.mean`` / ``Scenes.std`` (or in [0, 1]
      with ``normalize=False``);
    - ``label``: long, the class index; ``mask``: bool H x W, the object's pixels;
    - ``box``: long ``(x0, y0, x1, y1)`` in pixels with exclusive ends, the tight box of ``mask``
      (``mask[y0:y1, x0:x1]`` holds every object pixel).

    With ``objects=2`` the two objects have different classes and never overlap; ``label`` is
    (2,), ``mask`` (2, H, W) and ``box`` (2, 4). With ``wall=True`` every scene holds two objects
    of different classes: one entirely in the visible top rows ``[0, wall_row)`` and one entirely
    in the rows below; ``objects=1`` annotates the visible object only, ``objects=2`` both (the
    visible one first). The splits use separate seed streams, so train and test never share a
    scene; ``seed`` selects another pair of streams.

    Difficulty: ``scale`` = (lo, hi) draws each object's circumradius uniformly in
    [lo, hi] x ``size``; ``clutter`` = (lo, hi) draws the number of distractors in [lo, hi).
    ``style="held-out"`` is a second generator that no zoo model is trained on: plaid and
    value-noise backgrounds and other distractors (thin arcs, open rectangles, dot clusters;
    ``held_out.py``), from its own seed streams. ``Scenes.HARD`` holds the options of the
    harder benchmark: 128 px, radii 0.6 times the default's (objects cover about a third of the
    share of the image they cover by default), three times the clutter.
    """

    HARD: dict = {"size": 128, "scale": (0.06, 0.12), "clutter": (8, 24)}

    classes: tuple[str, ...] = tuple(CLASS_SHAPES)
    mean: tuple[float, float, float] = (0.52, 0.52, 0.51)
    std: tuple[float, float, float] = (0.21, 0.21, 0.21)

    def __init__(self, split: str = "train", objects: int = 1, size: int = 96,
                 length: int = 10_000, seed: int = 0, normalize: bool = True,
                 wall: bool = False, scale: tuple[float, float] = (0.10, 0.20),
                 clutter: tuple[int, int] = (2, 8), style: str = "training") -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if objects not in (1, 2):
            raise ValueError(f"objects must be 1 or 2, got {objects!r}")
        if style not in _STYLES:
            raise ValueError(f"style must be one of {sorted(_STYLES)}, got {style!r}")
        if not 0 < scale[0] <= scale[1] < 0.5:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi < 0.5, got {scale!r}")
        if not 0 <= clutter[0] < clutter[1]:
            raise ValueError(f"clutter must be (lo, hi) with 0 <= lo < hi, got {clutter!r}")
        self.scale, self.clutter, self.style = tuple(scale), tuple(clutter), style
        self.split, self.objects, self.size, self.length = split, objects, size, length
        self.seed, self.normalize, self.wall = seed, normalize, wall
        ramp = torch.arange(size, dtype=torch.float32)
        self._yy, self._xx = torch.meshgrid(ramp, ramp, indexing="ij")

    @property
    def wall_row(self) -> int:
        """First row of the lower part of the image (the part a wall model cannot see)."""
        return self.size // 2

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        g = torch.Generator().manual_seed(self._seed_for(index))
        if self.style == "training":
            image = self._draw_distractors(background(self.size, g), g)
        else:
            image = held_out_distractors(held_out_background(self.size, g), g, self.clutter)
        labels, masks = self._draw_objects(image, g)
        image = (image + 0.02 * torch.randn(image.shape, generator=g)).clamp(0, 1)
        if self.normalize:
            image = self.normalise(image)
        labels, masks = labels[:self.objects], masks[:self.objects]
        boxes = torch.stack([_tight_box(m) for m in masks])
        label, mask = torch.tensor(labels), torch.stack(masks)
        if self.objects == 1:
            return image, label[0], mask[0], boxes[0]
        return image, label, mask, boxes

    @classmethod
    def normalise(cls, image: Tensor) -> Tensor:
        """Images in [0, 1] (..., 3, H, W) to the dataset's normalisation."""
        mean, std = _stats(cls.mean, image), _stats(cls.std, image)
        return (image - mean) / std

    @classmethod
    def denormalize(cls, image: Tensor) -> Tensor:
        """Normalised images (..., 3, H, W) back to [0, 1] (the exact inverse of ``normalise``)."""
        mean, std = _stats(cls.mean, image), _stats(cls.std, image)
        return image * std + mean

    def _seed_for(self, index: int) -> int:
        entropy = [self.seed, _SPLITS[self.split], int(self.wall), index]
        if self.style != "training":  # its own streams; the training style's are unchanged
            entropy.append(_STYLES[self.style])
        hi, lo = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
        return (int(hi) << 31) ^ int(lo)

    def _draw_distractors(self, image: Tensor, g: Generator) -> Tensor:
        size = self.size
        for _ in range(int(torch.randint(*self.clutter, (), generator=g))):
            cx, cy, angle, a, b = (torch.rand(5, generator=g) * torch.tensor(
                [size, size, math.pi, 1.0, 1.0])).tolist()
            dx, dy = self._xx - cx, self._yy - cy
            kind = int(torch.randint(3, (), generator=g))
            if kind == 0:
                mask = segment(dx, dy, size * (0.2 + 0.5 * a), 1.0 + 1.5 * b, angle)
            elif kind == 1:
                mask = dx * dx + dy * dy <= (1.5 + 2.0 * a) ** 2
            else:
                major = size * (0.04 + 0.08 * a)
                mask = ellipse(dx, dy, major, major / (2.5 + 2.0 * b), angle)
            image = torch.where(mask, torch.rand(3, 1, 1, generator=g), image)
        return image

    def _draw_objects(self, image: Tensor, g: Generator) -> tuple[list[int], list[Tensor]]:
        """Draw the scene's objects into ``image`` in place; their classes and masks."""
        count = 2 if self.wall else self.objects
        labels = torch.randperm(len(self.classes), generator=g)[:count].tolist()
        lo, hi = self.scale
        radii = (self.size * (lo + (hi - lo) * torch.rand(count, generator=g))).tolist()
        centres = self._place(radii, g)
        masks = []
        for label, radius, (cx, cy) in zip(labels, radii, centres, strict=True):
            angle = 2 * math.pi * torch.rand((), generator=g).item()
            mask = class_shape(self.classes[label], self._xx - cx, self._yy - cy, radius, angle)
            image[:, mask] = _contrasting_colour(image[:, mask].mean(1), g)[:, None]
            masks.append(mask)
        return labels, masks

    def _place(self, radii: list[float], g: Generator) -> list[tuple[float, float]]:
        """Centres keeping each object inside the image (and its wall region), apart."""
        size, centres = self.size, []
        for k, r in enumerate(radii):
            top, bottom = 0.0, float(size)
            if self.wall:
                top, bottom = (0.0, self.wall_row) if k == 0 else (self.wall_row, size)
            for _ in range(100):
                u, v = torch.rand(2, generator=g).tolist()
                cx, cy = r + u * (size - 2 * r), top + r + v * (bottom - top - 2 * r)
                if all(math.hypot(cx - x, cy - y) >= r + radii[j] + 3
                       for j, (x, y) in enumerate(centres)):
                    break
            centres.append((cx, cy))
        return centres


def _contrasting_colour(behind: Tensor, g: Generator) -> Tensor:
    """The most distant from ``behind`` of four random RGB colours."""
    candidates = torch.rand(4, 3, generator=g)
    return candidates[(candidates - behind).norm(dim=1).argmax()]


def _tight_box(mask: Tensor) -> Tensor:
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return torch.stack([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])


def _stats(values: tuple[float, float, float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(3, 1, 1)
