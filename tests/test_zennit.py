"""Cross-check with Zennit (test-only dependency): LRP from the logits, VGG16 and ResNets."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import image_batch
from test_architectures import make
from torch import nn
from zennit.composites import EpsilonPlus
from zennit.torchvision import ResNetCanonizer

from captum_fgcam import LRP, EpsilonRule, ZPlusRule, ZRule
from captum_fgcam.propagation import FedByInput, Function, Kind


def zennit_lrp(model, x, target, canonizers):
    """Zennit's EpsilonPlus composite (bias-free), with the given canonizers."""
    model = copy.deepcopy(model)
    composite = EpsilonPlus(epsilon=1e-6, stabilizer=1e-6, zero_params=["bias"],
                            canonizers=canonizers)
    x = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(x)
        start = torch.zeros_like(out).scatter(1, target[:, None], out.gather(1, target[:, None]))
        (relevance,) = torch.autograd.grad(out, x, start)
    return relevance


def our_lrp(model, x, target, first):
    """The same rules in our engine's LRP: BatchNorm folded into the convolution before it."""
    rules = {(FedByInput(), nn.Conv2d): ZPlusRule(1e-6, fallback=False),
             nn.Linear: EpsilonRule(1e-6, set_bias_to_zero=True),
             (Kind("sum"), Function("add")): ZRule(1e-6)}
    return LRP(model, first, rules=rules, fold_batchnorm=True).attribute(
        x, target, attribute_to_layer_input=True, attr_dim_summation=False)


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet50"])
def test_lrp_matches_zennit(name):
    model = make(name)
    first = "features.0" if name.startswith("vgg") else "conv1"
    canonizers = [] if name.startswith("vgg") else [ResNetCanonizer()]
    # Zennit's BatchNorm merge resets running_var to 1 but keeps eps, so a merged BatchNorm
    # still scales by 1 / sqrt(1 + eps) (about 5e-6 per layer, 4e-4 through ResNet-50's
    # residual sums). With eps = 0 its merge is exact and the comparison is of rules alone.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    x = image_batch(2, 64, 64, seed=12)
    target = model(x).argmax(dim=1)
    ours = our_lrp(model, x, target, first)
    theirs = zennit_lrp(model, x, target, canonizers)
    scale = float(theirs.abs().max())
    assert scale > 0
    assert float((ours - theirs).abs().max()) <= 1e-4 * scale
    # control: our reference rules (z^B first layer, sign-aware sums) give a different map
    other = LRP(model, first).attribute(x, target, attribute_to_layer_input=True,
                                        attr_dim_summation=False)
    assert float((other - theirs).abs().max()) > 1e-2 * scale
