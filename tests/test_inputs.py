"""What a user may pass, tried at every entry point: one parametrised test per class.

Targets, CAM layers, wrapped models' own layer names, ``torch.inference_mode()``, non-finite
scores and constant images, and the rules the missing-rule message suggests. A refusal is
checked to come before any model call where it can (forward calls counted by a hook), or
before the CAM weighting runs (at most the one pass that shows the problem), and to leave the
model as it was.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import image_batch
from test_model_state import assert_unchanged, snapshot
from test_trust import Small
from torch import nn

import captum_fgcam
from captum_fgcam import (
    LRP,
    FGGradCam,
    FGScoreCam,
    FineGrainedUpsampler,
    GradCam,
    LayerError,
    MissingRuleError,
    MultiScaleFGCam,
    RefineCam,
    ScoreCam,
    cli,
    find_cam_layer,
    find_input_layer,
)
from captum_fgcam.attr.refine import find_refine_layers
from captum_fgcam.methods import explainers
from captum_fgcam.metrics import average_drop_increase
from captum_fgcam.propagation import Function
from captum_fgcam.propagation.layers import find_output_layer
from captum_fgcam.quantus import explain_func


@contextlib.contextmanager
def counted(model: nn.Module):
    """The number of forward calls of ``model`` in the block (a list, one entry per call)."""
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


# -- 1. targets: one normalisation at every entry point ---------------------------------------

def _registry(method: str, layer: str):
    def run(model, x, t):
        explain = explainers(model, [method], [layer], x[:1])[method, layer]
        return explain(x, t)
    return run


def _built(method: str, layer: str):
    """A registry explainer built (one recorded pass of an example) before the count."""
    def make(model, x):
        explain = explainers(model, [method], [layer], x[:1])[method, layer]
        return lambda t: explain(x, t)
    return make


#: entry point -> (model, x) -> (target -> result); building an attribution runs nothing
TARGET_ENTRIES = {
    "FGGradCam": lambda m, x: lambda t: FGGradCam(m, "conv1", cam_layer="conv2").attribute(
        x, t),
    "MultiScaleFGCam": lambda m, x: lambda t: MultiScaleFGCam(m, "conv1", cam_layer="conv2")
    .attribute(x, t),
    "GradCam": lambda m, x: lambda t: GradCam(m, "conv2").attribute(x, t),
    "ScoreCam": lambda m, x: lambda t: ScoreCam(m, "conv2", progress=False).attribute(x, t),
    "LRP": lambda m, x: lambda t: LRP(m, "conv1").attribute(x, t),
    "registry Guided Grad-CAM": _built("Guided Grad-CAM", "input"),
    "registry RefineCAM": _built("RefineCAM", "conv1"),
    "registry FG-Score-CAM": _built("FG-Score-CAM", "conv1"),
    "Quantus": lambda m, x: lambda t: explain_func(m, x.numpy(), t, method="FG-Grad-CAM",
                                                   layer="conv1"),
    "metrics": lambda m, x: lambda t: average_drop_increase(m, x, torch.rand(2, 1, 12, 12), t),
}
#: (target, error, words, refused before any model call); Small has 4 classes, x 2 images
BAD_TARGETS = {
    "negative int": (-1, ValueError, "count from 0", True),
    "negative in a tensor": (torch.tensor([1, -1]), ValueError, "count from 0", True),
    "negative numpy int": (np.int64(-2), ValueError, "count from 0", True),
    "uint8 tensor": (torch.tensor([1, 2], dtype=torch.uint8), TypeError, "uint8", True),
    "(N, 2) tensor": (torch.tensor([[0, 1], [1, 2]]), ValueError, r"shape \(2, 2\)", True),
    "string": ("cat", TypeError, "is a string", True),
    "callable of 2 scores per example": (lambda out: out[:, 1:3], ValueError,
                                         "one float score per example|takes class indices",
                                         False),
    "float": (1.5, TypeError, "is a float", True),
    "bool": (True, TypeError, "boolean", True),
    "float tensor": (torch.tensor([1.0, 2.0]), TypeError, "torch.float32", True),
    "bool array": (np.array([True, False]), TypeError, "boolean", True),
    "list too long": ([1, 2, 3], ValueError, "3 entries for 2 examples", True),
    "tensor too long": (torch.tensor([1, 2, 3]), ValueError, "3 entries for 2 examples", True),
    "list of lists": ([[1], [2]], TypeError, "is a list", True),
    "dict": ({"class": 1}, TypeError, "is a dict", True),
    "out of range": (4, ValueError, "the model has 4 classes", False),
    "out of range in a list": ([0, 7], ValueError, "the model has 4 classes", False),
    "tuple on 2-d scores": ((1, 2), ValueError, "dimension", False),
    "tuples on 2-d scores": ([(1, 2), (0, 1)], ValueError, "dimension", False),
}


@pytest.mark.parametrize("entry", TARGET_ENTRIES)
@pytest.mark.parametrize("case", BAD_TARGETS)
def test_every_entry_point_refuses_the_same_targets(entry, case):
    """One normalisation (``as_target``) everywhere: before, a negative target was refused by
    FG-CAM but explained the last class in the plain CAMs, the Quantus adapter cast floats
    and booleans, and uint8, (N, 2), string and callable targets ended in raw errors (a
    callable is now a target object, which must return one score per example)."""
    target, error, words, early = BAD_TARGETS[case]
    model = Small().eval()
    run = TARGET_ENTRIES[entry](model, image_batch(2, 12, 12))
    before = snapshot(model)
    with counted(model) as calls, pytest.raises(error, match=words):
        run(target)
    if early:
        assert not calls, "refused after running the model"
    assert_unchanged(model, before)


# -- 2. CAM layers: one validation ------------------------------------------------------------

def pooled() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=64, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
    return model.eval()


#: model, its layer for FG maps, input size, CAM layer (a callable of the model), words,
#: refused at construction
LAYER_CASES = {
    "the model": (pooled, "0", 8, lambda m: m, "is the model itself", True),
    "the model by name": (pooled, "0", 8, lambda m: "", "is the model itself", True),
    "flatten": (pooled, "0", 8, lambda m: "3", "no spatial positions", False),
    "linear": (pooled, "0", 8, lambda m: "4", "no spatial positions", False),
    "1 x 1 grid in a product": (pooled, "0", 8, lambda m: "2", r"single position \(1 x 1\)",
                                False),
    "ViT block": (tiny_vit, "conv_proj", 64, lambda m: "encoder.layers.encoder_layer_1",
                  r"class\) tokens only.*'encoder.layers.encoder_layer_1.ln_1'", False),
    "ViT final norm": (tiny_vit, "conv_proj", 64, lambda m: "encoder.ln",
                       "tokens only", False),
}
LAYER_ENTRIES = {
    "FGGradCam": lambda m, fg, cam, x: FGGradCam(m, fg, cam_layer=cam).attribute(x, 1),
    "FGScoreCam": lambda m, fg, cam, x: FGScoreCam(m, fg, cam_layer=cam, progress=False)
    .attribute(x, 1),
    "MultiScaleFGCam": lambda m, fg, cam, x: MultiScaleFGCam(m, fg, cam_layer=cam)
    .attribute(x, 1),
    "GradCam": lambda m, fg, cam, x: GradCam(m, cam).attribute(x, 1),
    "ScoreCam": lambda m, fg, cam, x: ScoreCam(m, cam, progress=False).attribute(x, 1),
    "RefineCam": lambda m, fg, cam, x: RefineCam(m, [cam, fg]).attribute(x, 1),
    "registry": lambda m, fg, cam, x: explainers(m, ["Grad-CAM", "Score-CAM"], [cam], x[:1])[
        "Grad-CAM", cam](x, 1),
}
# Score-CAM weights a ViT block's tokens by masked forward passes: defined there, not refused;
# a 1 x 1 map is a CAM (FG-CAM spreads it below), but not a factor of a min-max product
LAYER_PAIRS = [(case, entry) for case in LAYER_CASES for entry in LAYER_ENTRIES
               if not (case.startswith("ViT") and "Score" in entry)
               and not (case == "the model" and entry == "registry")
               and (case != "1 x 1 grid in a product" or entry in ("MultiScaleFGCam",
                                                                   "RefineCam"))]


@pytest.mark.parametrize("case,entry", LAYER_PAIRS)
def test_a_layer_that_cannot_give_a_cam_is_refused_naming_one_that_can(case, entry):
    """Before: ``cam_layer=model`` fell back to the automatic layer, a CAM layer without
    spatial positions averaged the gradient over the batch, and a ViT block's output gave an
    all-zero map. Refused now before the weighting runs (at construction, or after the pass
    that shows it), naming the layer ``find_cam_layer`` gives."""
    make, fg_layer, size, cam, words, at_construction = LAYER_CASES[case]
    model = make()
    x = image_batch(2, size, size)
    before = snapshot(model)
    with counted(model) as calls, pytest.raises(LayerError, match=words):
        LAYER_ENTRIES[entry](model, fg_layer, cam(model), x)
    # no weighting (Score-CAM's 8 masked passes): the pass that shows it, one to name a layer
    # (and the registry's pass over the example, where it checks layers' shapes)
    assert len(calls) <= (0 if at_construction else 2 + (entry == "registry"))
    assert_unchanged(model, before)


def test_the_commands_refuse_a_layer_that_cannot_give_a_cam(tmp_path, capsys):
    """The same validation through ``explain --layers`` (the registry), before any map."""
    from PIL import Image
    image = tmp_path / "dog.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(
        image)
    code = cli.main(["explain", str(image), "--model", "resnet18", "--method", "Grad-CAM",
                     "--layer", "fc", "--out", str(tmp_path / "fig.png")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "'fc' has no spatial positions" in err.strip().splitlines()[-1]
    assert not (tmp_path / "fig.png").exists()


# -- 3. wrapped models' own layer names -------------------------------------------------------

WRAPPERS = {
    "DataParallel": (nn.DataParallel, "module."),
    "torch.compile": (torch.compile, "_orig_mod."),
    "DataParallel(torch.compile)": (lambda m: nn.DataParallel(torch.compile(m)),
                                    "module._orig_mod."),
}
NAME_ENTRIES = {
    "FGGradCam": lambda m, p, x: FGGradCam(m, p + "conv1", cam_layer=p + "conv2").attribute(
        x, 1),
    "the model's input": lambda m, p, x: FGGradCam(m, p.rstrip("."), cam_layer=p + "conv2")
    .attribute(x, 1, attribute_to_layer_input=True),
    "LRP": lambda m, p, x: LRP(m, p + "conv1", output_layer=p + "head").attribute(x, 1),
    "GradCam": lambda m, p, x: GradCam(m, p + "conv2").attribute(x, 1),
    "RefineCam": lambda m, p, x: RefineCam(m, [p + "conv2", p + "conv1"]).attribute(x, 1),
    "FineGrainedUpsampler": lambda m, p, x: FineGrainedUpsampler(m, p + "conv2", p + "conv1")
    .attribute(x, torch.ones(2, 8, 12, 12)),
    "registry": lambda m, p, x: torch.cat([explain(x, 1) for explain in explainers(
        m, ["Grad-CAM", "FG-Grad-CAM", "RefineCAM"], [p + "conv2"], x[:1]).values()]),
}


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("entry", NAME_ENTRIES)
def test_wrapped_models_own_layer_names_name_the_same_modules(wrapper, entry):
    """Before: ``module.conv1`` (DataParallel) and ``_orig_mod.conv1`` (torch.compile) were
    refused with a message saying to use exactly such names."""
    wrap, prefix = WRAPPERS[wrapper]
    model = Small().eval()
    x = image_batch(2, 12, 12)
    expected = NAME_ENTRIES[entry](model, "", x)
    wrapped = wrap(model)  # torch.compile marks the model it wraps
    before = snapshot(model)
    assert torch.equal(NAME_ENTRIES[entry](wrapped, prefix, x), expected)
    assert_unchanged(model, before)


# -- 4. torch.inference_mode() ----------------------------------------------------------------

INFERENCE_ENTRIES = {
    "find_cam_layer": lambda m, x, t: find_cam_layer(m, x),
    "find_cam_layer without input": lambda m, x, t: find_cam_layer(m),
    "find_input_layer": lambda m, x, t: find_input_layer(m, x),
    "find_output_layer": lambda m, x, t: find_output_layer(m, x),
    "find_refine_layers": lambda m, x, t: find_refine_layers(m, "conv1", x),
    "GradCam": lambda m, x, t: GradCam(m, "conv2").attribute(x, t),
    "MultiScaleFGCam": lambda m, x, t: MultiScaleFGCam(m, "conv1").attribute(x, t),
    "FineGrainedUpsampler": lambda m, x, t: FineGrainedUpsampler(m, "conv2", "conv1")
    .attribute(x, torch.ones(2, 8, 12, 12)),
    "Quantus": lambda m, x, t: torch.as_tensor(explain_func(m, x.numpy(), t.numpy())),
    **{f"registry {method}": _registry(method, layer) for method, layer in [
        ("Grad-CAM", "conv2"), ("Score-CAM", "conv2"), ("Conceptor-CAM", "conv2"),
        ("FG-Grad-CAM", "conv1"), ("FG-Layer-CAM-DM", "conv1"), ("RefineCAM", "input"),
        ("Guided Grad-CAM", "input"), ("Guided FG-Grad-CAM", "input"), ("CLRP", "input")]},
}


@pytest.mark.parametrize("entry", INFERENCE_ENTRIES)
def test_inference_mode_gives_the_same_answer(entry):
    """Before: the layer finders and most registry methods raised PyTorch's errors about
    inference tensors. Inputs and targets made inside ``torch.inference_mode()`` are copied
    outside it (attribution needs autograd), so the answer is the one outside."""
    model = Small().eval()
    run = INFERENCE_ENTRIES[entry]
    outside = run(model, image_batch(2, 12, 12), torch.tensor([1, 2]))
    before = snapshot(model)
    with torch.inference_mode():
        inside = run(model, image_batch(2, 12, 12), torch.tensor([1, 2]))
    if isinstance(outside, torch.Tensor):
        assert torch.equal(inside, outside)
    else:
        assert inside == outside
    assert_unchanged(model, before)


# -- 5. non-finite scores from finite weights; constant images --------------------------------

class LogHead(Small):
    """Small whose forward takes the log of its (negative) scores: NaN from finite weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(super().forward(x) - 100)


