"""Quantus interop: our methods as Quantus' explain_func, our metrics on its masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import image_batch
from torch import nn

from captum_fgcam.methods import METHODS
from captum_fgcam.metrics import energy_proportion
from captum_fgcam.quantus import explain_func


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 3)).eval()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_is_an_explain_func(method):
    model = small_cnn()
    x, y = image_batch(2, 8, 8).numpy(), np.array([0, 2])
    a = explain_func(model=model, inputs=x, targets=y, method=method.lower())
    assert a.shape == (2, 1, 8, 8) and a.dtype == np.float32 and np.isfinite(a).all()
    # the same map as the registry's explainer, upsampled to the image for layer maps
    if METHODS[method].at_input:
        from captum_fgcam.methods import INPUT, explainers
        want = explainers(model, [method], [INPUT], torch.as_tensor(x[:1]))[method, INPUT]
        np.testing.assert_allclose(a, want(torch.as_tensor(x), torch.as_tensor(y)).numpy(),
                                   rtol=1e-6, atol=1e-8)


def test_quantus_metrics_accept_it():
    quantus = pytest.importorskip("quantus")
    model = small_cnn()
    x, y = image_batch(4, 8, 8).numpy(), np.array([0, 1, 2, 0])
    faithfulness = quantus.FaithfulnessCorrelation(
        nr_runs=10, subset_size=8, perturb_baseline="black", disable_warnings=True,
        display_progressbar=False, return_aggregate=False)
    scores = faithfulness(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
                          explain_func_kwargs={"method": "FG-Grad-CAM"}, device="cpu")
    assert len(scores) == 4 and np.isfinite(scores).all()
    randomisation = quantus.MPRT(layer_order="bottom_up", disable_warnings=True,
                                 display_progressbar=False, return_last_correlation=True)
    last = randomisation(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
                         explain_func_kwargs={"method": "FG-Grad-CAM"}, device="cpu")
    assert np.isfinite(last).all()


def test_our_localisation_metrics_take_quantus_masks():
    maps = torch.rand(2, 1, 8, 8)
    s_batch = np.zeros((2, 1, 8, 8), np.float32)
    s_batch[:, :, 2:6, 2:6] = 1
    got = energy_proportion(maps, torch.as_tensor(s_batch))
    want = (maps[:, 0, 2:6, 2:6].sum((1, 2)) / maps.sum((1, 2, 3)))
    torch.testing.assert_close(got, want)
