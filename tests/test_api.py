"""Captum conventions, layer naming, custom weightings, clear errors, pretrained weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import LayerGradCam, NoiseTunnel
from conftest import image_batch, layer_output, make_vgg
from torch import nn

from captum_fgcam import (
    FGCam,
    FGGradCam,
    LayerError,
    MissingRuleError,
    PassRule,
    find_cam_layer,
)


@pytest.fixture(scope="module")
def vgg11bn():
    return make_vgg("vgg11_bn", seed=4)


def test_default_cam_layer_is_last_maxpool(vgg16bn, vgg11bn):
    assert find_cam_layer(vgg16bn) == "features.43"
    assert find_cam_layer(vgg11bn) == "features.28"
    fg = FGGradCam(vgg16bn, vgg16bn.features[13])
    assert fg.cam_layer is None  # found on each call, from the operations the input runs
    fg.attribute(image_batch(1, 64, 64), 0)
    assert fg.cam_layer is vgg16bn.features[43]


def test_layers_by_name_equal_layers_by_module(vgg11bn):
    x = image_batch(1, 64, 64)
    by_module = FGGradCam(vgg11bn, vgg11bn.features[7]).attribute(x, 2)
    by_name = FGGradCam(vgg11bn, "features.7", cam_layer="features.28").attribute(x, 2)
    assert torch.equal(by_module, by_name)


def test_grad_cam_components_come_from_captum(vgg11bn):
    x = image_batch(2, 64, 64)
    ours = FGGradCam(vgg11bn, vgg11bn.features[28]).attribute(x, 3, attr_dim_summation=False)
    captum = LayerGradCam(vgg11bn, vgg11bn.features[28]).attribute(x, 3, attr_dim_summation=False)
    assert torch.equal(ours, captum.detach())


def test_custom_callable_weighting(vgg11bn):
    x = image_batch(2, 64, 64)

    def uniform(forward_func, layer, inputs, target, extra):
        # every channel weight 1: plain activation relevance
        return layer_output(forward_func, layer, inputs).detach()

    got = FGCam(vgg11bn, vgg11bn.features[0], weighting=uniform).attribute(
        x, attribute_to_layer_input=True)
    total = vgg11bn.features(x).sum(dim=(1, 2, 3))
    assert torch.allclose(got.sum(dim=(1, 2, 3)), total, rtol=1e-4)


def test_noise_tunnel_wraps_fg_grad_cam(vgg11bn):
    x = image_batch(1, 64, 64)
    fg = FGGradCam(vgg11bn, vgg11bn.features[0])
    nt = NoiseTunnel(fg)
    got = nt.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, target=1,
                       attribute_to_layer_input=True, attr_dim_summation=False)
    assert got.shape == x.shape and torch.isfinite(got).all()


def test_pretrained_weights_path_without_download(monkeypatch, tmp_path):
    """weights="DEFAULT" goes through torchvision's loader; we serve it a local state dict."""
    state = torchvision.models.vgg11_bn(weights=None).state_dict()
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append(url)
        return state

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    model = torchvision.models.vgg11_bn(weights="DEFAULT").eval()
    assert calls and calls[0].endswith(".pth")
    x = image_batch(1, 64, 64)
    got = FGGradCam(model, model.features[0]).attribute(x, 281, attribute_to_layer_input=True)
    assert got.shape == (1, 1, 64, 64) and torch.isfinite(got).all()


def test_clear_errors(vgg11bn):
    x = image_batch(1, 64, 64)
    with pytest.raises(LayerError, match="not a submodule"):
        FGGradCam(vgg11bn, nn.Conv2d(3, 3, 1))
    with pytest.raises(LayerError, match="no submodule named"):
        FGGradCam(vgg11bn, "features.99")
    with pytest.raises(LayerError, match="comes after the CAM layer"):
        FGGradCam(vgg11bn, vgg11bn.classifier[0]).attribute(x, 0)
    with pytest.raises(TypeError, match="nn.Module"):
        FGGradCam(lambda t: vgg11bn(t), vgg11bn.features[0])
    with pytest.raises(ValueError, match="unknown CAM weighting"):
        FGCam(vgg11bn, vgg11bn.features[0], weighting="magic")
    fg = FGGradCam(vgg11bn, vgg11bn.features[0])
    with pytest.raises(TypeError, match="dtype"):
        fg.attribute(x.to(torch.int64), 0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fg.attribute(x * float("nan"), 0)
    with pytest.raises(ValueError, match="empty batch"):
        fg.attribute(x[:0], 0)


def test_missing_rule_names_the_operation_and_a_fix_that_works():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softmin(dim=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 15 * 15, 2)).eval()
    fg = FGGradCam(model, model[0], cam_layer=model[3])
    x = image_batch(1, 32, 32)
    with pytest.raises(MissingRuleError, match=r"softmin.*rules=\{'softmin': PassRule\(\)\}"):
        fg.attribute(x, 0, attribute_to_layer_input=True)
    fixed = FGGradCam(model, model[0], cam_layer=model[3], rules={"softmin": PassRule()})
    assert torch.isfinite(fixed.attribute(x, 0, attribute_to_layer_input=True)).all()


