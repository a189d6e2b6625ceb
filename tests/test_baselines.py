"""Plain CAM baselines against pytorch-grad-cam (test-only dependency `grad-cam`)."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from conftest import image_batch, make_vgg
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_architectures import make

from captum_fgcam import FGGradCam, GradCamPlusPlus, LayerCam, ScoreCam, XGradCam


def their_post_processing(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's steps after the CAM: ReLU, min-max, resize; ReLU, min-max."""
    scaled = scale_cam_image(np.maximum(cam[:, 0].numpy(), 0), (size[1], size[0]))
    return scale_cam_image(np.maximum(scaled, 0))


CASES = [
    (GradCamPlusPlus, pgc.GradCAMPlusPlus, {}),
    (XGradCam, pgc.XGradCAM, {}),
    (LayerCam, pgc.LayerCAM, {}),
    (ScoreCam, pgc.ScoreCAM, {"variant": "score-cam"}),
]


@pytest.mark.parametrize("model_name", ["vgg11_bn", "resnet18"])
@pytest.mark.parametrize("ours_cls,theirs_cls,kwargs", CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_cams_match_pytorch_grad_cam(model_name, ours_cls, theirs_cls, kwargs):
    model = make_vgg(model_name, seed=3) if model_name.startswith("vgg") else make(model_name)
    layer = model.features[-1] if model_name.startswith("vgg") else model.layer4
    head = model.classifier[-1] if model_name.startswith("vgg") else model.fc
    with torch.no_grad():
        # pytorch-grad-cam adds 1e-6 to Grad-CAM++'s denominator 2 g^2 + sum(A) g^3 (we use
        # exact zero handling); with a random model's tiny gradients that constant dominates.
        # Larger logits make the gradients large enough for the conventions to agree.
        head.weight.mul_(1000)
    x = image_batch(2, 64, 64, seed=9)
    targets = [1, 4]
    ours = ours_cls(model, layer, **kwargs).attribute(x, targets).detach()
    with theirs_cls(model=model, target_layers=[layer]) as cam:
        if ours_cls is ScoreCam:
            cam.batch_size = 256
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    mine = their_post_processing(ours, (64, 64))
    assert theirs.max() > 0
    np.testing.assert_allclose(mine, theirs, atol=2e-4)


def test_grad_cam_family_shares_weightings_with_fg_cam():
    model = make_vgg("vgg11_bn", seed=3)
    x = image_batch(1, 64, 64)
    plain = XGradCam(model, model.features[-1]).attribute(x, 2, attr_dim_summation=False)
    from captum_fgcam import FGCam

    fg = FGCam(model, model.features[-1], weighting="xgrad_cam").attribute(
        x, 2, attr_dim_summation=False)
    assert torch.equal(plain, fg)
    assert FGGradCam(model, model.features[0]).attribute(x, 2).shape == (1, 1, 64, 64)
