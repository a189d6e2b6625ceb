"""captum_fgcam.metrics: known answers, a plain-loop reference, batching, peers, captum.metrics."""

from __future__ import annotations

import re
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from captum.metrics import infidelity, sensitivity_max
from conftest import BehindFront, Crop
from torch import nn

from captum_fgcam import FGGradCam
from captum_fgcam.metrics import (
    DEFAULT_BLUR,
    RISE_BLUR,
    Blur,
    average_drop_increase,
    energy_proportion,
    insertion_deletion,
    pointing_game,
    unseen_mass,
)

# ---------------------------------------------------------------- models


class RegionMean(nn.Module):
    """Logit 0 = mean of channel 0 over the top-left 4x4 block of an 8x8 image; logit 1 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0, :4, :4].mean(dim=(1, 2))
        return torch.stack([m, torch.zeros_like(m)], dim=1)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 12, 12, generator=g)
    # coarse integer-valued maps: many ties, so tie-breaking is exercised
    attr = torch.randint(-2, 4, (3, 1, 6, 6), generator=g).float()
    return x, attr, [0, 3, 1]


ZEROS = torch.zeros_like
IMAGE = torch.full((2, 1, 8, 8), 4.0)
INSIDE = torch.zeros(2, 1, 8, 8)
INSIDE[:, :, :4, :4] = 1.0
OUTSIDE = 1.0 - INSIDE

# ---------------------------------------------------------------- known answers


def test_insertion_deletion_known_answer():
    """Perfect map: deletion drops at once, insertion rises at once; the reversed map opposite.
    16 region pixels of 64, 4 per step: score = 4 * (region pixels kept) / 16."""
    good = insertion_deletion(RegionMean(), IMAGE, INSIDE, 0, pixels_per_step=4, blur=ZEROS,
                              use_softmax=False)
    torch.testing.assert_close(good.fractions, torch.arange(17) / 16)
    ramp = torch.tensor([4.0, 3, 2, 1] + [0] * 13)
    torch.testing.assert_close(good.deletion_curve, ramp.expand(2, 17))
    torch.testing.assert_close(good.insertion_curve, 4 - ramp.expand(2, 17))
    # trapezoids: deletion (7 + 5 + 3 + 1) / 2 / 16 = 0.5, insertion 4 - 0.5
    torch.testing.assert_close(good.deletion, torch.full((2,), 0.5))
    torch.testing.assert_close(good.insertion, torch.full((2,), 3.5))
    torch.testing.assert_close(good.overall, torch.full((2,), 3.0))

    bad = insertion_deletion(RegionMean(), IMAGE, OUTSIDE, 0, steps=16, blur=ZEROS,
                             use_softmax=False)
    torch.testing.assert_close(bad.deletion, torch.full((2,), 3.5))
    torch.testing.assert_close(bad.insertion, torch.full((2,), 0.5))
    assert bad.average_overall == pytest.approx(-3.0)

    soft = insertion_deletion(RegionMean(), IMAGE, INSIDE, [0, 0], pixels_per_step=4,
                              blur=ZEROS)
    torch.testing.assert_close(soft.deletion_curve, torch.sigmoid(ramp).expand(2, 17))


def test_insertion_deletion_uneven_last_step():
    got = insertion_deletion(RegionMean(), IMAGE, INSIDE, 0, pixels_per_step=24, blur=ZEROS,
                             use_softmax=False)
    torch.testing.assert_close(got.fractions, torch.tensor([0.0, 24 / 64, 48 / 64, 1.0]))
    torch.testing.assert_close(got.deletion_curve, torch.tensor([[4.0, 0, 0, 0]] * 2))


def test_average_drop_increase_known_answer():
    good = average_drop_increase(RegionMean(), IMAGE, INSIDE, 0, blur=ZEROS, use_softmax=False)
    assert good.average_drop == 0 and good.average_increase == 0
    bad = average_drop_increase(RegionMean(), IMAGE, OUTSIDE, 0, blur=ZEROS, use_softmax=False)
    torch.testing.assert_close(bad.drop, torch.full((2,), 100.0))
    soft = average_drop_increase(RegionMean(), IMAGE, OUTSIDE, 0, blur=ZEROS)
    y, o = torch.sigmoid(torch.tensor(4.0)), torch.tensor(0.5)
    assert soft.average_drop == pytest.approx(100 * (y - o).item() / y.item(), rel=1e-6)
    brighter = average_drop_increase(RegionMean(), IMAGE, OUTSIDE, 0,
                                     blur=partial(torch.full_like, fill_value=8.0))
    assert brighter.average_drop == 0 and brighter.average_increase == 100


def test_signed_map_keeps_only_its_positive_pixels():
    """8 positive pixels (rows 0-1 of the region), the rest -1. Keeping only the positive ones
    keeps half the region (drop 50 %); keeping the top 32 by stable sort keeps rows 0-3."""
    signed = -torch.ones(1, 1, 8, 8)
    signed[:, :, :2, :4] = 1.0
    image = IMAGE[:1]
    only = average_drop_increase(RegionMean(), image, signed, 0, blur=ZEROS, use_softmax=False)
    torch.testing.assert_close(only.drop, torch.tensor([50.0]))
    top = average_drop_increase(RegionMean(), image, signed, 0, blur=ZEROS, use_softmax=False,
                                positive_only=False)
    torch.testing.assert_close(top.drop, torch.tensor([0.0]))


def test_energy_proportion_known_answers():
    box = torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4]])
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4, :4] = True
    for region in (box, mask):
        torch.testing.assert_close(energy_proportion(INSIDE, region, (8, 8)), torch.ones(2))
        torch.testing.assert_close(energy_proportion(OUTSIDE, region, (8, 8)), torch.zeros(2))
        # negative values carry no mass
        torch.testing.assert_close(energy_proportion(INSIDE - 5 * OUTSIDE, region, (8, 8)),
                                   torch.ones(2))
    # a constant 4x4 map, upsampled to the 8x8 image the box refers to: area ratio 16/64
    flat = torch.ones(2, 4, 4)
    torch.testing.assert_close(energy_proportion(flat, box, image_size=(8, 8)),
                               torch.full((2,), 0.25))
    torch.testing.assert_close(energy_proportion(flat, mask), torch.full((2,), 0.25))
    assert torch.equal(energy_proportion(-flat, mask), torch.zeros(2))   # no positive mass: 0
    # channels are summed: a 3-channel map equal to INSIDE in total
    torch.testing.assert_close(energy_proportion(INSIDE.expand(2, 3, 8, 8) / 3, mask),
                               torch.ones(2))


def test_pointing_game():
    sal = torch.zeros(1, 8, 8)
    sal[0, 2, 5] = 1.0
    size = (8, 8)
    assert pointing_game(sal, torch.tensor([[4, 1, 7, 4]]), image_size=size).item() == 1
    assert pointing_game(sal, torch.tensor([[0, 0, 4, 4]]), image_size=size).item() == 0
    far = torch.tensor([[0, 0, 4, 2]])        # nearest box pixel (x=3, y=1): distance sqrt(5)
    assert pointing_game(sal, far, tolerance=2, image_size=size).item() == 0
    assert pointing_game(sal, far, tolerance=2.3, image_size=size).item() == 1
    ties = torch.zeros(1, 8, 8)               # a plateau: its centre (3.5, 3.5) -> pixel (3, 3)
    ties[0, 2:6, 2:6] = 1.0
    assert pointing_game(ties, torch.tensor([[3, 3, 4, 4]]), image_size=size).item() == 1
    assert pointing_game(ties, torch.tensor([[2, 2, 3, 3]]), image_size=size).item() == 0
    plateau = torch.zeros(1, 8, 8)
    plateau[0, :3, 2:6] = 1.0                 # a coarse map's maximum cell, upsampled
    assert pointing_game(plateau, torch.tensor([[3, 1, 5, 2]]), image_size=size).item() == 1
    assert pointing_game(plateau, torch.tensor([[2, 0, 3, 1]]), image_size=size).item() == 0
    # a constant map points nowhere, wherever the region is
    assert pointing_game(torch.zeros(1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool)).item() == 0


def test_unseen_mass():
    unseen = torch.zeros(16, 16, dtype=torch.bool)
    unseen[8:] = True
    torch.testing.assert_close(unseen_mass(INSIDE, unseen[4:12, 4:12]), torch.zeros(2))
    torch.testing.assert_close(unseen_mass(torch.ones(2, 4, 4), unseen), torch.full((2,), 0.5))
    # a model that cannot see the bottom half: Grad-CAM, stretched over the whole image (the
    # metric refuses to stretch: it is done here), puts mass there ("seeing through walls");
    # FG-Grad-CAM follows the crop and puts none
    torch.manual_seed(0)
    model = BehindFront(Crop()).eval()
    x = torch.randn(2, 3, 16, 16)
    gradcam = LayerGradCam(model, model.features[2]).attribute(x, 1, relu_attributions=True)
    assert gradcam.shape == (2, 1, 8, 16)
    stretched = F.interpolate(gradcam, size=(16, 16), mode="bilinear", align_corners=False)
    assert (unseen_mass(stretched, unseen) > 0.2).all()
    fg = FGGradCam(model, model.front).attribute(x, 1, attribute_to_layer_input=True)
    assert fg.shape == (2, 1, 16, 16)
    assert torch.equal(unseen_mass(fg, unseen), torch.zeros(2))


# ---------------------------------------------------------------- plain-loop reference


def _reference_map(attr: torch.Tensor, size: tuple[int, int]) -> list[float]:
    sal = attr.sum(dim=0, keepdim=True)[None]
    sal = F.interpolate(sal, size=size, mode="bilinear", align_corners=False)
    return sal.flatten().tolist()


def _score(model, image, target, use_softmax):
    with torch.no_grad():
        out = model(image[None])[0]
    return (out.softmax(0) if use_softmax else out)[target].item()


def _with_pixels(base, source, pixels):
    """``base`` with the flat pixels ``pixels`` taken from ``source``."""
    chosen = torch.zeros(base.shape[1] * base.shape[2], dtype=torch.bool)
    chosen[list(pixels)] = True
    return torch.where(chosen.view(base.shape[1:]), source, base)


def reference_insertion_deletion(model, x, attr, targets, q, blur, use_softmax):
    """One forward pass per step per image; Python's (stable) sorted() ranks the pixels."""
    _, _, h, w = x.shape
    ins_auc, del_auc = [], []
    for i in range(x.shape[0]):
        sal = _reference_map(attr[i], (h, w))
        order = sorted(range(h * w), key=lambda p, s=sal: -s[p])
        blurred = blur(x[i : i + 1])[0]
        counts = list(range(0, h * w, q)) + [h * w]
        ins = [_score(model, _with_pixels(blurred, x[i], order[:t]), targets[i], use_softmax)
               for t in counts]
        dele = [_score(model, _with_pixels(x[i], blurred, order[:t]), targets[i],
                       use_softmax) for t in counts]
        fr = [t / (h * w) for t in counts]
        trap = [sum((c[k] + c[k + 1]) / 2 * (fr[k + 1] - fr[k]) for k in range(len(fr) - 1))
                for c in (ins, dele)]
        ins_auc.append(trap[0])
        del_auc.append(trap[1])
    return torch.tensor(ins_auc), torch.tensor(del_auc)


