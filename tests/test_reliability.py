"""Reliability: clear errors, no leaked activations, threads, chunking, and fuzzing."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
from conftest import image_batch, layer_output, make_vgg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_model_state import assert_unchanged, snapshot
from torch import nn

from captum_fgcam import FGCam, FGGradCam, LayerError, find_cam_layer


@pytest.fixture(scope="module")
def vgg():
    return make_vgg("vgg11_bn", seed=6)


class TwoHeads(nn.Module):
    """A model with a module that never runs and a module used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.ReLU()
        self.unused = nn.Conv2d(4, 4, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.shared(self.shared(self.conv(x)))
        return self.fc(self.pool(x).mean(dim=(2, 3)))


def test_layer_errors():
    model = TwoHeads().eval()
    x = image_batch(1, 32, 32)
    with pytest.raises(LayerError, match="never called"):
        FGGradCam(model, model.unused, cam_layer=model.pool).attribute(x, 0)
    with pytest.raises(LayerError, match="called 2 times"):
        FGGradCam(model, model.shared, cam_layer=model.pool).attribute(x, 0)


@pytest.mark.parametrize("target,message", [
    (10, "out of range: the model has 10 classes"),
    (-1, "out of range"),
    ([1, 2, 3], "3 entries for 2 examples"),
    (torch.tensor([1.0, 2.0]), "integers"),
    (torch.tensor([1, 2, 3]), "3 entries for 2 examples"),
    (None, "pass target="),
])
def test_target_errors(vgg, target, message):
    fg = FGGradCam(vgg, vgg.features[0])
    before = snapshot(vgg)
    with pytest.raises((ValueError, TypeError), match=message):
        fg.attribute(image_batch(2, 32, 32), target, attribute_to_layer_input=True)
    assert_unchanged(vgg, before)


def test_input_errors(vgg):
    fg = FGGradCam(vgg, vgg.features[0])
    x = image_batch(1, 32, 32)
    with pytest.raises(ValueError, match="add the batch dimension"):
        fg.attribute(x[0], 1)
    with pytest.raises(TypeError, match="half precision"):
        fg.attribute(x.half(), 1)
    with pytest.raises(TypeError, match="half precision"):
        fg.attribute(x.bfloat16(), 1)
    with pytest.raises(ValueError, match="is on meta but the model is on cpu"):
        fg.attribute(torch.empty(1, 3, 32, 32, device="meta"), 1)
    with pytest.raises(ValueError, match="internal_batch_size"):
        fg.attribute(x, 1, internal_batch_size=0)


def test_no_activation_stays_referenced(vgg):
    seen = []

    def watching(forward_func, layer, inputs, target, extra):
        acts = layer_output(forward_func, layer, inputs)
        seen.append(weakref.ref(acts))
        return acts.detach() * 1.0

    fg = FGCam(vgg, vgg.features[0], weighting=watching)
    for _ in range(3):
        fg.attribute(image_batch(2, 32, 32), attribute_to_layer_input=True)
    gc.collect()
    assert all(ref() is None for ref in seen)


def test_internal_batch_size_gives_identical_results(vgg):
    x = image_batch(5, 32, 32, seed=3)
    target = torch.tensor([0, 1, 2, 3, 4])
    fg = FGGradCam(vgg, vgg.features[4])
    whole = fg.attribute(x, target, denoise=True, denoise_rank=1)
    chunked = fg.attribute(x, target, denoise=True, denoise_rank=1, internal_batch_size=2)
    assert torch.allclose(whole, chunked, atol=1e-6 * float(whole.abs().max()), rtol=0)


@pytest.mark.parametrize("denoise", ["keep-mean", True])
def test_denoised_keeps_or_removes_the_cam_total(vgg, denoise):
    # keep-mean: the map sums to the undenoised total; the paper's: to 0 (zero-sum rows)
    x = image_batch(3, 32, 32, seed=4)
    fg = FGGradCam(vgg, vgg.features[4])
    plain = fg.attribute(x, 1).sum(dim=(1, 2, 3))
    denoised = fg.attribute(x, 1, denoise=denoise).sum(dim=(1, 2, 3))
    expected = plain if denoise == "keep-mean" else torch.zeros_like(plain)
    assert torch.allclose(denoised, expected, atol=1e-4 * float(plain.abs().max()))


@pytest.mark.parametrize("denoise", ["keep_mean", "yes", 1])
def test_unknown_denoise_value_is_refused(vgg, denoise):
    with pytest.raises(ValueError, match="keep-mean"):
        FGGradCam(vgg, vgg.features[4]).attribute(image_batch(1, 32, 32), 1, denoise=denoise)


def test_two_models_in_two_threads_match_sequential():
    models = [make_vgg("vgg11_bn", seed=s) for s in (1, 2)]
    xs = [image_batch(2, 48, 48, seed=s) for s in (4, 5)]
    attrs = [FGGradCam(m, m.features[0]) for m in models]
    expected = [a.attribute(x, 1, attribute_to_layer_input=True)
                for a, x in zip(attrs, xs, strict=True)]
    results: list[torch.Tensor | None] = [None, None]

    def run(i: int) -> None:
        for _ in range(3):
            results[i] = attrs[i].attribute(xs[i], 1, attribute_to_layer_input=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected, strict=True):
        assert torch.equal(got, want)


# -- fuzzing ---------------------------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self, c: int, k: int, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, padding=k // 2)
        self.norm = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.norm(self.conv(x)) + x)


