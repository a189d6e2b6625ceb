"""Target objects: every ready target against the model wrapped by hand, on several
architectures and at every entry point; segmentation models; what a target refuses.

The independent implementation is what users wrote before target objects existed: a module
whose forward returns the explained score, y = t(model(x)), as an (N, 1) output explained at
class 0. A target object must give the same map bit for bit or to rounding.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import image_batch
from test_model_state import assert_unchanged, snapshot
from torch import nn

from captum_fgcam import LRP, FGCam, FGGradCam, GradCam, LayerError, ScoreCam
from captum_fgcam.metrics import insertion_deletion
from captum_fgcam.targets import (
    ClassLogit,
    ClassProbability,
    Detection,
    MultiLabel,
    Regression,
    SegmentationRegion,
    Similarity,
    box_iou,
)


class Scored(nn.Module):
    """The model with its output turned into the explained score by hand: (N, 1)."""

    def __init__(self, model: nn.Module, score) -> None:
        super().__init__()
        self.model, self.score = model, score
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.model(x))[:, None]


def classifier(name: str) -> tuple[nn.Module, str, str, int]:
    """A random-weights classifier, its input layer, its CAM layer, an input size."""
    torch.manual_seed(0)
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=6).eval(), "conv1", "layer4", 64
    if name == "mobilenet_v3_small":
        return (torchvision.models.mobilenet_v3_small(num_classes=6).eval(), "features.0.0",
                "features.12", 64)
    model = torchvision.models.vgg11_bn(num_classes=6).eval()
    return model, "features.0", "features.25", 64


REFERENCE = torch.randn(6, generator=torch.Generator().manual_seed(3))
#: target object -> the score written by hand on the (N, 6) logits z
CLASSIFIER_TARGETS = {
    "ClassLogit": (ClassLogit([2, 4]), lambda z: z[torch.arange(2), torch.tensor([2, 4])]),
    "ClassProbability softmax": (ClassProbability(3), lambda z: z.softmax(1)[:, 3]),
    "ClassProbability sigmoid": (ClassProbability(1, "sigmoid"), lambda z: z[:, 1].sigmoid()),
    "MultiLabel": (MultiLabel([1, 3]), lambda z: z[:, 1] + z[:, 3]),
    "MultiLabel sigmoid": (MultiLabel([0, 5], "sigmoid"),
                           lambda z: z[:, 0].sigmoid() + z[:, 5].sigmoid()),
    "Regression": (Regression(4), lambda z: z[:, 4]),
    "Similarity": (Similarity(REFERENCE),
                   lambda z: torch.nn.functional.cosine_similarity(z, REFERENCE[None], dim=1)),
    "a function": (lambda out: out[:, [1, 3]].sum(1), lambda z: z[:, [1, 3]].sum(1)),
}


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("case", CLASSIFIER_TARGETS)
def test_fg_cam_with_a_target_equals_the_model_wrapped_by_hand(arch, case):
    target, by_hand = CLASSIFIER_TARGETS[case]
    model, first, cam, size = classifier(arch)
    x = image_batch(2, size, size, seed=5)
    wrapped = Scored(model, by_hand)
    before = snapshot(model)
    ours = FGGradCam(model, first, cam_layer=cam).attribute(x, target,
                                                            attribute_to_layer_input=True)
    theirs = FGGradCam(wrapped, "model." + first, cam_layer="model." + cam).attribute(
        x, 0, attribute_to_layer_input=True)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.abs().max())
    assert_unchanged(model, before)


@pytest.mark.parametrize("case", ["ClassProbability softmax", "MultiLabel", "Similarity"])
@pytest.mark.parametrize("method", ["GradCam", "ScoreCam", "FG-Score-CAM"])
def test_plain_cams_and_score_cam_take_targets(case, method):
    """The plain CAMs run their own passes (Score-CAM: masked images, where the target's own
    score replaces the softmax); the same as on the model wrapped by hand."""
    target, by_hand = CLASSIFIER_TARGETS[case]
    model, first, cam, size = classifier("resnet18")
    x = image_batch(2, size, size, seed=6)
    wrapped = Scored(model, by_hand)

    def run(m, prefix, t):
        if method == "GradCam":
            return GradCam(m, prefix + cam).attribute(x, t)
        if method == "ScoreCam":
            return ScoreCam(m, prefix + cam, progress=False, variant="score-cam").attribute(x, t)
        return FGCam(m, prefix + "layer3", cam_layer=prefix + cam,
                     weighting=ScoreCam(m, prefix + cam, progress=False,
                                        variant="score-cam").weighting).attribute(x, t)

    ours, theirs = run(model, "", target), run(wrapped, "model.", 0)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.abs().max())


def test_class_logit_is_an_int_target():
    model, first, cam, size = classifier("vgg11_bn")
    x = image_batch(2, size, size)
    fg = FGGradCam(model, first, cam_layer=cam)
    assert torch.equal(fg.attribute(x, ClassLogit(3), attribute_to_layer_input=True),
                       fg.attribute(x, 3, attribute_to_layer_input=True))
    assert torch.equal(LRP(model, first).attribute(x, ClassLogit([1, 2])),
                       LRP(model, first).attribute(x, [1, 2]))


def test_lrp_takes_linear_targets_and_refuses_the_others():
    """LRP starts from R0 = y dt/dy: it sums to t for targets linear in the scores; a
    probability or a cosine would start from something else than what is explained."""
    model, first, _, size = classifier("vgg11_bn")
    x = image_batch(2, size, size)
    lrp = LRP(model, first)
    pair = lrp.attribute(x, MultiLabel([1, 3]))
    torch.testing.assert_close(pair, lrp.attribute(x, 1) + lrp.attribute(x, 3))
    for target in (ClassProbability(2), Similarity(REFERENCE)):
        with pytest.raises(ValueError, match="not linear in the model's scores"):
            lrp.attribute(x, target)


def test_batches_are_split_with_their_targets():
    """Per-example target data (masks, references) follows its examples through
    internal_batch_size."""
    model, first, cam, size = classifier("resnet18")
    x = image_batch(3, size, size, seed=8)
    target = Similarity(torch.randn(3, 6, generator=torch.Generator().manual_seed(1)))
    fg = FGGradCam(model, first, cam_layer=cam)
    whole = fg.attribute(x, target, attribute_to_layer_input=True)
    split = fg.attribute(x, target, attribute_to_layer_input=True, internal_batch_size=1)
    torch.testing.assert_close(whole, split, rtol=0, atol=1e-5 * whole.abs().max())


def test_metrics_score_target_objects():
    model, *_ = classifier("resnet18")
    x = image_batch(2, 32, 32)
    maps = torch.rand(2, 1, 32, 32)
    by_index = insertion_deletion(model, x, maps, [1, 3], pixels_per_step=256)
    by_object = insertion_deletion(model, x, maps, ClassProbability([1, 3]),
                                   pixels_per_step=256)
    torch.testing.assert_close(by_object.insertion, by_index.insertion)
    with pytest.raises(ValueError, match="use_softmax applies to class indices"):
        insertion_deletion(model, x, maps, ClassProbability(1), use_softmax=True)


# -- segmentation ---------------------------------------------------------------------------

def conservation_error(model: nn.Module, x: torch.Tensor, target) -> tuple[float, str]:
    """FG-Grad-CAM from the default CAM layer to the model's input (its pixels): max over the
    images of |sum(map) - sum(components)| / sum|components|, and the CAM layer's name."""
    fg = FGGradCam(model, "")
    pixels = fg.attribute(x, target, attribute_to_layer_input=True)
    cam = next(n for n, m in model.named_modules() if m is fg.cam_layer)
    components = FGGradCam(model, cam).attribute(x, target)
    scale = components.abs().flatten(1).sum(1)
    assert (scale > 0).all() and pixels.shape[-2:] == x.shape[-2:]
    error = (pixels.flatten(1).sum(1) - components.flatten(1).sum(1)).abs() / scale
    return float(error.max()), cam


