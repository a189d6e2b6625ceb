"""The method registry: one name per method, aliases, where each gives maps, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import image_batch
from torch import nn

from captum_fgcam.methods import INPUT, METHODS, PAPER_METHODS, MethodError, explainers, get_method


@pytest.mark.parametrize("alias,name", [
    ("fg-grad-cam", "FG-Grad-CAM"), ("FG_GradCAM", "FG-Grad-CAM"), ("fggradcamd", "FG-Grad-CAM-D"),
    ("grad cam++", "Grad-CAM++"), ("gradcampp", "Grad-CAM++"), ("score_cam", "Score-CAM"),
    ("clrp", "CLRP"), ("FG-Score-CAM-denoised", "FG-Score-CAM-D"), ("Layer_CAM", "Layer-CAM"),
])
def test_aliases(alias, name):
    assert get_method(alias).name == name


def test_every_name_and_alias_is_unique():
    keys = [k for m in METHODS.values() for k in (m.name, *m.aliases)]
    normal = [k.lower().replace("-", "").replace("_", "").replace(" ", "") for k in keys]
    assert len(set(normal)) == len(normal)
    assert set(PAPER_METHODS) <= set(METHODS)


def test_unknown_and_unsupported_are_one_line_errors():
    with pytest.raises(MethodError, match="did you mean FG-Grad-CAM"):
        get_method("fg-grad-cma")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    with pytest.raises(MethodError, match="Layer-CAM gives maps at layers only, not at input"):
        explainers(model, ["layer-cam"], [INPUT])


def test_every_method_gives_a_finite_map_where_it_says():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    x, target = image_batch(2, 8, 8), torch.tensor([0, 2])
    pairs = explainers(model, list(METHODS), ["2", INPUT], x)
    assert {name for name, _ in pairs} == set(METHODS)
    for (name, layer), explain in pairs.items():
        method = METHODS[name]
        assert method.supports(layer)
        m = explain(x, target)
        assert m.shape == ((2, 1, 8, 8)) and torch.isfinite(m).all(), (name, layer)
        if method.relu:
            assert (m >= 0).all()
    assert ("Grad-CAM", INPUT) not in pairs and ("LRP", "2") in pairs
    benchmark = explainers(model, list(METHODS), ["2", INPUT], x, benchmark=True)
    assert ("LRP", "2") not in benchmark and ("LRP", INPUT) in benchmark