def overflowing() -> nn.Module:
    model = Small().eval()
    with torch.no_grad():  # finite weights, infinite scores (an overflow in the head)
        model.conv2.weight.mul_(1e15)
        model.head.weight.mul_(1e30)
    return model


FINITE_ENTRIES = {
    "FGGradCam": lambda m, x: FGGradCam(m, "conv1", cam_layer="conv2").attribute(x, 1),
    "FGGradCam to the image": lambda m, x: FGGradCam(m, "conv1", cam_layer="conv2").attribute(
        x, 1, attribute_to_layer_input=True),
    "FGScoreCam": lambda m, x: FGScoreCam(m, "conv1", cam_layer="conv2", progress=False)
    .attribute(x, 1),
    "GradCam": lambda m, x: GradCam(m, "conv2").attribute(x, 1),
    "ScoreCam": lambda m, x: ScoreCam(m, "conv2", progress=False).attribute(x, 1),
    "LRP to the image": lambda m, x: LRP(m, "conv1").attribute(
        x, 1, attribute_to_layer_input=True),
    "registry Guided Grad-CAM": lambda m, x: _registry("Guided Grad-CAM", "input")(m, x, 1),
    "registry FG-Grad-CAM-D": lambda m, x: _registry("FG-Grad-CAM-D", "input")(m, x, 1),
}
#: model, input, what is expected: the words of the refusal, or None for a map of exact zeros
FINITE_CASES = {
    "overflow in the head": (overflowing, lambda: image_batch(2, 12, 12),
                             "scores: NaN or Inf first appears at .*'head' from finite"),
    "log of a negative": (lambda: LogHead().eval(), lambda: image_batch(2, 12, 12),
                          "scores: NaN or Inf first appears at 'log' in the model's own "
                          "forward from finite"),
    "constant image": (lambda: Small().eval(), lambda: torch.full((2, 3, 12, 12), 0.7), None),
}
ZERO_AT_THE_IMAGE = ("FGGradCam to the image", "LRP to the image", "registry FG-Grad-CAM-D")
FINITE_PAIRS = [(case, entry) for case in FINITE_CASES for entry in FINITE_ENTRIES
                if FINITE_CASES[case][2] is not None or entry in ZERO_AT_THE_IMAGE]


