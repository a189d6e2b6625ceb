"""Multi-scale FG-CAM (``MultiScaleFGCam``, registry ``FG-X-DM``): one propagation, tapped at
every resolution step, equals the product of separately computed FG-CAM maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import image_batch
from torch import nn

from captum_fgcam import FGCam, FGGradCam, FineGrainedUpsampler, LayerError, MultiScaleFGCam
from captum_fgcam.methods import get_method


def _normalised(m: torch.Tensor) -> torch.Tensor:
    """Per image: (m - min) / (max - min + 1e-7), written out image by image."""
    return torch.stack([(v - v.min()) / (v.max() - v.min() + 1e-7) for v in m])


def _straightforward(model: nn.Module, x: torch.Tensor, target: list[int], scales: list[str],
                     layer: str, to_input: bool) -> torch.Tensor:
    """One FG-Grad-CAM-D call per scale, each ReLU'd, normalised, upsampled, multiplied."""
    maps = [FGGradCam(model, name).attribute(x, target, denoise=True) for name in scales]
    maps.append(FGGradCam(model, layer).attribute(x, target, denoise=True,
                                                  attribute_to_layer_input=to_input))
    size = maps[-1].shape[2:]
    product = torch.ones_like(maps[-1])
    for m in maps:
        up = F.interpolate(_normalised(m.clamp(min=0)), size=size, mode="bilinear",
                           align_corners=False)
        product = product * _normalised(up)
    return _normalised(product)


def _models():
    from captum_fgcam import zoo
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=5).eval()
    return {
        # VGG: the CAM layer, the max pools between, then the layer (or, for the image, the
        # pools down to the first and the image)
        "vgg-13": (zoo.load_model("scenes-vgg16bn"), 96,
                   ["features.43", "features.33", "features.23"], "features.13", False),
        "vgg-image": (zoo.load_model("scenes-vgg16bn"), 96,
                      ["features.43", "features.33", "features.23", "features.13", "features.6"],
                      "features", True),
        "resnet-layer1": (resnet, 64, ["layer4.1", "layer4.0", "layer3", "layer2"], "layer1",
                          False),
    }


@pytest.mark.parametrize("case", ["vgg-13", "vgg-image", "resnet-layer1"])
def test_multiscale_is_the_product_of_the_scales_maps(case):
    model, size, scales, layer, to_input = _models()[case]
    x, target = image_batch(3, size, size), [0, 2, 4]
    ours = MultiScaleFGCam(model, layer).attribute(x, target, denoise=True,
                                                   attribute_to_layer_input=to_input)
    expected = _straightforward(model, x, target, scales, layer, to_input)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=0)
    assert ours.min() >= 0 and ours.amax(dim=(1, 2, 3)).allclose(torch.ones(3), atol=1e-5)


def test_multiscale_batch_equals_per_sample():
    model, size, _, layer, _ = _models()["vgg-13"]
    x, target = image_batch(4, size, size, seed=3), [1, 0, 5, 3]
    fg = MultiScaleFGCam(model, layer)
    batch = fg.attribute(x, target, denoise=True)
    single = torch.cat([fg.attribute(x[i:i + 1], target[i], denoise=True) for i in range(4)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)


def test_multiscale_is_a_method_of_its_own():
    """Scores in [0, 1], not relevance: FG-CAM has no flag that turns into them, and the
    multi-scale map has no per-channel form."""
    model, size, _, layer, _ = _models()["vgg-13"]
    x = image_batch(1, size, size)
    with pytest.raises(TypeError, match="multiscale"):
        FGCam(model, layer).attribute(x, 0, multiscale=True)
    with pytest.raises(TypeError, match="attr_dim_summation"):
        MultiScaleFGCam(model, layer).attribute(x, 0, attr_dim_summation=False)
    fg = MultiScaleFGCam(model, layer, weighting="layer_cam")
    assert fg.cam_layer is None
    fg.attribute(x, 0)
    assert fg.cam_layer is model.features[43]


def test_taps_outside_the_span_are_refused():
    model, size, _, _, _ = _models()["vgg-13"]
    up = FineGrainedUpsampler(model, "features.33", "features.13")
    x = image_batch(1, size, size)
    span = up.span(up.capture((x,)))
    components = torch.ones_like(span.activation())
    _, (tapped,) = up.propagate_with_taps(span, components, ["features.23"])
    assert tapped.shape == FGGradCam(model, "features.23").attribute(x, 0).shape[:1] + \
        tapped.shape[1:]
    for outside in ("features.43", "features.6"):
        with pytest.raises(LayerError, match="cannot tap"):
            up.propagate_with_taps(span, components, [outside])


def test_registry_dm_is_denoised_multiscale():
    model, size, _, layer, _ = _models()["vgg-13"]
    x, target = image_batch(2, size, size), torch.tensor([1, 2])
    method = get_method("fg-grad-cam-multiscale")
    assert method.name == "FG-Grad-CAM-DM" and method.relu
    explain = method.build(model, layer, False, "conserving", x)
    torch.testing.assert_close(
        explain(x, target),
        MultiScaleFGCam(model, layer).attribute(x, target, denoise=True))