def reference_drop_increase(model, x, attr, targets, keep, blur, use_softmax):
    _, _, h, w = x.shape
    drops, incs = [], []
    for i in range(x.shape[0]):
        sal = _reference_map(attr[i], (h, w))
        order = sorted(range(h * w), key=lambda p, s=sal: -s[p])
        k = min(round(keep * h * w), sum(v > 0 for v in sal))
        perturbed = _with_pixels(blur(x[i : i + 1])[0], x[i], order[:k])
        y = _score(model, x[i], targets[i], use_softmax)
        o = _score(model, perturbed, targets[i], use_softmax)
        drops.append(100 * max(0.0, y - o) / y)
        incs.append(float(y < o))
    return torch.tensor(drops), torch.tensor(incs)


def test_batched_equals_plain_loops(cnn, batch):
    x, attr, targets = batch
    blur = Blur(5, 2.0)
    for use_softmax in (True, False):
        got = insertion_deletion(cnn, x, attr, targets, pixels_per_step=10, blur=blur,
                                 use_softmax=use_softmax, batch_size=16)
        ins, dele = reference_insertion_deletion(cnn, x, attr, targets, 10, blur, use_softmax)
        torch.testing.assert_close(got.insertion, ins, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.deletion, dele, rtol=1e-5, atol=1e-6)
    ad = average_drop_increase(cnn, x, attr, targets, blur=blur, batch_size=4)
    drop, inc = reference_drop_increase(cnn, x, attr, targets, 0.5, blur, True)
    torch.testing.assert_close(ad.drop, drop, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ad.increase, inc)