@pytest.mark.parametrize("case,entry", FINITE_PAIRS)
def test_non_finite_scores_are_located_and_a_constant_image_has_a_zero_map(case, entry):
    """Before: NaN or Inf scores from finite weights gave a finite map, and a constant image
    gave noise at the pixels (z^B's x w - l w+ - h w- rounding to +-1e-8 where it is 0)."""
    make, data, words = FINITE_CASES[case]
    model, x = make(), data()
    before = snapshot(model)
    if words is None:
        assert torch.equal(FINITE_ENTRIES[entry](model, x), torch.zeros(2, 1, 12, 12))
    else:
        with counted(model) as calls, pytest.raises(ValueError, match=words):
            FINITE_ENTRIES[entry](model, x)
        if not entry.startswith("registry"):  # the pass that shows it, and one to locate it
            assert len(calls) <= 2
    assert_unchanged(model, before)


# -- 6. the missing-rule message's suggestions ------------------------------------------------

class Around(nn.Module):
    """conv1 -> ReLU -> ``op`` -> conv2 -> mean -> head; ``clash``: a submodule named as the
    operation (the suggestion's string key would name it)."""

    def __init__(self, op, clash: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.op = op
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        if clash:
            self.add_module(clash, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.op(F.relu(self.conv1(x)))).mean((2, 3)))


