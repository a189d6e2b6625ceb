"""Shared fixtures: randomly initialised torchvision models (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

torch.set_num_threads(2)


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters, so BN is not a near-identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def make_vgg(name: str = "vgg16_bn", seed: int = 0, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    return randomise_batchnorm(model, seed).eval()


@pytest.fixture(scope="session")
def vgg16bn() -> nn.Module:
    return make_vgg("vgg16_bn")


def image_batch(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g)


def layer_output(forward_func, layer, inputs) -> torch.Tensor:
    """Run ``forward_func`` once and return what ``layer`` produced (for custom weightings)."""
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        forward_func(*inputs)
    finally:
        handle.remove()
    return acts["a"]


class Crop(nn.Module):
    """Keeps the top half of the image: ``x[:, :, :H // 2]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : x.shape[2] // 2]


class Wall(nn.Module):
    """Multiplies 16 x 16 images by a fixed 0/1 mask that hides rows 8 to 15."""

    def __init__(self) -> None:
        super().__init__()
        visible = torch.ones(1, 1, 16, 16)
        visible[..., 8:, :] = 0
        self.register_buffer("visible", visible)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.visible


class BehindFront(nn.Module):
    """A small CNN behind a ``front`` module that hides part of the image (Crop, Wall)."""

    def __init__(self, front: nn.Module) -> None:
        super().__init__()
        self.front = front
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.front(x)).mean((2, 3)))