def test_batch_size_and_batch_composition_do_not_change_results(cnn, batch):
    x, attr, targets = batch
    attr3 = attr.expand(3, 3, 6, 6) * torch.tensor([1.0, -0.5, 2.0]).view(1, 3, 1, 1)
    runs = [insertion_deletion(cnn, x, attr3, targets, steps=12, blur=RISE_BLUR, batch_size=b)
            for b in (1, 7, 1000)]
    per_image = [insertion_deletion(cnn, x[i : i + 1], attr3[i : i + 1], targets[i], steps=12,
                                    blur=RISE_BLUR) for i in range(3)]
    for run in runs[1:]:
        torch.testing.assert_close(run.insertion_curve, runs[0].insertion_curve)
        torch.testing.assert_close(run.deletion_curve, runs[0].deletion_curve)
    torch.testing.assert_close(torch.cat([r.insertion_curve for r in per_image]),
                               runs[0].insertion_curve)
    torch.testing.assert_close(torch.cat([r.deletion for r in per_image]), runs[0].deletion)
    ads = [average_drop_increase(cnn, x, attr3, targets, batch_size=b) for b in (1, 5)]
    torch.testing.assert_close(ads[0].drop, ads[1].drop)
    single = average_drop_increase(cnn, x[1:2], attr3[1:2], targets[1])
    torch.testing.assert_close(single.drop, ads[0].drop[1:2])


