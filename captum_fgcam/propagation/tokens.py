"""Token grids: where a layer's output keeps its channels and its spatial positions.

CNN layers return N x C x h x w. Transformers keep tokens channels-last: Swin and timm models
N x h x w x C, ViTs N x L x C with L = P + h w (P prefix tokens: a class token, distillation
or register tokens, in front of the h x w patch tokens). CAM weightings and maps work on the
channels-first grid; relevance moves in the layer's own layout. :class:`TokenLayout` converts
between the two (prefix tokens are not positions of the image: they hold no CAM component,
and maps leave them out).

A layout is read from the value's shape and the image's: the grid's aspect ratio must be the
image's (h / w = H / W up to the rounding of strides, within 25 %), and of two readings that
fit, the one nearer the image's ratio wins (channels-first on a tie).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

CHANNELS_FIRST, CHANNELS_LAST, TOKENS = "channels-first", "channels-last", "tokens"
MAX_PREFIX = 9  # a class token and up to 8 register tokens (or distillation tokens)


def _error(h: int, w: int, image: Sequence[int]) -> float:
    """How far an h x w grid is from covering an H x W image with equal strides:
    |log((H / h) / (W / w))| (0: exactly; strides rounded at odd sizes give a little)."""
    height, width = image
    return abs(math.log(height * w / (width * h))) if h > 0 and w > 0 else math.inf


def _fits(h: int, w: int, image: Sequence[int]) -> bool:
    """Whether an h x w grid covers an H x W image with (about) equal strides."""
    return _error(h, w, image) <= math.log(1.25)


@dataclass(frozen=True)
class TokenLayout:
    """How a layer's output holds its map: ``kind``, and for token sequences the number of
    ``prefix`` tokens and the ``grid`` (h, w) of the rest."""

    kind: str = CHANNELS_FIRST
    prefix: int = 0
    grid: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, value: Tensor, image: Tensor | Sequence[int],
           grids: Collection[tuple[int, int]] = ()) -> TokenLayout:
        """The layout of ``value`` (a batch) for an image batch ``image`` (N x C x H x W, or
        its shape); channels-first for anything that is not an image's token grid.

        ``grids``: the spatial sizes of the model's own grids (:func:`grids_of`, e.g. its
        patch embedding's output); a token sequence then must use one of them. Without them a
        sequence that two prefix counts explain equally well (9 tokens: 3 x 3, or a class
        token, 4 register tokens and 2 x 2) is refused rather than guessed.
        """
        shape = tuple(image.shape) if isinstance(image, Tensor) else tuple(image)
        if len(shape) != 4:  # signals, volumes: channels-first as in CNNs
            return cls()
        size = shape[2:]
        if value.dim() == 4 and _fits(value.shape[1], value.shape[2], size) and \
                _error(value.shape[1], value.shape[2], size) \
                < _error(value.shape[2], value.shape[3], size):
            return cls(CHANNELS_LAST)  # the channels-last reading fits the image better
        if value.dim() == 3:  # the prefix whose grid has the image's aspect ratio, nearest
            fits = []
            for prefix in range(min(MAX_PREFIX, value.shape[1] - 1) + 1):
                count = value.shape[1] - prefix
                h = max(1, round(math.sqrt(count * size[0] / size[1])))
                grid = (h, count // h)
                if count % h == 0 and _fits(*grid, size) and (not grids or grid in grids):
                    fits.append((round(_error(*grid, size), 6), prefix, grid))
            if fits:
                best = min(fits)
                rivals = [f for f in fits if f[0] == best[0] and f != best]
                if rivals and not grids:
                    raise ValueError(
                        f"cannot tell prefix tokens from patch tokens in a sequence of "
                        f"{value.shape[1]} tokens: {best[2][0]} x {best[2][1]} patches after "
                        f"{best[1]} prefix tokens, or {rivals[0][2][0]} x {rivals[0][2][1]} "
                        f"after {rivals[0][1]}. Use FGCam (it reads the model's patch grid), "
                        "or a larger input")
                return cls(TOKENS, best[1], best[2])
        return cls()

    def to_grid(self, t: Tensor) -> Tensor:
        """``t`` in this layout -> N x C x h x w (prefix tokens left out)."""
        if self.kind == CHANNELS_LAST:
            return t.permute(0, 3, 1, 2)
        if self.kind == TOKENS:
            return t[:, self.prefix:].transpose(1, 2).unflatten(2, self.grid)
        return t

    def from_grid(self, t: Tensor) -> Tensor:
        """N x C x h x w -> this layout (prefix tokens 0); the inverse of :meth:`to_grid`."""
        if self.kind == CHANNELS_LAST:
            return t.permute(0, 2, 3, 1)
        if self.kind == TOKENS:
            tokens = t.flatten(2).transpose(1, 2)
            zeros = tokens.new_zeros(tokens.shape[0], self.prefix, tokens.shape[2])
            return torch.cat([zeros, tokens], dim=1) if self.prefix else tokens
        return t


def grids_of(values: Iterable[object]) -> frozenset[tuple[int, int]]:
    """The spatial sizes of a model's 4-D values (both readings: h x w of N x C x h x w, and
    of N x h x w x C), to resolve token sequences (:meth:`TokenLayout.of`)."""
    return frozenset(size for v in values if isinstance(v, Tensor) and v.dim() == 4
                     for size in (tuple(v.shape[2:]), tuple(v.shape[1:3])))


def on_grid(equation: Callable[..., Tensor], image: Tensor, *tensors: Tensor,
            grids: Collection[tuple[int, int]] = ()) -> Tensor:
    """``equation`` applied to ``tensors`` seen as channels-first grids, its result returned
    in the first tensor's layout (a CAM weighting on a layer of any layout)."""
    layout = TokenLayout.of(tensors[0], image, grids)
    return layout.from_grid(equation(*(layout.to_grid(t) for t in tensors)))


def as_grid(t: Tensor, image: Tensor | Sequence[int],
            grids: Collection[tuple[int, int]] = ()) -> Tensor:
    """``t`` (a layer's output, or relevance there) as a channels-first grid."""
    return TokenLayout.of(t, image, grids).to_grid(t)
