"""The engine against an independent plain-loop implementation of spec section 2."""

from __future__ import annotations

import pytest
import reference
import torch
from conftest import image_batch, make_vgg

from captum_fgcam import FGGradCam, FGScoreCam
from captum_fgcam.denoising import denoise_rank_count


def assert_close_to_reference(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """float32 round-off: max |diff| <= 1e-5 x max |map|."""
    assert ours.shape == ref.shape
    scale = ref.abs().max()
    assert scale > 0, "the reference map is all zero: the test would prove nothing"
    err = (ours - ref).abs().max()
    assert err <= 1e-5 * scale, f"max abs diff {err:.3g} vs max |map| {scale:.3g}"


def reference_map(model, x, components, index: int) -> torch.Tensor:
    """Map at the output of features[index] (index = -1: the input image)."""
    stop = 0 if index == -1 else index + 1
    return reference.fg_cam(model, x, components, stop).sum(dim=1, keepdim=True)


def ours(cls, model, x, target, index: int, **kwargs) -> torch.Tensor:
    layer = model.features[0] if index == -1 else model.features[index]
    return cls(model, layer, rules="reference").attribute(
        x, target=target, attribute_to_layer_input=index == -1, **kwargs)


VGG16_LAYERS = [43, 33, 23, 13, -1]


@pytest.fixture(scope="module")
def grad_case(vgg16bn):
    x = image_batch(2, 224, 224)
    target = vgg16bn(x).argmax(dim=1)
    return x, target, reference.grad_cam_components(vgg16bn, x, target)


@pytest.mark.parametrize("index", VGG16_LAYERS)
def test_fg_grad_cam_matches_reference_vgg16bn(vgg16bn, grad_case, index):
    x, target, comps = grad_case
    assert_close_to_reference(ours(FGGradCam, vgg16bn, x, target, index),
                              reference_map(vgg16bn, x, comps, index))


@pytest.mark.parametrize("index", VGG16_LAYERS)
def test_fg_grad_cam_denoised_matches_reference_vgg16bn(vgg16bn, grad_case, index):
    x, target, comps = grad_case
    d = denoise_rank_count(0.1, 512, 49)
    assert d == 4  # the paper's "top 10 %" at 224 px
    ref = reference_map(vgg16bn, x, reference.denoise(comps, d), index)
    assert_close_to_reference(ours(FGGradCam, vgg16bn, x, target, index, denoise=True), ref)


def test_fg_grad_cam_denoised_keep_mean_matches_reference(vgg16bn, grad_case):
    # "keep-mean": the paper's low-rank part plus each channel's mean over positions
    x, target, comps = grad_case
    d = denoise_rank_count(0.1, 512, 49)
    kept = reference.denoise(comps, d) + comps.double().mean(dim=(2, 3), keepdim=True).float()
    index = VGG16_LAYERS[len(VGG16_LAYERS) // 2]
    got = ours(FGGradCam, vgg16bn, x, target, index, denoise="keep-mean")
    assert_close_to_reference(got, reference_map(vgg16bn, x, kept, index))
    paper = ours(FGGradCam, vgg16bn, x, target, index, denoise=True)
    assert (got - paper).abs().max() > 1e-3 * paper.abs().max()  # the means matter


@pytest.fixture(scope="module")
def score_case(vgg16bn):
    x = image_batch(1, 64, 64, seed=3)
    target = vgg16bn(x).argmax(dim=1)
    return x, target, reference.score_cam_components(vgg16bn, x, target)


def test_score_cam_components_match_reference(vgg16bn, score_case):
    x, target, comps = score_case
    fg = FGScoreCam(vgg16bn, vgg16bn.features[43], batch_size=200)
    got = fg.attribute(x, target=target, attr_dim_summation=False)
    assert_close_to_reference(got, comps)


@pytest.mark.parametrize("index,denoise", [(-1, False), (13, True)])
def test_fg_score_cam_matches_reference_vgg16bn(vgg16bn, score_case, index, denoise):
    # Score-CAM weights do not depend on the layer; one shallow layer with denoising and the
    # input without it cover the end-to-end path (the others are covered by Grad-CAM above).
    x, target, comps = score_case
    if denoise:
        comps = reference.denoise(comps, denoise_rank_count(0.1, 512, 4))
    fg = FGScoreCam(vgg16bn, vgg16bn.features[0] if index == -1 else vgg16bn.features[index],
                    batch_size=256, rules="reference")
    got = fg.attribute(x, target=target, attribute_to_layer_input=index == -1, denoise=denoise)
    assert_close_to_reference(got, reference_map(vgg16bn, x, comps, index))


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg19", "vgg19_bn"])
def test_other_vggs_match_reference(name):
    model = make_vgg(name, seed=5)
    x = image_batch(2, 64, 64, seed=7)
    target = model(x).argmax(dim=1)
    comps = reference.grad_cam_components(model, x, target)
    pools = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
    for index in pools + [-1]:
        for denoise in (False, True):
            c = reference.denoise(comps, 1) if denoise else comps
            assert_close_to_reference(
                ours(FGGradCam, model, x, target, index, denoise=denoise),
                reference_map(model, x, c, index))


def test_non_square_input_matches_reference(vgg16bn):
    x = image_batch(1, 224, 288, seed=11)
    target = vgg16bn(x).argmax(dim=1)
    comps = reference.grad_cam_components(vgg16bn, x, target)
    for index in (23, -1):
        assert_close_to_reference(ours(FGGradCam, vgg16bn, x, target, index),
                                  reference_map(vgg16bn, x, comps, index))


def test_reference_check_detects_a_wrong_rule(vgg16bn, grad_case):
    """Negative control: z+ instead of z^B at the first convolution must be caught."""
    from captum_fgcam import ZPlusRule

    x, target, comps = grad_case
    wrong = FGGradCam(vgg16bn, vgg16bn.features[0], rules={vgg16bn.features[0]: ZPlusRule()})
    got = wrong.attribute(x, target=target, attribute_to_layer_input=True)
    with pytest.raises(AssertionError):
        assert_close_to_reference(got, reference_map(vgg16bn, x, comps, -1))