#: operation, the suggestion that fits it (which conserves relevance), suggestions not printed
UNKNOWN_OPERATIONS = {
    "sin": (torch.sin, "PassRule", ()),
    "erf": (torch.special.erf, "PassRule", ()),
    "square": (lambda x: x ** 2, "PassRule", ()),
    "normalize": (lambda x: F.normalize(x, dim=1), "PassRule", ()),
    "tril": (torch.tril, "PassRule", ()),
    "masked_fill (a boolean mask)": (lambda x: x.masked_fill(x > 1, 0.0), "PassRule", ()),
    "rot90": (lambda x: torch.rot90(x, 1, (2, 3)), "RoutingRule", ()),
    "repeat_interleave": (lambda x: x.repeat_interleave(2, dim=1)[:, :4], "RoutingRule", ()),
    "gather (an integer index)": (lambda x: torch.gather(x, 3, x.argsort(dim=3)),
                                  "RoutingRule", ()),
    "index_select": (lambda x: x.index_select(1, torch.tensor([3, 2, 1, 0])), "RoutingRule",
                     ()),
    "where (a comparison)": (lambda x: torch.where(x > 0.1, x, 0.5 * x), "RoutingRule", ()),
    "maximum": (lambda x: torch.maximum(x, x.flip(3)), "RoutingRule", ()),
    "sort (values and indices)": (lambda x: x.sort(dim=1).values, "RoutingRule",
                                  ("PassRule", "SignAwareZRule")),
    "topk": (lambda x: x.topk(2, dim=1).values.repeat(1, 2, 1, 1), "RoutingRule",
             ("SignAwareZRule",)),
    "max over a dimension": (lambda x: x.max(dim=1, keepdim=True).values.expand(-1, 4, -1, -1),
                             "RoutingRule", ("SignAwareZRule",)),
    "cumsum": (lambda x: x.cumsum(dim=3), "SignAwareZRule", ()),
    "a name a module has": (torch.sin, "PassRule", ()),
}


