"""Rules: Captum's rule objects accepted and equal to Captum's own LRP; z^B by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import LRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule
from conftest import BehindFront, Crop, Wall, image_batch, make_vgg
from torch import nn

from captum_fgcam import FGGradCam, FineGrainedUpsampler, PassRule, ZBoxRule
from captum_fgcam.propagation import EpsilonRule as OurEpsilonRule
from captum_fgcam.propagation import FedByInput, find_input_layer, resolve_rules


@pytest.fixture(scope="module")
def vgg11():
    model = make_vgg("vgg11", seed=2)
    for m in model.modules():  # Captum's LRP needs out-of-place ReLUs; ours does not
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def captum_lrp(model, x, target, first_rule=None, conv_rule=None):
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and conv_rule is not None:
            m.rule = copy.deepcopy(conv_rule)
    if first_rule is not None:
        model.features[0].rule = first_rule
    return LRP(model).attribute(x, target=target)


def our_lrp(model, x, target, rules):
    up = FineGrainedUpsampler(model, model.classifier[6], model.features[0], rules=rules)
    logits = model(x)
    start = torch.zeros_like(logits).scatter(1, target[:, None], logits.gather(1, target[:, None]))
    return up.attribute(x, start, attribute_to_layer_input=True, attr_dim_summation=False)


def assert_close(a, b, rel=1e-4):
    scale = b.abs().max()
    assert scale > 0
    assert (a - b).abs().max() <= rel * scale, float((a - b).abs().max() / scale)


LINEAR_AND_POOLS = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d)


@pytest.mark.parametrize("conv_rule", [None, GammaRule(0.25), Alpha1_Beta0_Rule(),
                                       EpsilonRule(0.1)], ids=["epsilon", "gamma", "a1b0", "eps01"])
def test_captum_rules_match_captum_lrp(vgg11, conv_rule):
    x = image_batch(2, 64, 64, seed=5)
    target = vgg11(x).argmax(dim=1)
    rules = {(FedByInput(), nn.Conv2d): conv_rule or EpsilonRule(), LINEAR_AND_POOLS: EpsilonRule()}
    assert_close(our_lrp(vgg11, x, target, rules), captum_lrp(vgg11, x, target,
                                                                conv_rule=conv_rule))


def test_zbox_rule_inside_captum_lrp_matches_ours(vgg11):
    x = image_batch(2, 64, 64, seed=6)
    target = vgg11(x).argmax(dim=1)
    ours = our_lrp(vgg11, x, target, {vgg11.features[0]: ZBoxRule(), LINEAR_AND_POOLS:
                                      EpsilonRule()})
    theirs = captum_lrp(vgg11, x, target, first_rule=ZBoxRule())
    assert_close(ours, theirs)
    plain = captum_lrp(vgg11, x, target)
    assert (plain - theirs).abs().max() > 1e-3 * theirs.abs().max()  # z^B made a difference


def zbox_by_hand(x, w, low, high, r):
    """z^B for a 1-in, 1-out 3x3 convolution with zero padding 1, as explicit loops."""
    h, wd = x.shape
    pad = lambda a: np.pad(a, 1)  # noqa: E731
    xp, lp, hp = pad(x), pad(low), pad(high)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    out = np.zeros((h + 2, wd + 2))
    for i in range(h):
        for j in range(wd):
            terms = (xp[i:i + 3, j:j + 3] * w - lp[i:i + 3, j:j + 3] * wp
                     - hp[i:i + 3, j:j + 3] * wn)
            z = terms.sum()
            if z != 0:
                out[i:i + 3, j:j + 3] += terms * r[i, j] / z
    return out[1:-1, 1:-1]


@pytest.mark.parametrize("bounds", ["per_image", "explicit"])
def test_zbox_rule_by_hand(bounds):
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=True)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    x = torch.randn(1, 1, 5, 6)
    r = torch.randn(1, 1, 5, 6)
    if bounds == "per_image":
        rule = ZBoxRule()
        low = np.full((5, 6), float(x.min()))
        high = np.full((5, 6), float(x.max()))
    else:
        rule = ZBoxRule.from_normalization(mean=[0.5], std=[0.25])
        low, high = np.full((5, 6), -2.0), np.full((5, 6), 2.0)
    up = FineGrainedUpsampler(model, conv, conv, rules={conv: rule})
    got = up.attribute(x, r, attribute_to_layer_input=True)[0, 0].double().numpy()
    expected = zbox_by_hand(x[0, 0].double().numpy(), conv.weight[0, 0].detach().double().numpy(),
                            low, high, r[0, 0].double().numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_captum_identity_rule_and_presets():
    assert isinstance(resolve_rules({nn.BatchNorm2d: IdentityRule()}).entries[0][1], PassRule)
    eps = resolve_rules("epsilon")
    assert any(isinstance(r, OurEpsilonRule) for _, r in eps.entries)
    with pytest.raises(ValueError, match="unknown rule preset"):
        resolve_rules("nope")
    with pytest.raises(TypeError, match="rules must be"):
        resolve_rules(3)


def test_sign_aware_sum_fast_path_equals_general_path():
    """Additions of equal shapes use a closed form; it must equal the autograd form."""
    import operator

    from captum_fgcam.propagation.rules import Call, SignAwareZRule

    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    b[0, 0, 0, 0] = -a[0, 0, 0, 0]  # z = 0: dropped (reference) or shared evenly (default)
    relevance = torch.randn(2, 3, 4, 4)
    keep = a + b != 0
    for rule in (SignAwareZRule(fallback=False), SignAwareZRule()):
        fast = rule.propagate(Call(operator.add, (a, b)), relevance)
        general = rule.propagate(Call(torch.add, (a, b), {"alpha": 1}), relevance)
        for f, g in zip(fast, general, strict=True):
            assert torch.allclose(f, g, atol=1e-6)
        total = (fast[0] + fast[1])[keep].sum()
        assert torch.allclose(total, relevance[keep].sum(), rtol=1e-5)  # conserved: z != 0
        zero = relevance[0, 0, 0, 0] / 2 if rule.fallback else 0.0
        assert fast[0][0, 0, 0, 0] == zero and fast[1][0, 0, 0, 0] == zero


def test_slicing_routes_relevance_only_to_the_rows_it_keeps():
    """A model that crops its input (``x[:, :, :8]``) gets no relevance in the rows it drops."""

    torch.manual_seed(0)
    model = BehindFront(Crop()).eval()
    x = torch.randn(2, 3, 16, 16)
    full = FGGradCam(model, model.front).attribute(x, target=1, attribute_to_layer_input=True)
    cropped = FGGradCam(model, model.features[0]).attribute(x, target=1,
                                                             attribute_to_layer_input=True)
    assert full.shape == (2, 1, 16, 16)
    assert torch.equal(full[:, :, 8:], torch.zeros_like(full[:, :, 8:]))
    torch.testing.assert_close(full[:, :, :8], cropped)
    assert full[:, :, :8].abs().sum() > 0


def test_a_constant_zero_gate_passes_no_relevance_and_the_image_rule_looks_through_it():
    """A fixed 0/1 mask in front of the first convolution (a model that cannot see the lower
    rows): no relevance reaches the masked pixels, and the convolution still gets z^B."""

    torch.manual_seed(0)
    model = BehindFront(Wall()).eval()
    x = torch.randn(2, 3, 16, 16)
    assert find_input_layer(model, x) == "front"
    up = FineGrainedUpsampler(model, model.features[3], model.front)
    span = up.span(up.capture((x,)), attribute_to_layer_input=True)
    first = next(n for n in span.steps if n.target == "features.0")
    assert isinstance(span.steps[first].rule, ZBoxRule)
    image = FGGradCam(model, "front").attribute(x, target=1, attribute_to_layer_input=True)
    behind = FGGradCam(model, "features.0").attribute(x, target=1,
                                                       attribute_to_layer_input=True)
    assert behind[:, :, 8:].abs().sum() > 0  # z^B gives the masked zeros relevance ...
    assert torch.equal(image[:, :, 8:], torch.zeros_like(image[:, :, 8:]))  # ... the wall not
    torch.testing.assert_close(image[:, :, :8], behind[:, :, :8])


@pytest.mark.parametrize("groups,signed", [(4, True), (1, True), (4, False), (1, False)])
def test_zplus_fallback_equals_the_rule_written_neuron_by_neuron(groups, signed):
    """z^+ with its fallback (opposite-sign terms where z_j = 0, then w^2), against the
    equation evaluated output by output on the layer's dense matrix (float64); inputs of both
    signs take the fused kernel, non-negative ones the two-step one."""
    from captum_fgcam.propagation import Call, ZPlusRule

    torch.manual_seed(3)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=groups, bias=False).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    x = x if signed else x.clamp(min=0)
    x[x.abs() < 0.3] = 0  # many zero inputs: outputs with z_j = 0
    x[0, :, :3, :3] = 0  # and windows of zeros: z'_j = 0 too
    with torch.no_grad():
        conv.weight[conv.weight.abs() < 0.1] = 0
    relevance = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    ours = ZPlusRule().propagate(Call(conv, (x,)), relevance)[0]

    # the dense matrix W[j, i] of the (linear) convolution, per example
    w = torch.autograd.functional.jacobian(lambda v: conv(v), x[:1]).reshape(100, 100)
    expected = torch.zeros(2, 100, dtype=torch.float64)
    kinds = set()
    for n in range(2):
        xi, r = x[n].reshape(-1), relevance[n].reshape(-1)
        for j in range(100):
            c = w[j] * xi
            same = torch.where(w[j] * xi.sign() > 0, c, 0)  # x+ w+ and x- w-
            opposite = c - same
            if same.sum() != 0:
                expected[n] += same * r[j] / same.sum()
                kinds.add("z")
            elif opposite.sum() != 0:
                expected[n] += opposite * r[j] / opposite.sum()
                kinds.add("opposite")
            elif (w[j] != 0).any():
                squares = w[j] ** 2
                expected[n] += squares * r[j] / squares.sum()
                kinds.add("squares")
    assert kinds == {"z", "opposite", "squares"}  # every branch of the rule is exercised
    torch.testing.assert_close(ours.reshape(2, -1), expected, rtol=1e-10, atol=1e-12)