def segmentation(name: str) -> tuple[nn.Module, str, str]:
    """A torchvision segmentation model (random weights, 5 classes), its first layer, and the
    CAM layer: its backbone's shallowest stage the heads read (LR-ASPP: the low-level branch)."""
    torch.manual_seed(0)
    models = torchvision.models.segmentation
    model = getattr(models, name)(weights=None, weights_backbone=None, num_classes=5)
    stage = {"lraspp_mobilenet_v3_large": "backbone.4",
             "deeplabv3_mobilenet_v3_large": "backbone.16",
             "fcn_resnet50": "backbone.layer4"}[name]
    first = "backbone.conv1" if "resnet" in name else "backbone.0.0"
    return model.eval(), first, stage


SEGMENTATION = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"]


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_region_conserves_and_equals_the_model_wrapped_by_hand(name):
    model, first, stage = segmentation(name)
    x = image_batch(2, 64, 64, seed=9)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[16:40, 20:52] = True
    target = SegmentationRegion(2, mask)
    error, cam = conservation_error(model, x, target)
    assert cam == stage and error < 1e-4       # the default CAM layer
    fg = FGGradCam(model, first, cam_layer=stage)
    pixels = fg.attribute(x, target, attribute_to_layer_input=True)
    components = FGGradCam(model, stage, cam_layer=stage).attribute(x, target)
    scale = components.abs().sum()
    assert scale > 0
    torch.testing.assert_close(pixels.sum(dim=(1, 2, 3)), components.sum(dim=(1, 2, 3)),
                               rtol=0, atol=1e-4 * float(scale))
    wrapped = Scored(model, lambda out: (out["out"][:, 2] * mask).sum(dim=(1, 2)))
    theirs = FGGradCam(wrapped, "model." + first, cam_layer="model." + stage).attribute(
        x, 0, attribute_to_layer_input=True)
    torch.testing.assert_close(pixels, theirs, rtol=1e-5, atol=1e-6 * theirs.abs().max())
    single = torch.cat([fg.attribute(x[i:i + 1], target, attribute_to_layer_input=True)
                        for i in range(2)])
    torch.testing.assert_close(pixels, single, rtol=0, atol=1e-5 * pixels.abs().max())


