"""Invariants: conservation, batch = per-sample, any input size, same code for every device."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam
from conftest import image_batch

from captum_fgcam import FGCam, FGGradCam, FineGrainedUpsampler


def _layers(model):
    return [(model.features[i], False) for i in (43, 33, 23, 13, 6)] + [(model.features[0], True)]


@pytest.mark.parametrize("weighting", ["grad_cam", "grad_cam++", "xgrad_cam", "layer_cam"])
def test_conservation_at_every_layer(vgg16bn, weighting):
    x = image_batch(2, 96, 96, seed=2)
    target = torch.tensor([1, 7])
    comps = FGCam(vgg16bn, vgg16bn.features[43], weighting=weighting).attribute(
        x, target=target, attr_dim_summation=False)
    total, scale = comps.sum(dim=(1, 2, 3)), comps.abs().sum(dim=(1, 2, 3))
    assert scale.min() > 0
    for layer, to_input in _layers(vgg16bn):
        got = FGCam(vgg16bn, layer, weighting=weighting).attribute(
            x, target=target, attribute_to_layer_input=to_input)
        assert torch.allclose(got.sum(dim=(1, 2, 3)), total, atol=1e-4 * scale.max(), rtol=0)


def test_conservation_fails_for_a_non_conserving_rule(vgg16bn):
    """Control: LRP-epsilon with a large epsilon absorbs relevance, and the check sees it."""
    from captum_fgcam import EpsilonRule

    x = image_batch(1, 64, 64)
    comps = FGGradCam(vgg16bn, vgg16bn.features[43]).attribute(x, 3, attr_dim_summation=False)
    eps = FGGradCam(vgg16bn, vgg16bn.features[13],
                    rules={torch.nn.Conv2d: EpsilonRule(10.0)}).attribute(x, 3)
    assert not torch.allclose(eps.sum(), comps.sum(), atol=1e-4 * comps.abs().sum(), rtol=0)


@pytest.mark.parametrize("kwargs", [{}, {"denoise": True, "denoise_rank": 2}])
def test_batch_equals_per_sample(vgg16bn, kwargs):
    x = image_batch(3, 96, 96, seed=4)
    target = [2, 5, 2]
    for layer, to_input in [(vgg16bn.features[23], False), (vgg16bn.features[0], True)]:
        fg = FGGradCam(vgg16bn, layer)
        batch = fg.attribute(x, target=target, attribute_to_layer_input=to_input, **kwargs)
        single = torch.cat([fg.attribute(x[i:i + 1], target=target[i],
                                         attribute_to_layer_input=to_input, **kwargs)
                            for i in range(3)])
        assert torch.allclose(batch, single, atol=1e-5 * single.abs().max(), rtol=0)


@pytest.mark.parametrize("size", [(160, 160), (224, 288), (97, 131)])
def test_any_input_size(vgg16bn, size):
    x = image_batch(1, *size, seed=9)
    fg = FGGradCam(vgg16bn, vgg16bn.features[0])
    got = fg.attribute(x, target=0, attribute_to_layer_input=True)
    assert got.shape == (1, 1, *size)
    comps = FGGradCam(vgg16bn, vgg16bn.features[43]).attribute(x, 0, attr_dim_summation=False)
    assert torch.allclose(got.sum(), comps.sum(), atol=1e-4 * comps.abs().sum(), rtol=0)


def test_output_shapes_and_dtype(vgg16bn):
    x = image_batch(2, 224, 224)
    assert FGGradCam(vgg16bn, vgg16bn.features[13]).attribute(x, 1).shape == (2, 1, 56, 56)
    per_channel = FGGradCam(vgg16bn, vgg16bn.features[13]).attribute(
        x, 1, attr_dim_summation=False)
    assert per_channel.shape == (2, 128, 56, 56) and per_channel.dtype == torch.float32
    image = FGGradCam(vgg16bn, vgg16bn.features[0]).attribute(
        x, 1, attribute_to_layer_input=True, attr_dim_summation=False)
    assert image.shape == x.shape  # same shape as the input: usable by captum.metrics
    relu = FGGradCam(vgg16bn, vgg16bn.features[13]).attribute(x, 1, relu_attributions=True)
    assert relu.min() >= 0


def test_upsampler_accepts_captum_layer_grad_cam_components(vgg16bn):
    x = image_batch(2, 96, 96)
    comps = LayerGradCam(vgg16bn, vgg16bn.features[43]).attribute(
        x, target=4, attr_dim_summation=False).detach()
    up = FineGrainedUpsampler(vgg16bn, vgg16bn.features[43], "features.13")
    got = up.attribute(x, comps)
    expected = FGGradCam(vgg16bn, vgg16bn.features[13]).attribute(x, target=4)
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="components have shape"):
        up.attribute(x, comps[:, :3])


def test_output_follows_input_device_and_code_path_is_device_agnostic(vgg16bn):
    """The same code runs on CUDA when available (tested there by the device job)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = vgg16bn.to(device)
    x = image_batch(1, 64, 64).to(device)
    got = FGGradCam(model, model.features[0]).attribute(x, 3, attribute_to_layer_input=True)
    assert got.device == x.device
    vgg16bn.to("cpu")