def test_additional_forward_args_follow_their_images(cnn, batch):
    x, attr, targets = batch

    def shifted(inputs: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return cnn(inputs) + shift[:, None]

    shift = torch.tensor([0.0, 5.0, -3.0])
    a = insertion_deletion(shifted, x, attr, targets, steps=6, use_softmax=False, batch_size=5,
                           additional_forward_args=(shift,))
    b = insertion_deletion(cnn, x, attr, targets, steps=6, use_softmax=False)
    torch.testing.assert_close(a.insertion_curve, b.insertion_curve + shift[:, None])


def test_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.randn(2, 3, 20, 30, dtype=torch.float64)
    for blur in (DEFAULT_BLUR, RISE_BLUR, Blur(7, 1.5)):
        r = blur.kernel_size // 2
        want = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, blur.sigma, blur.sigma),
                                       mode="nearest", truncate=r / blur.sigma)
        np.testing.assert_allclose(blur(x).numpy(), want, rtol=1e-10, atol=1e-12)


def test_clear_errors(cnn, batch):
    x, attr, targets = batch
    with pytest.raises(ValueError, match="2 entries for 3 examples"):
        insertion_deletion(cnn, x, attr, [0, 1])
    with pytest.raises(ValueError, match="attributions must have shape"):
        average_drop_increase(cnn, x, attr[:, 0, 0], targets)
    with pytest.raises(ValueError, match="keep"):
        average_drop_increase(cnn, x, attr, targets, keep=50)
    with pytest.raises(ValueError, match="mode"):
        average_drop_increase(cnn, x, attr, targets, mode="zero")
    with pytest.raises(ValueError, match="odd"):
        Blur(4, 1.0)
    with pytest.raises(ValueError, match="boxes"):
        energy_proportion(attr, torch.zeros(3, 5, 5, 5))


