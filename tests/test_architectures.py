"""FG-CAM on every torchvision classification CNN family: conservation at each stage output."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import image_batch, randomise_batchnorm
from test_model_state import assert_unchanged, snapshot

from captum_fgcam import FGGradCam, find_cam_layer

# Stage outputs (dotted names) per architecture; "input" is the image (the first conv's input).
STAGES = {
    "resnet18": ["maxpool", "layer1", "layer2", "layer3", "layer4"],
    "resnet50": ["maxpool", "layer1", "layer2", "layer3"],
    "resnext50_32x4d": ["layer1", "layer2", "layer3"],
    "wide_resnet50_2": ["layer1", "layer3"],
    "densenet121": ["features.pool0", "features.transition1", "features.transition2",
                    "features.transition3", "features.denseblock4"],
    "mobilenet_v2": ["features.3", "features.6", "features.13", "features.17"],
    "mobilenet_v3_large": ["features.3", "features.6", "features.12", "features.15"],
    "efficientnet_b0": ["features.1", "features.3", "features.5", "features.7"],
    "regnet_y_400mf": ["stem", "trunk_output.block1", "trunk_output.block2",
                       "trunk_output.block3"],
    "convnext_tiny": ["features.1", "features.3", "features.5", "features.7"],
}
CAM_LAYERS = {"resnet18": "layer4.1", "resnet50": "layer4.2", "densenet121": "features.norm5",
              "mobilenet_v2": "features.18.2", "efficientnet_b0": "features.8.2",
              "convnext_tiny": "features.7.2", "regnet_y_400mf":
              "trunk_output.block4.block4-5.activation"}


def make(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    return randomise_batchnorm(model).eval()


def first_conv(model: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("name", list(STAGES))
def test_conservation_at_every_stage(name):
    model = make(name)
    cam = find_cam_layer(model)
    if name in CAM_LAYERS:
        assert cam == CAM_LAYERS[name]
    x = image_batch(1, 64, 64, seed=3)
    comps = FGGradCam(model, cam).attribute(x, 1, attr_dim_summation=False)
    total, scale = float(comps.sum()), float(comps.abs().sum())
    assert scale > 0
    for stage in STAGES[name] + ["input"]:
        layer = first_conv(model) if stage == "input" else stage
        fg = FGGradCam(model, layer, cam_layer=cam)
        got = float(fg.attribute(x, 1, attribute_to_layer_input=stage == "input").sum())
        # z+'s fallback keeps the relevance of neurons a bias drives while every
        # input-weight product is <= 0 (dead channels before depthwise convolutions, e.g.
        # MobileNet), which the reference drops: every stage conserves.
        assert abs(got - total) <= 1e-3 * scale, (stage, got, total)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v3_large",
                                  "efficientnet_b0", "convnext_tiny", "regnet_y_400mf"])
def test_batch_equals_per_sample_and_state_unchanged(name):
    model = make(name)
    before = snapshot(model)
    x = image_batch(2, 64, 80, seed=8)
    fg = FGGradCam(model, first_conv(model))
    batch = fg.attribute(x, [3, 7], attribute_to_layer_input=True)
    single = torch.cat([fg.attribute(x[i:i + 1], t, attribute_to_layer_input=True)
                        for i, t in enumerate([3, 7])])
    assert batch.shape == (2, 1, 64, 80)
    assert torch.allclose(batch, single, atol=1e-5 * float(single.abs().max()), rtol=0)
    assert_unchanged(model, before)


def test_other_input_sizes_resnet():
    model = make("resnet18")
    fg = FGGradCam(model, "layer1")
    for size in [(96, 96), (70, 130)]:
        got = fg.attribute(image_batch(1, *size), 2)
        assert got.shape == (1, 1, -(-size[0] // 4), -(-size[1] // 4))