# -- one face: the same construction and layer argument everywhere ------------------------

def test_every_attribution_takes_a_layer_by_module_or_name(vgg11bn):
    import captum_fgcam as fg
    x = image_batch(1, 64, 64)  # multi-scale needs a CAM layer grid larger than 1 x 1
    for cls in (fg.GradCam, fg.GradCamPlusPlus, fg.XGradCam, fg.LayerCam, fg.HiResCam):
        by_name = cls(vgg11bn, "features.21").attribute(x, 2)
        assert torch.equal(by_name, cls(vgg11bn, vgg11bn.features[21]).attribute(x, 2))
    for cls in (fg.LRP, fg.CLRP, fg.SGLRP, fg.FGGradCam, fg.MultiScaleFGCam):
        by_name = cls(vgg11bn, "features.14").attribute(x, 2)
        assert torch.equal(by_name, cls(vgg11bn, vgg11bn.features[14]).attribute(x, 2))
    refine = fg.RefineCam(vgg11bn, ["features.28", "features.14"])
    assert refine.layer is vgg11bn.features[14]  # the layer of the map: the finest
    with pytest.raises(TypeError, match="nn.Module"):
        fg.GradCam(lambda t: vgg11bn(t), "features.21")


def test_one_argument_order_options_keyword_only(vgg11bn):
    from captum.attr import GradientAttribution, LayerAttribution

    import captum_fgcam as fg
    for cls in (fg.FGCam, fg.FGGradCam, fg.FGScoreCam, fg.MultiScaleFGCam, fg.LRP, fg.CLRP,
                fg.SGLRP, fg.GradCam, fg.ScoreCam, fg.ConceptorCam):
        explainer = cls(vgg11bn, "features.14", [0])
        assert isinstance(explainer, LayerAttribution)
        assert isinstance(explainer, GradientAttribution)
        assert explainer.device_ids == [0]
        with pytest.raises(TypeError):
            cls(vgg11bn, "features.14", None, "extra positional")
    assert isinstance(fg.RefineCam(vgg11bn, ["features.28"]), LayerAttribution)


def test_the_cam_layer_is_read_only(vgg11bn):
    fg = FGGradCam(vgg11bn, "features.7", cam_layer="features.21")
    assert fg.cam_layer is vgg11bn.features[21]
    with pytest.raises(AttributeError):
        fg.cam_layer = vgg11bn.features[28]


def test_argument_helpers_match_captum():
    """Our versions of Captum's private helpers give what Captum's give, target form by form."""
    from captum._utils.common import ExpansionTypes, _expand_target, _select_targets
    from captum._utils.gradient import compute_layer_gradients_and_eval

    from captum_fgcam._batching import take
    from captum_fgcam.arguments import layer_gradient, select_targets
    torch.manual_seed(0)
    y = torch.randn(3, 4)
    for target in (None, 2, (1,), torch.tensor(3), torch.tensor([0, 3, 1]), [2, 0, 1],
                   [(1,), (0,), (3,)]):
        assert torch.equal(select_targets(y, target), _select_targets(y, target))
        expanded = _expand_target(target, 5, ExpansionTypes.repeat_interleave)
        ours = take(target, torch.arange(3).repeat_interleave(5), 3)  # as Score-CAM does
        assert (torch.equal(ours, expanded) if isinstance(ours, torch.Tensor)
                else ours == expanded)
    model = make_vgg("vgg11_bn", seed=2)
    x = image_batch(2, 32, 32)
    a, g = layer_gradient(model, model.features[14], x, [1, 3])
    grads, acts = compute_layer_gradients_and_eval(model, model.features[14], x, [1, 3])
    assert torch.equal(a, acts[0].detach()) and torch.equal(g, grads[0])