@pytest.mark.parametrize("name", UNKNOWN_OPERATIONS)
def test_every_missing_rule_suggestion_runs_and_the_fitting_one_conserves(name):
    """Before: RoutingRule and SignAwareZRule, suggested for every operation, crashed on
    integer or boolean operands (gather's index, where's comparison) and on operations with
    several outputs (sort, topk, max over a dimension). Each suggestion is now tried on the
    recorded operation before it is printed; the one that fits conserves relevance."""
    op, fitting, absent = UNKNOWN_OPERATIONS[name]
    model = Around(op, clash="sin" if name == "a name a module has" else None).eval()
    x = torch.rand(2, 3, 6, 6)
    before = snapshot(model)
    with pytest.raises(MissingRuleError) as refused:
        FGGradCam(model, "conv1", cam_layer="conv2").attribute(x, 1)
    suggestions = dict((rule, key) for key, rule in re.findall(
        r"rules=\{(.+?): (\w+)\(\)\}", str(refused.value)))
    assert fitting in suggestions and not set(absent) & set(suggestions)
    if name == "a name a module has":
        assert suggestions[fitting] == "Function('sin')"
    components = FGGradCam(model, "conv2").attribute(x, 1)
    for rule, key in suggestions.items():
        rules = {eval(key, {"Function": Function}): getattr(captum_fgcam, rule)()}
        fine = FGGradCam(model, "conv1", cam_layer="conv2", rules=rules).attribute(x, 1)
        assert torch.isfinite(fine).all()
        if rule == fitting:
            torch.testing.assert_close(fine.sum(), components.sum(), rtol=1e-4, atol=1e-6)
    assert_unchanged(model, before)
