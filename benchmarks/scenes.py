"""Shared helper for the diagnosis scripts: a zoo model and its held-out scenes as tensors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_fgcam import zoo


def held_out(name: str, images: int) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """(model, images N x 3 x H x W, labels N, object masks N x H x W) of zoo model ``name``."""
    scenes = zoo.scenes(name, "test", length=images)
    items = [scenes[i] for i in range(images)]
    return (zoo.load_model(name), torch.stack([it[0] for it in items]),
            torch.stack([it[1] for it in items]), torch.stack([it[2] for it in items]))