# ---------------------------------------------------------------- peers


def test_energy_proportion_equals_quantus_relevance_mass_accuracy():
    quantus = pytest.importorskip("quantus")
    g = torch.Generator().manual_seed(2)
    a = torch.rand(4, 1, 10, 10, generator=g)     # non-negative: Quantus sums signed values
    s = torch.rand(4, 1, 10, 10, generator=g) > 0.6
    metric = quantus.RelevanceMassAccuracy(disable_warnings=True)
    want = metric(model=None, x_batch=np.zeros((4, 1, 10, 10), np.float32),
                  y_batch=np.zeros(4, np.int64), a_batch=a.numpy(), s_batch=s.numpy())
    got = energy_proportion(a, s[:, 0])
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-5)


@pytest.fixture(scope="module")
def sharp() -> nn.Module:
    """SmallCNN with confident predictions (softmax top-1 about 0.6), so scores move."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():
        model.head.weight.mul_(30)
    return model


def test_deletion_curve_equals_quantus_pixel_flipping(sharp, batch):
    """Quantus' PixelFlipping is a deletion curve without its starting point. Its "black"
    baseline is the image's minimum; its features are channel values, so a map broadcast over
    the 3 channels and 3 * q features per step flip q pixels per step (continuous map: no ties,
    as its argsort is not stable)."""
    quantus = pytest.importorskip("quantus")
    x = batch[0]
    targets = sharp(x).argmax(dim=1)
    attr = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(5))

    def black(v: torch.Tensor) -> torch.Tensor:
        return v.amin(dim=(1, 2, 3), keepdim=True).expand_as(v)

    for use_softmax in (False, True):
        metric = quantus.PixelFlipping(features_in_step=3 * 8, perturb_baseline="black",
                                       normalise=False, disable_warnings=True)
        want = metric(model=sharp, x_batch=x.numpy(), y_batch=targets.numpy(),
                      a_batch=attr.expand(3, 3, 12, 12).numpy().copy(), softmax=use_softmax,
                      device="cpu")
        got = insertion_deletion(sharp, x, attr, targets, pixels_per_step=8, blur=black,
                                 use_softmax=use_softmax)
        np.testing.assert_allclose(got.deletion_curve[:, 1:].numpy(), np.asarray(want),
                                   rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def torchcam_gradcam(sharp):
    methods = pytest.importorskip("torchcam.methods")
    extractor = methods.GradCAM(sharp, target_layer="features.4")
    yield extractor
    extractor.remove_hooks()


def _predicted_and_one_unlikely(model, x) -> list[int]:
    targets = model(x).argmax(dim=1).tolist()
    return targets[:-1] + [0]


def _torchcam_map(extractor, model, x, targets):
    """TorchCAM's own (ReLU, min-max normalised) Grad-CAM, as its metrics compute it."""
    scores = torch.softmax(model(x), dim=-1)
    return extractor.fuse_cams(extractor(targets, scores)).detach()