def segformer() -> nn.Module:
    """A small Hugging Face SegFormer (random weights, 4 classes, logits at 1/4 size)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[8, 16],
        num_attention_heads=[1, 2], decoder_hidden_size=16, num_labels=4)
    return transformers.SegformerForSemanticSegmentation(config).eval()


def test_hugging_face_segmentation_from_the_first_stage_its_decoder_reads():
    """SegFormer's all-MLP decoder reads every encoder stage: the first one is the layer
    every path to the output passes through."""
    model = segformer()
    x = image_batch(2, 64, 64, seed=11)
    error, cam = conservation_error(model, x, SegmentationRegion(1, torch.ones(16, 16)))
    assert cam == "segformer.stages.0" and error < 1e-4


def test_a_dense_prediction_without_stages_is_refused_naming_the_fix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    with pytest.raises(LayerError, match="pass cam_layer="):
        FGGradCam(model, "0").attribute(image_batch(1, 16, 16), SegmentationRegion(1))


def test_segmentation_region_by_argmax_and_per_example_masks():
    model, first, stage = segmentation("lraspp_mobilenet_v3_large")
    x = image_batch(2, 64, 64, seed=10)
    out = model(x)["out"]
    c = int(out.argmax(dim=1).flatten().mode().values)
    by_argmax = FGGradCam(model, first, cam_layer=stage).attribute(
        x, SegmentationRegion(c), attribute_to_layer_input=True)
    masks = out.argmax(dim=1) == c
    by_masks = FGGradCam(model, first, cam_layer=stage).attribute(
        x, SegmentationRegion(c, masks), attribute_to_layer_input=True)
    torch.testing.assert_close(by_argmax, by_masks, rtol=0, atol=0)


# -- what a target refuses ------------------------------------------------------------------

def _seg_call(target):
    model, first, stage = segmentation("lraspp_mobilenet_v3_large")
    return model, lambda: FGGradCam(model, first, cam_layer=stage).attribute(
        image_batch(2, 64, 64), target, attribute_to_layer_input=True)


BAD = {
    "empty mask": (lambda: SegmentationRegion(1, torch.zeros(64, 64, dtype=torch.bool)),
                   ValueError, "empty for example"),
    "mask of the wrong size": (lambda: SegmentationRegion(1, torch.ones(32, 32, dtype=torch.bool)),
                               ValueError, r"pass a mask of shape \(64, 64\)"),
    "mask of labels": (lambda: SegmentationRegion(1, torch.full((64, 64), 3)), ValueError,
                       r"outside \[0, 1\]"),
    "mask of NaN": (lambda: SegmentationRegion(1, torch.full((64, 64), float("nan"))),
                    ValueError, "NaN"),
    "class out of range": (lambda: SegmentationRegion(7), ValueError, "out of range"),
    "NaN reference": (lambda: Similarity(torch.tensor([1.0, float("nan")])), ValueError,
                      "NaN or Inf"),
    "zero reference": (lambda: Similarity(torch.zeros(4)), ValueError, "is zero"),
    "integer reference": (lambda: Similarity(torch.ones(4, dtype=torch.long)), TypeError,
                          "float embedding"),
    "negative class": (lambda: ClassLogit(-1), ValueError, "negative"),
    "float class": (lambda: ClassProbability(1.5), TypeError, "pass a class index"),
    "unknown activation": (lambda: ClassProbability(1, "relu"), ValueError, "activation"),
    "empty multi-label": (lambda: MultiLabel([]), ValueError, "empty"),
    "detection without a choice": (lambda: Detection(), ValueError, "one of them"),
    "detection box of 3 numbers": (lambda: Detection(box=[1, 2, 3]), ValueError, "4 finite"),
    "detection index on a segmentation model": (lambda: Detection(index=0), TypeError,
                                                "list of dicts"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_targets_are_refused_naming_the_fix(case):
    make, error, words = BAD[case]
    with pytest.raises(error, match=words):
        model, run = _seg_call(make())
        before = snapshot(model)
        try:
            run()
        finally:
            assert_unchanged(model, before)


def test_box_iou():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]])
    iou = box_iou(boxes, torch.tensor([0.0, 0, 10, 10]))
    torch.testing.assert_close(iou, torch.tensor([1.0, 25 / 175, 0.0]))


# -- detection ------------------------------------------------------------------------------

def detector(name: str) -> nn.Module:
    """A torchvision detector (random weights, 5 classes, small images), every box kept."""
    torch.manual_seed(0)
    kwargs = {} if name.startswith("ssd") else {"min_size": 128, "max_size": 128}
    model = getattr(torchvision.models.detection, name)(
        weights=None, weights_backbone=None, num_classes=5, **kwargs).eval()
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = 0.0
    else:
        model.score_thresh = 0.0
    return model


# the default CAM layers: the pyramid's finest level's source (the ResNets' FPN reads
# layer2-4 in RetinaNet and FCOS, layer1-4 in Mask R-CNN), SSDlite's first feature map
DETECTORS = {"fasterrcnn_mobilenet_v3_large_fpn": "backbone.body.13",
             "retinanet_resnet50_fpn": "backbone.body.layer2",
             "fcos_resnet50_fpn": "backbone.body.layer2",
             "maskrcnn_resnet50_fpn": "backbone.body.layer1",
             "ssdlite320_mobilenet_v3_large": "backbone.features.0"}


@pytest.mark.parametrize("name", DETECTORS)
def test_detections_are_explained_at_the_users_pixels(name):
    """The detector normalises, resizes and pads inside; the map comes back at the image the
    user passed, conserving the components at the default CAM layer, one image as in a
    batch, the model unchanged."""
    model = detector(name)
    x = torch.rand(2, 3, 96, 80, generator=torch.Generator().manual_seed(4))
    before = snapshot(model)
    error, cam = conservation_error(model, x, Detection(index=0))
    assert cam == DETECTORS[name] and error < 1e-4
    fg = FGGradCam(model, "")                     # the model's input: the user's pixels
    pixels = fg.attribute(x, Detection(index=0), attribute_to_layer_input=True)
    one = fg.attribute(x[1:], Detection(index=0), attribute_to_layer_input=True)
    torch.testing.assert_close(one, pixels[1:], rtol=0, atol=float(1e-4 * pixels.abs().max()))
    assert_unchanged(model, before)


def test_a_detection_by_its_box_is_the_detection_by_its_index():
    model = detector("fasterrcnn_mobilenet_v3_large_fpn")
    x = torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        found = model(x)[0]
    box, label = found["boxes"][3], int(found["labels"][3])
    fg = FGGradCam(model, "backbone.body.4")
    by_index = fg.attribute(x, Detection(index=3))
    by_box = fg.attribute(x, Detection(box=box, label=label, iou=0.99))
    torch.testing.assert_close(by_box, by_index)
    assert torch.equal(Detection(box=box, label=label).boxes(found and [found]), box[None])


@pytest.mark.parametrize("case", ["index beyond the detections", "no box overlaps",
                                  "training mode"])
def test_detection_targets_that_select_nothing_are_refused(case):
    model = detector("fasterrcnn_mobilenet_v3_large_fpn")
    x = torch.rand(1, 3, 96, 80)
    target, words = {
        "index beyond the detections": (Detection(index=1000), "out of range"),
        "no box overlaps": (Detection(box=[0, 0, 1, 1], iou=0.9), "no detection overlaps"),
        "training mode": (Detection(index=0), "training mode"),
    }[case]
    if case == "training mode":
        model.train()
    before = snapshot(model)
    with pytest.raises(ValueError, match=words):
        FGGradCam(model, "").attribute(x, target, attribute_to_layer_input=True)
    assert_unchanged(model, before)
