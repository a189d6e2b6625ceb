"""The newer rivals and the seed papers' baselines: HiResCAM, RefineCAM, Guided Grad-CAM,
cross-checked against pytorch-grad-cam and Captum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import image_batch
from torch import nn

from captum_fgcam import FGCam, HiResCam, RefineCam
from captum_fgcam.attr.refine import find_refine_layers
from captum_fgcam.methods import INPUT, explainers

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    from captum_fgcam import zoo
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=5).eval()
    vgg = zoo.load_model("scenes-vgg16bn")
    return {"scenes-vgg16bn": (vgg, image_batch(2, 96, 96)),
            "resnet18": (resnet, image_batch(2, 64, 64))}


@pytest.mark.parametrize("name", ["scenes-vgg16bn", "resnet18"])
def test_hirescam_equals_pytorch_grad_cam(name):
    model, x = models()[name]
    layer = "features.33" if name == "scenes-vgg16bn" else "layer3"
    target = [1, 3]
    ours = HiResCam(model, model.get_submodule(layer)).attribute(x, target, relu_attributions=True)
    theirs = pgc.HiResCAM(model, [model.get_submodule(layer)])(
        input_tensor=x, targets=[ClassifierOutputTarget(t) for t in target])
    # pytorch-grad-cam min-max scales each map, resizes it, and scales it again
    size = x.shape[2:]
    scaled = _minmax(torch.nn.functional.interpolate(_minmax(ours), size=size, mode="bilinear",
                                                     align_corners=False))[:, 0]
    np.testing.assert_allclose(scaled.numpy(), theirs, atol=1e-4)


def _minmax(c: torch.Tensor) -> torch.Tensor:
    flat = c.flatten(1) - c.flatten(1).amin(1, keepdim=True)
    return (flat / (flat.amax(1, keepdim=True) + 1e-7)).view_as(c)


@pytest.mark.parametrize("name", ["scenes-vgg16bn", "resnet18"])
@pytest.mark.parametrize("base", ["Grad-CAM", "Grad-CAM++"])
def test_refinecam_equals_pytorch_grad_cam(name, base):
    """Same layers and base method. With Grad-CAM as the base the maps agree to round-off
    (OpenCV's resize against torch's); with Grad-CAM++ (the default) pytorch-grad-cam adds 1e-6
    to the alpha denominator g^2 / (2 g^2 + sum(A) g^3), which matters where g^2 is ~1e-6: up
    to 0.012 on these [0, 1] maps (docs/peers.md)."""
    from captum.attr import LayerGradCam

    from captum_fgcam import GradCamPlusPlus
    model, x = models()[name]
    layers = find_refine_layers(model, None, x[:1])
    ours_base, their_base = {"Grad-CAM": (LayerGradCam, pgc.GradCAM),
                             "Grad-CAM++": (GradCamPlusPlus, pgc.GradCAMPlusPlus)}[base]
    target = [1, 3]
    ours = RefineCam(model, layers, base=ours_base).attribute(x, target, size=x.shape[2:])[:, 0]
    theirs = pgc.RefineCAM(model, [model.get_submodule(n) for n in layers],
                           base_method=their_base)(
        input_tensor=x, targets=[ClassifierOutputTarget(t) for t in target])
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4 if base == "Grad-CAM" else 0.02)


def test_refine_layers():
    model, x = models()["scenes-vgg16bn"]
    assert find_refine_layers(model, None, x[:1]) == [
        "features.43", "features.33", "features.23", "features.13", "features.6"]
    assert find_refine_layers(model, "features.23", x[:1]) == [
        "features.43", "features.33", "features.23"]
    resnet, xr = models()["resnet18"]
    assert find_refine_layers(resnet, "layer2", xr[:1]) == ["layer4.1", "layer4.0", "layer3",
                                                            "layer2"]


def test_fg_hirescam_conserves_its_components():
    """FG-HiResCAM propagates the element-wise components g * A; with the conserving rules
    the input map sums to their sum."""
    model, x = models()["scenes-vgg16bn"]
    fg = FGCam(model, "features", weighting="hires_cam")
    pixels = fg.attribute(x, [1, 3], attribute_to_layer_input=True)
    cam = FGCam(model, "features.43", weighting="hires_cam").attribute(x, [1, 3])
    torch.testing.assert_close(pixels.sum((1, 2, 3)), cam.sum((1, 2, 3)), rtol=1e-4, atol=1e-5)


def test_guided_grad_cam_is_captums():
    from captum.attr import GuidedGradCam
    model, x = models()["scenes-vgg16bn"]
    pairs = explainers(model, ["Guided Grad-CAM", "Guided FG-Grad-CAM"], [INPUT], x[:1])
    target = torch.tensor([1, 3])
    want = GuidedGradCam(model, model.features[43]).attribute(
        x, target, interpolate_mode="bilinear").sum(1, keepdim=True)
    torch.testing.assert_close(pairs["Guided Grad-CAM", INPUT](x, target), want)
    guided_fg = pairs["Guided FG-Grad-CAM", INPUT](x, target)
    assert guided_fg.shape == (2, 1, 96, 96) and torch.isfinite(guided_fg).all()


# -- Conceptor-CAM (our reading of the abstract) --------------------------------------------

def test_conceptor_boolean_operations_on_commuting_matrices():
    """Diagonal conceptors: C = r / (r + a^-2), NOT = 1 - c, AND = c b / (c + b - c b)."""
    from captum_fgcam.weightings.conceptor import conceptor, conceptor_and, conceptor_not
    r = torch.diag(torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64))
    c = conceptor(r, aperture=2.0)
    cd = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    cd = cd / (cd + 0.25)
    torch.testing.assert_close(c, torch.diag(cd))
    b = torch.diag(torch.tensor([0.3, 0.9, 0.6], dtype=torch.float64))
    want = cd * b.diagonal() / (cd + b.diagonal() - cd * b.diagonal())
    torch.testing.assert_close(conceptor_and(c, b), torch.diag(want), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(conceptor_not(c), torch.diag(1 - cd))


def test_conceptor_cam_reduces_to_grad_cam_without_competitor_at_wide_aperture():
    """No pseudo-negative evidence and alpha -> infinity: C -> I, so E -> w A (Grad-CAM)."""
    from captum_fgcam.weightings import ConceptorWeighting, grad_cam
    torch.manual_seed(0)
    a = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    g = torch.randn(2, 4, 5, 5, dtype=torch.float64).abs() + 0.1  # all weights positive
    e = ConceptorWeighting(aperture=1e4).components(a, g, -g)  # competitor: no positive weight
    torch.testing.assert_close(e, grad_cam.components(a, g), rtol=1e-4, atol=1e-8)
    # a competitor sharing the target's evidence removes it
    shared = ConceptorWeighting(aperture=1.0).components(a, g, g)
    assert shared.abs().sum() < 0.5 * grad_cam.components(a, g).abs().sum()


def test_conceptor_cam_plain_and_fine_grained():
    from captum_fgcam import ConceptorCam
    model, x = models()["scenes-vgg16bn"]
    plain = ConceptorCam(model, model.features[43]).attribute(x, [1, 3])
    components = FGCam(model, "features.43", weighting="conceptor").attribute(x, [1, 3])
    torch.testing.assert_close(plain, components, rtol=1e-5, atol=1e-7)
    pixels = FGCam(model, "features", weighting="conceptor").attribute(
        x, [1, 3], attribute_to_layer_input=True)
    torch.testing.assert_close(pixels.sum((1, 2, 3)), plain.sum((1, 2, 3)), rtol=1e-4,
                               atol=1e-5)


def test_the_zplus_preset_changes_only_the_first_layer():
    """rules="zplus": z+ instead of z^B where the image enters; the same map at layers the
    first convolution does not reach, a different one at the pixels, both conserving."""
    model, x = models()["scenes-vgg16bn"]
    target = [1, 3]
    for layer, same in [("features.13", True), ("features", False)]:
        to_input = layer == "features"
        maps = {rules: FGCam(model, layer, rules=rules).attribute(
            x, target, attribute_to_layer_input=to_input) for rules in ("conserving", "zplus")}
        assert torch.equal(maps["conserving"], maps["zplus"]) == same
        torch.testing.assert_close(maps["zplus"].sum((1, 2, 3)), maps["conserving"].sum((1, 2, 3)),
                                   rtol=1e-4, atol=1e-5)
