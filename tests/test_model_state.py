"""The model comes back exactly as it was, after success and after any failure."""

from __future__ import annotations

import pytest
import torch
from conftest import image_batch, make_vgg

from captum_fgcam import FGCam, FGGradCam, FGScoreCam, Rule


def snapshot(model: torch.nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {k: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                      len(m._backward_pre_hooks), len(getattr(m, "_forward_hooks_with_kwargs", {})))
                  for k, m in model.named_modules()},
        "attributes": {k: sorted(vars(m)) for k, m in model.named_modules()},
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert after["attributes"] == before["attributes"]
    for k, v in before["tensors"].items():
        assert torch.equal(after["tensors"][k], v), f"{k} changed"


@pytest.fixture
def model():
    m = make_vgg("vgg11_bn", seed=3)
    m.features[4].weight.requires_grad_(False)  # a mixed requires_grad state to preserve
    return m


def test_success_leaves_model_unchanged(model):
    before = snapshot(model)
    x = image_batch(2, 64, 64)
    FGGradCam(model, model.features[0]).attribute(x, 1, attribute_to_layer_input=True)
    FGScoreCam(model, model.features[7], batch_size=128).attribute(x, 1, denoise=True)
    assert_unchanged(model, before)


def test_training_mode_model_is_restored_and_warned(model):
    model.train()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        FGGradCam(model, model.features[4]).attribute(image_batch(2, 64, 64), 1)
    assert_unchanged(model, before)  # BatchNorm running statistics included


class Boom(Exception):
    pass


def failing_weighting(forward_func, layer, inputs, target, extra):
    forward_func(*inputs)
    raise Boom("weighting failed")


class FailingRule(Rule):
    def propagate(self, call, relevance):
        raise Boom("rule failed")


@pytest.mark.parametrize("where", ["weighting", "rule", "forward", "interrupt"])
def test_failure_leaves_model_unchanged(model, where):
    x = image_batch(2, 64, 64)
    model.train()  # the harder case: BN buffers would change
    user_hook_calls = []
    model.features[1].register_forward_hook(lambda *a: user_hook_calls.append(1))
    before = snapshot(model)
    kwargs = {}
    error: type[BaseException] = Boom
    if where == "weighting":
        kwargs["weighting"] = failing_weighting
    elif where == "rule":
        kwargs["rules"] = {torch.nn.Conv2d: FailingRule()}
    else:
        error = KeyboardInterrupt if where == "interrupt" else Boom

        def explode(*args):
            raise error("injected")

        handle = model.features[2].register_forward_hook(explode)
        before = snapshot(model)
    fg = FGCam(model, model.features[0], **kwargs)
    with pytest.warns(UserWarning), pytest.raises(error):
        fg.attribute(x, 1, attribute_to_layer_input=True)
    assert_unchanged(model, before)
    if where in ("forward", "interrupt"):
        handle.remove()
    assert user_hook_calls  # the user's own hook ran and is still registered


def test_inplace_relu_models_work():
    model = make_vgg("vgg11", seed=1)  # conv -> ReLU(inplace=True), no BatchNorm
    assert any(getattr(m, "inplace", False) for m in model.modules())
    x = image_batch(1, 64, 64)
    comps = FGGradCam(model, model.features[20]).attribute(x, 2, attr_dim_summation=False)
    got = FGGradCam(model, model.features[0]).attribute(x, 2, attribute_to_layer_input=True)
    assert torch.allclose(got.sum(), comps.sum(), atol=1e-4 * comps.abs().sum(), rtol=0)
