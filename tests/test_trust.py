"""Never a silent wrong map: the model as it is at call time, any CAM weighting, clear errors.

One test per class of misuse, asserting the exact outcome (the right map, or the error type
and the key words of its message).
"""

from __future__ import annotations

import pytest
import torch
from conftest import image_batch, layer_output
from torch import nn

from captum_fgcam import FGCam, FGGradCam, LayerError


class Small(nn.Module):
    """A small CNN with dropout, BatchNorm and a side branch that does not feed the head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.side = nn.Conv2d(6, 2, 1)
        self.head = nn.Linear(8, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a = self.drop(self.act(self.bn(self.conv1(x))))
        self.side(a)  # computed, never used
        return self.head(torch.relu(self.conv2(a)).mean((2, 3)))


def activations(forward_func, layer, inputs, target, extra=None):
    """Components = the CAM layer's activation of the real input."""
    return layer_output(forward_func, layer, inputs).detach()


def baseline_first(forward_func, layer, inputs, target, extra=None):
    """The same, after running the model on a blurred and a noisy baseline first."""
    forward_func(inputs[0] * 0.1)
    forward_func(torch.randn_like(inputs[0]))
    return activations(forward_func, layer, inputs, target, extra)


def test_a_weighting_may_run_the_model_on_other_inputs_first():
    model = Small().eval()
    x = image_batch(2, 12, 12)
    plain = FGCam(model, "conv1", weighting=activations, cam_layer="conv2").attribute(x)
    assert torch.equal(FGCam(model, "conv1", weighting=baseline_first,
                             cam_layer="conv2").attribute(x), plain)


def test_the_model_is_explained_as_it_is_at_call_time():
    model = Small()  # training mode, as torchvision builds models
    x = image_batch(2, 12, 12)
    fg = FGGradCam(model, "conv1", cam_layer="conv2")
    assert model.calls == 0  # building an explainer runs nothing
    model.eval()
    eval_map = fg.attribute(x, 1)
    assert torch.equal(eval_map, FGGradCam(model, "conv1", cam_layer="conv2").attribute(x, 1))
    model.act = nn.LeakyReLU(0.2)  # a submodule replaced after construction
    leaky = fg.attribute(x, 1)
    assert not torch.equal(leaky, eval_map)
    assert torch.equal(leaky, FGGradCam(model, "conv1", cam_layer="conv2").attribute(x, 1))
    with torch.no_grad():
        model.bn.running_mean.add_(0.5)  # a buffer changed after construction
    assert not torch.equal(fg.attribute(x, 1), leaky)
    model.double()
    assert fg.attribute(x.double(), 1).dtype == torch.float64


def test_model_hooks_run_as_in_model_call():
    model = Small().eval()
    x = image_batch(2, 12, 12)
    fg = FGGradCam(model, "conv1", cam_layer="conv2")
    plain = fg.attribute(x, 1)
    handle = model.register_forward_hook(lambda m, i, out: -out)
    try:
        torch.testing.assert_close(fg.attribute(x, 1), -plain)
    finally:
        handle.remove()


def test_a_layer_on_a_side_branch_is_refused():
    model = Small().eval()
    with pytest.raises(LayerError, match="does not feed the CAM layer"):
        FGGradCam(model, "side", cam_layer="conv2").attribute(image_batch(1, 12, 12), 1)


@pytest.mark.parametrize("where", ["weight", "input"])
def test_non_finite_values_are_refused(where):
    model = Small().eval()
    x = image_batch(1, 12, 12)
    if where == "weight":
        with torch.no_grad():
            model.conv2.weight[0, 0, 0, 0] = float("nan")
        match = "NaN or Inf"
    else:
        x[0, 0, 0, 0] = float("inf")
        match = "NaN or Inf"
    with pytest.raises(ValueError, match=match):
        FGGradCam(model, "conv1", cam_layer="conv2").attribute(x, 1)


@pytest.mark.parametrize("weighting,message", [
    (lambda f, layer, inputs, target, extra=None: None, "returned NoneType"),
    (lambda f, layer, inputs, target, extra=None: [1.0], "returned list"),
    (lambda f, layer, inputs, target, extra=None: torch.ones(1, 2), "shape"),
])
def test_a_weighting_that_returns_no_components_is_named(weighting, message):
    model = Small().eval()
    with pytest.raises((TypeError, ValueError), match=message):
        FGCam(model, "conv1", weighting=weighting, cam_layer="conv2").attribute(
            image_batch(1, 12, 12))


def test_dtype_mismatch_is_reported_before_any_work():
    model = Small().eval()
    with pytest.raises(TypeError, match="float64.*float32"):
        FGGradCam(model, "conv1").attribute(image_batch(1, 12, 12).double(), 1)
    assert model.calls == 0


def test_the_model_itself_as_layer():
    model = Small().eval()
    x = image_batch(1, 12, 12)
    with pytest.raises(LayerError, match="model itself"):
        FGGradCam(model, model, cam_layer="conv2").attribute(x, 1)
    image = FGGradCam(model, model, cam_layer="conv2").attribute(
        x, 1, attribute_to_layer_input=True)
    torch.testing.assert_close(image, FGGradCam(model, "conv1", cam_layer="conv2").attribute(
        x, 1, attribute_to_layer_input=True))