def test_drop_increase_equals_torchcam_classification_metric(sharp, batch, torchcam_gradcam):
    from torchcam.metrics import ClassificationMetric

    x = batch[0]
    targets = _predicted_and_one_unlikely(sharp, x)
    metric = ClassificationMetric(torchcam_gradcam, partial(torch.softmax, dim=-1))
    metric.update(x, class_idx=targets)
    want = metric.summary()
    cam = _torchcam_map(torchcam_gradcam, sharp, x, targets)
    got = average_drop_increase(sharp, x, cam, targets, mode="multiply")
    assert got.average_drop == pytest.approx(100 * want["avg_drop"], rel=1e-5)
    assert got.average_increase == pytest.approx(100 * want["conf_increase"])
    assert got.average_drop > 10 and 0 < got.average_increase < 100   # not a trivial case


def test_insertion_deletion_equals_torchcam(sharp, batch, torchcam_gradcam):
    from torchcam.metrics import DeletionInsertionMetric

    x = batch[0]
    targets = _predicted_and_one_unlikely(sharp, x)
    metric = DeletionInsertionMetric(torchcam_gradcam, partial(torch.softmax, dim=-1), steps=16,
                                     baseline=RISE_BLUR, batch_size=8)
    metric.update(x, class_idx=targets)
    want = metric.summary()
    cam = _torchcam_map(torchcam_gradcam, sharp, x, targets)
    got = insertion_deletion(sharp, x, cam, targets, steps=16, blur=RISE_BLUR)
    assert got.average_insertion == pytest.approx(want["insertion_auc"], rel=1e-5)
    assert got.average_deletion == pytest.approx(want["deletion_auc"], rel=1e-5)


def test_captum_infidelity_and_sensitivity_on_fg_grad_cam(cnn, batch):
    x, _, targets = batch
    fg = FGGradCam(cnn, cnn.features[0])
    kwargs = {"attribute_to_layer_input": True, "attr_dim_summation": False}
    attr = fg.attribute(x, targets, **kwargs)
    assert attr.shape == x.shape

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.05 * torch.randn_like(inputs)
        return noise, inputs - noise

    torch.manual_seed(3)
    infid = infidelity(cnn, perturb, x, attr, target=targets, n_perturb_samples=4)

    def explain(inputs, **kw) -> tuple[torch.Tensor]:
        # sensitivity_max passes a tuple first and expects a tuple back (Captum's primary
        # attributions' convention); layer attributions, Captum's LayerGradCam too, return a tensor
        return (fg.attribute(inputs, **kw),)

    sens = sensitivity_max(explain, x, target=targets, n_perturb_samples=3, **kwargs)
    for value in (infid, sens):
        assert value.shape == (3,) and torch.isfinite(value).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(cnn, batch):
    x, attr, targets = batch
    model = SmallCNN().eval()
    model.load_state_dict(cnn.state_dict())
    model.cuda()
    cpu = insertion_deletion(cnn, x, attr, targets, steps=8, blur=RISE_BLUR)
    gpu = insertion_deletion(model, x.cuda(), attr.cuda(), torch.tensor(targets).cuda(), steps=8,
                             blur=RISE_BLUR)
    assert gpu.insertion.device.type == "cuda"
    torch.testing.assert_close(gpu.insertion.cpu(), cpu.insertion, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu.deletion.cpu(), cpu.deletion, rtol=1e-4, atol=1e-5)
    ad_cpu = average_drop_increase(cnn, x, attr, targets)
    ad_gpu = average_drop_increase(model, x.cuda(), attr.cuda(), targets)
    torch.testing.assert_close(ad_gpu.drop.cpu(), ad_cpu.drop, rtol=1e-4, atol=1e-4)
    box = torch.tensor([[0, 0, 6, 6]] * 3)
    torch.testing.assert_close(energy_proportion(attr.cuda(), box.cuda(), (12, 12)).cpu(),
                               energy_proportion(attr, box, (12, 12)))