class Concat(nn.Module):
    def __init__(self, c: int, out_a: int, out_b: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, out_a, 1)
        self.b = nn.Conv2d(c, out_b, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(torch.cat([self.a(x), self.b(x)], dim=1))


@st.composite
def networks(draw):
    height, width = draw(st.integers(8, 20)), draw(st.integers(8, 20))
    size = min(height, width)  # the smallest spatial extent, tracked through the layers
    c = draw(st.integers(2, 6))
    k = draw(st.sampled_from([1, 3, 5]))
    layers: list[nn.Module] = [nn.Conv2d(3, c, k, stride=draw(st.sampled_from([1, 2])),
                                         padding=draw(st.integers(0, k // 2)))]
    size = (size + 2 * layers[0].padding[0] - k) // layers[0].stride[0] + 1
    if size < 1:
        size = 1
    layers.append(nn.ReLU())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "maxpool", "avgpool", "residual", "concat"]))
        if kind == "conv":
            k = draw(st.sampled_from([1, 3]))
            out = draw(st.integers(2, 8))
            stride = draw(st.sampled_from([1, 2])) if size >= 2 else 1
            layers.append(nn.Conv2d(c, out, k, stride=stride, padding=k // 2,
                                    groups=c if out == c and draw(st.booleans()) else 1))
            if draw(st.booleans()):
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=draw(st.booleans())))
            c, size = out, (size - 1) // stride + 1
        elif kind in ("maxpool", "avgpool") and size >= 2:
            layers.append(nn.MaxPool2d(2) if kind == "maxpool" else nn.AvgPool2d(2))
            size //= 2
        elif kind == "residual":
            layers.append(Residual(c, draw(st.sampled_from([1, 3])), draw(st.booleans())))
        elif kind == "concat":
            a, b = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            layers.append(Concat(c, a, b))
            c = a + b
    model = nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(c, 4))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), image_batch(2, height, width, seed=seed)


FUZZ_EXAMPLES = 200


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(networks())
def test_fuzzed_networks(case):
    model, x = case
    before = snapshot(model)
    cam = find_cam_layer(model, x)
    comps = FGGradCam(model, cam).attribute(x, [1, 3], attr_dim_summation=False)
    fg = FGGradCam(model, "0.0", cam_layer=cam)
    got = fg.attribute(x, [1, 3], attribute_to_layer_input=True)
    assert torch.isfinite(got).all()
    total, scale = float(comps.sum()), float(comps.abs().sum())
    assert abs(float(got.sum()) - total) <= 1e-3 * scale + 1e-7
    single = torch.cat([fg.attribute(x[i:i + 1], t, attribute_to_layer_input=True)
                        for i, t in enumerate([1, 3])])
    assert torch.allclose(got, single, atol=1e-5 * float(single.abs().max()) + 1e-9, rtol=0)
    assert_unchanged(model, before)
