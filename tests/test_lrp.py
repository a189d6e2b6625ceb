"""LRP, CLRP, SGLRP: initial relevances by hand on a tiny model, sums, and peers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import LRP as CaptumLRP
from captum.attr._utils.lrp_rules import EpsilonRule
from conftest import image_batch, make_vgg
from torch import nn

from captum_fgcam import CLRP, LRP, SGLRP
from captum_fgcam.propagation import FedByInput


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3], [1.0, 0.2, -0.4, 0.8]])
    return model, x


def test_initial_relevances_by_hand():
    model, x = tiny()
    y = model(x).detach().numpy()
    c = [2, 0]
    lrp = LRP(model, model[0])
    (r0,) = lrp.initial_relevances(torch.from_numpy(y), torch.tensor(c))
    expected = np.zeros((2, 3))
    expected[0, 2], expected[1, 0] = y[0, 2], y[1, 0]
    np.testing.assert_allclose(r0.numpy(), expected, rtol=1e-6)

    target, dual = CLRP(model, model[0], dual=2).initial_relevances(torch.from_numpy(y),
                                                                     torch.tensor(c))
    np.testing.assert_allclose(target.numpy(), expected, rtol=1e-6)
    dual_expected = np.array([[y[0, 2] / 2, y[0, 2] / 2, 0.0], [0.0, y[1, 0] / 2, y[1, 0] / 2]])
    np.testing.assert_allclose(dual.numpy(), dual_expected, rtol=1e-6)

    p = np.exp(y) / np.exp(y).sum(axis=1, keepdims=True)
    target, dual = SGLRP(model, model[0]).initial_relevances(torch.from_numpy(y),
                                                              torch.tensor(c))
    t_expected = np.zeros((2, 3))
    t_expected[0, 2] = p[0, 2] * (1 - p[0, 2])
    t_expected[1, 0] = p[1, 0] * (1 - p[1, 0])
    d_expected = np.array([[p[0, 2] * p[0, 0], p[0, 2] * p[0, 1], 0.0],
                           [0.0, p[1, 0] * p[1, 1], p[1, 0] * p[1, 2]]])
    np.testing.assert_allclose(target.numpy(), t_expected, rtol=1e-5)
    np.testing.assert_allclose(dual.numpy(), d_expected, rtol=1e-5)


def test_clrp_first_dual_is_the_negated_target_row_by_hand():
    """The virtual class's relevance at the hidden layer: z+ with the target row negated."""
    model, x = tiny()
    c = torch.tensor([2, 0])
    clrp = CLRP(model, model[2], dual=1)
    got = clrp.attribute(x, c, attribute_to_layer_input=True, attr_dim_summation=False)
    h = model[1](model[0](x)).detach().numpy()  # >= 0
    w = model[2].weight.detach().numpy()
    y = model(x).detach().numpy()
    for i, ci in enumerate(c.tolist()):
        zp = h[i] * np.maximum(w[ci], 0)
        target = zp / zp.sum() * y[i, ci]
        zd = h[i] * np.maximum(-w[ci], 0)
        dual = zd / zd.sum()
        expected = target / target.sum() - dual / dual.sum()
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls,kwargs", [(LRP, {}), (CLRP, {}), (CLRP, {"dual": 2}),
                                        (SGLRP, {})])
def test_maps_sum_as_defined(cls, kwargs):
    model = make_vgg("vgg11_bn", seed=2)
    x = image_batch(2, 64, 64)
    target = torch.tensor([3, 5])
    got = cls(model, model.features[0], **kwargs).attribute(x, target,
                                                            attribute_to_layer_input=True)
    sums = got.sum(dim=(1, 2, 3))
    if cls is LRP:  # conservation: the map sums to the target logit
        assert torch.allclose(sums, model(x).gather(1, target[:, None])[:, 0], rtol=1e-4)
    else:  # a normalised (CLRP) or rescaled (SGLRP) difference: sums to zero
        assert torch.allclose(sums, torch.zeros(2), atol=1e-5)
        assert got.abs().sum() > 0


def test_lrp_equals_captum_lrp_with_matching_rules():
    model = make_vgg("vgg16", seed=2)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = image_batch(2, 64, 64, seed=5)
    target = model(x).argmax(dim=1)
    ours = LRP(model, model.features[0], rules={
        (FedByInput(), nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d):
        EpsilonRule()}).attribute(
        x, target, attribute_to_layer_input=True, attr_dim_summation=False)
    theirs = CaptumLRP(copy.deepcopy(model)).attribute(x, target=target)
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()