def test_dead_zone_known_answers():
    """||minmax(m) in region||_2 / ||minmax(m)||_2: a map 0 at its minimum, 1 in the top row
    and 1 in one bottom pixel of a 4x4 image; region = the bottom two rows."""
    from captum_fgcam.metrics import dead_zone
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, :] = 3.0
    m[0, 0, 3, 0] = 3.0
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[2:] = True
    torch.testing.assert_close(dead_zone(m - 1, region), torch.tensor([1 / 5 ** 0.5]))
    assert dead_zone(torch.ones(1, 1, 4, 4), region).item() == 0  # constant map


# ---------------------------------------------------------------- inputs: refused or converted


class Counting(nn.Module):
    """SmallCNN that counts its calls (a refusal must come before any)."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.calls = SmallCNN().eval(), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


X8 = torch.rand(2, 3, 8, 8)
MAPS = torch.rand(2, 1, 8, 8)
FLOAT_MASK = torch.zeros(2, 4)  # a 2 x 4 image's mask, or two boxes?
FLOAT_MASK[:, :2] = 1.0
NAN_X = X8.clone()
NAN_X[1, 0, 0, 0] = float("nan")


@pytest.mark.parametrize("call, error, fix", [
    # a map of another aspect ratio than the image
    (lambda m: average_drop_increase(m, X8, torch.rand(2, 1, 4, 8), 0), ValueError,
     "F.interpolate(maps, size=(8, 8)"),
    (lambda m: insertion_deletion(m, X8, torch.rand(2, 8, 2), 0), ValueError,
     "F.interpolate(maps, size=(8, 8)"),
    (lambda m: energy_proportion(torch.rand(2, 1, 8, 16), torch.ones(2, 16, 16, dtype=bool)),
     ValueError, "F.interpolate(maps, size=(16, 16)"),
    (lambda m: pointing_game(torch.rand(2, 3, 7), torch.tensor([[0, 0, 4, 4]] * 2),
                             image_size=(224, 224)), ValueError, "aspect ratio"),
    (lambda m: unseen_mass(torch.rand(2, 8, 4), torch.ones(8, 8)), ValueError, "aspect ratio"),
    # a float mask where boxes could be meant, and the other region mistakes
    (lambda m: energy_proportion(MAPS, FLOAT_MASK), ValueError, "form='mask'"),
    (lambda m: energy_proportion(MAPS, FLOAT_MASK[:1]), ValueError, "form='mask'"),
    (lambda m: pointing_game(torch.rand(2, 2, 4), FLOAT_MASK, image_size=(2, 4)), ValueError,
     "form='boxes' or form='mask'"),
    (lambda m: energy_proportion(MAPS, FLOAT_MASK.numpy()), ValueError, "form='mask'"),
    (lambda m: energy_proportion(MAPS, torch.ones(2, 8, 8), image_size=(16, 16)), ValueError,
     "drop image_size"),
    (lambda m: energy_proportion(MAPS, torch.ones(2, 3), form="boxes", image_size=(8, 8)),
     ValueError, "(x0, y0, x1, y1)"),
    (lambda m: energy_proportion(MAPS, torch.ones(2, 8, 8), form="box"), ValueError,
     "form must be 'mask', 'boxes' or None"),
    (lambda m: energy_proportion(MAPS, [[0, 0, 4, 4]] * 2, image_size=(0, 8)), ValueError,
     "two positive integers"),
    (lambda m: energy_proportion(MAPS, [[0, 0, 4, 4]] * 2, image_size="8x8"), ValueError,
     "two positive integers"),
    (lambda m: energy_proportion(MAPS, "top-left"), TypeError, "a numpy array or a list"),
    (lambda m: energy_proportion(MAPS, [[0, 0, 4], [0, 0, 4, 4]], image_size=(8, 8)),
     TypeError, "a list of numbers"),
    (lambda m: pointing_game(MAPS, torch.ones(2, 8, 8), tolerance=-1), ValueError,
     "tolerance must be a distance"),
    (lambda m: pointing_game(MAPS, torch.ones(2, 8, 8), tolerance=float("nan")), ValueError,
     "tolerance must be a distance"),
    # empty batches
    (lambda m: energy_proportion(MAPS[:0], torch.ones(0, 8, 8)), ValueError, "batch is empty"),
    (lambda m: average_drop_increase(m, X8[:0], MAPS[:0], 0), ValueError, "batch is empty"),
    (lambda m: insertion_deletion(m, X8[:0], MAPS[:0], []), ValueError, "batch is empty"),
    # inputs, maps, batch sizes, the model, the blur
    (lambda m: average_drop_increase(m, X8.numpy(), MAPS, 0), TypeError, "torch.as_tensor"),
    (lambda m: insertion_deletion(m, (X8 * 255).byte(), MAPS, 0), TypeError, "x.float()"),
    (lambda m: insertion_deletion(m, NAN_X, MAPS, 0), ValueError, "drop or repair"),
    (lambda m: average_drop_increase(m, X8, MAPS[:1], 0), ValueError, "one map per image"),
    (lambda m: average_drop_increase(m, X8, "maps", 0), TypeError, "a numpy array or a list"),
    (lambda m: energy_proportion(MAPS[0, 0], torch.ones(8, 8)), ValueError, "maps[None]"),
    (lambda m: average_drop_increase("resnet18", X8, MAPS, 0), TypeError,
     "forward_func must be the model"),
    (lambda m: insertion_deletion(m, X8, MAPS, 0, blur=lambda x: x[0]), ValueError,
     "blur must return a tensor of the inputs' shape"),
    (lambda m: insertion_deletion(m, X8, MAPS, "cat"), TypeError, "class indices"),
    (lambda m: average_drop_increase(m, X8, MAPS, None), TypeError, "class indices"),
])
def test_bad_metric_inputs_are_refused_naming_the_fix_before_any_model_call(call, error, fix):
    model = Counting()
    with pytest.raises(error, match=re.escape(fix)):
        call(model)
    assert model.calls == 0


def test_other_forms_of_valid_inputs_give_the_same_numbers(cnn, batch):
    """numpy maps and masks, lists of boxes, a (1, 4) box for every image, a list image_size,
    ``form="mask"`` for an N x 4 mask, a feature grid that is not an integer downsampling: the
    numbers of the tensor forms, bit for bit."""
    x, attr, targets = batch
    mask = torch.zeros(3, 12, 12, dtype=torch.bool)
    mask[:, 2:7, 3:9] = True
    box = torch.tensor([[3, 2, 9, 7]] * 3)
    for metric in (energy_proportion, pointing_game, unseen_mass):
        want = metric(attr, mask)
        assert torch.equal(metric(attr.numpy(), mask.numpy()), want)
        assert torch.equal(metric(attr, mask.numpy().astype(np.uint8)), want)
        assert torch.equal(metric(attr, box.tolist(), image_size=[12, 12]), want)
        assert torch.equal(metric(attr, box[:1], image_size=(12, 12)), want)
        assert torch.equal(metric(attr, mask[:, None].float(), form="mask"), want)
    narrow = torch.zeros(3, 2, 4)
    narrow[:, :, :2] = 1
    assert torch.equal(energy_proportion(attr[:, :, :2, :4], narrow, form="mask"),
                       energy_proportion(attr[:, :, :2, :4], narrow.bool()))
    grid = torch.rand(3, 7, 8)  # ResNet's grid of a 224 x 225 image (ceil(225 / 32) = 8)
    whole = torch.ones(224, 225, dtype=torch.bool)
    assert torch.equal(energy_proportion(grid, whole), torch.ones(3))
    drop = average_drop_increase(cnn, x, attr, targets)
    same = average_drop_increase(cnn, x, attr.numpy(), np.array(targets))
    assert torch.equal(drop.drop, same.drop)
    curves = insertion_deletion(cnn, x, attr[:, 0].numpy(), targets, steps=4)
    assert torch.equal(curves.insertion, insertion_deletion(cnn, x, attr, targets, steps=4)
                       .insertion)
