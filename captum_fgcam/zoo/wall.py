"""A model that provably cannot see the lower part of its input (seed 001's "wall")."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Wall(nn.Module):
    """Multiplies the input by a fixed 0/1 mask: 1 in rows ``[0, visible_rows)``, 0 below."""

    def __init__(self, height: int, width: int, visible_rows: int) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, height, width)
        mask[..., :visible_rows, :] = 1.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask


class WallNet(nn.Module):
    """``wall`` -> ``features`` -> global average pooling -> ``classifier``.

    Everything after the wall sees zeros below row ``visible_rows``, so the output does not
    depend on those pixels, while the feature maps still span the whole image. Inputs must be
    ``height`` x ``width``.
    """

    def __init__(self, features: nn.Module, classifier: nn.Module, height: int, width: int,
                 visible_rows: int) -> None:
        super().__init__()
        self.wall = Wall(height, width, visible_rows)
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(self.wall(x))), 1))

    def unseen_mask(self, height: int, width: int) -> Tensor:
        """Bool ``height`` x ``width``: the pixels the model cannot see."""
        mask = self.wall.mask[0, 0]
        if mask.shape != (height, width):
            raise ValueError(f"the wall is built for {tuple(mask.shape)} inputs, "
                             f"not {(height, width)}")
        return mask == 0
