"""Never a silent wrong map: the model as it is at call time, any CAM weighting, clear errors.

One test per class of misuse, asserting the exact outcome (the right map, or the error type
and the key words of its message).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import image_batch, layer_output
from torch import nn

from captum_fgcam import FGCam, FGGradCam, LayerError, cli
from captum_fgcam.outputs import written


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


@pytest.mark.parametrize("method", ["FGGradCam", "FGScoreCam", "LRP"])
def test_inference_mode_gives_the_same_map(method):
    """Users wrap evaluation in torch.inference_mode(); 0.1 raised a raw RuntimeError."""
    import captum_fgcam
    model = Small().eval()
    x = image_batch(2, 12, 12)
    kwargs = {} if method == "LRP" else {"cam_layer": "conv2"}
    explainer = getattr(captum_fgcam, method)(model, "conv1", **kwargs)
    plain = explainer.attribute(x, 1)
    with torch.inference_mode():
        inside = explainer.attribute(x.clone(), 1)  # an inference tensor as input, too
    assert torch.equal(inside, plain)


def test_a_layer_on_a_side_branch_is_refused():
    model = Small().eval()
    with pytest.raises(LayerError, match="does not feed the CAM layer"):
        FGGradCam(model, "side", cam_layer="conv2").attribute(image_batch(1, 12, 12), 1)


@pytest.mark.parametrize("where,match", [
    ("weight", "model's conv2.weight hold NaN or Inf"),
    ("buffer", "model's bn.running_var hold NaN or Inf"),
    ("head", "model's head.bias hold NaN or Inf"),
    ("input", "input 0 contains NaN or Inf"),
])
def test_non_finite_values_are_refused_naming_where(where, match):
    model = Small().eval()
    x = image_batch(1, 12, 12)
    with torch.no_grad():
        if where == "weight":
            model.conv2.weight[0, 0, 0, 0] = float("nan")
        elif where == "buffer":
            model.bn.running_var[2] = float("inf")
        elif where == "head":
            model.head.bias[1] = float("nan")
        else:
            x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=match):
        FGGradCam(model, "conv1", cam_layer="conv2").attribute(x, 1)


def test_an_overflow_in_the_forward_pass_is_located():
    model = Small().eval()
    with torch.no_grad():
        model.conv1.weight.mul_(1e30)  # finite weights, infinite activations
        model.conv2.weight.mul_(1e30)
    with pytest.raises(ValueError, match="first appears at 'conv2' in module 'conv2' from "
                                         "finite inputs"):
        FGGradCam(model, "conv1", cam_layer="conv2").attribute(image_batch(1, 12, 12), 1)


@pytest.mark.parametrize("weighting,message", [
    (lambda f, layer, inputs, target, extra=None: None, "returned NoneType"),
    (lambda f, layer, inputs, target, extra=None: [1.0], "returned list"),
    (lambda f, layer, inputs, target, extra=None: np.ones((1, 8, 12, 12)), "returned ndarray"),
    (lambda f, layer, inputs, target, extra=None: torch.ones(1, 2), "shape"),
])
def test_a_weighting_that_returns_no_components_is_named(weighting, message):
    model = Small().eval()
    with pytest.raises((TypeError, ValueError), match=message):
        FGCam(model, "conv1", weighting=weighting, cam_layer="conv2").attribute(
            image_batch(1, 12, 12))


class Merge(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + 2 * b


class TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv_a = nn.Conv2d(3, 6, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 6, 5, padding=2)
        self.merge = Merge()
        self.conv = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.merge(self.conv_a(x), self.conv_b(x))
        return self.head(torch.relu(self.conv(torch.relu(a))).mean((2, 3)))


@pytest.mark.parametrize("method", ["FGGradCam", "LRP", "CLRP"])
def test_a_layer_with_two_tensor_inputs_returns_a_tuple(method):
    """As Captum: one map per input; each equals the map at the module producing it."""
    import captum_fgcam
    model = TwoBranches().eval()
    x = image_batch(2, 10, 10)
    make = getattr(captum_fgcam, method)
    kwargs = {"cam_layer": "conv"} if method == "FGGradCam" else {}
    maps = make(model, "merge", **kwargs).attribute(x, 1, attribute_to_layer_input=True,
                                                    attr_dim_summation=False)
    assert isinstance(maps, tuple) and len(maps) == 2
    if method == "CLRP":  # target and dual are each normalised over both maps together
        total = sum(m.sum((1, 2, 3)) for m in maps)
        torch.testing.assert_close(total, torch.zeros(2), atol=1e-6, rtol=0)
        return
    for got, producer in zip(maps, ["conv_a", "conv_b"], strict=True):
        want = make(model, producer, **kwargs).attribute(x, 1, attr_dim_summation=False)
        torch.testing.assert_close(got, want)
    if method == "FGGradCam":  # the two inputs share the CAM components' total
        comps = FGGradCam(model, "conv", cam_layer="conv").attribute(x, 1)
        torch.testing.assert_close(sum(m.sum((1, 2, 3)) for m in maps), comps.sum((1, 2, 3)))


def test_a_layer_whose_sibling_branch_runs_after_it():
    """ResNet's shortcut runs after the residual branch: a layer inside the block gets its
    share of the sum, the shortcut the rest (0.1 raised a KeyError here)."""
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = image_batch(2, 64, 64)

    def total(layer):
        return FGGradCam(model, layer, cam_layer="layer3").attribute(x, 1).sum((1, 2, 3))

    torch.testing.assert_close(total("layer2.0.bn2") + total("layer2.0.downsample"),
                               total("layer2.0"), rtol=1e-4, atol=1e-5)


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


# -- files: never destroyed, never half-written ----------------------------------------------

def _png(path, seed: int = 0):
    import matplotlib.image

    rng = np.random.default_rng(seed)
    matplotlib.image.imsave(path, rng.random((40, 50, 3)))
    return path


def _explain(*args) -> int:
    return cli.main(["explain", *map(str, args), "--model", "resnet18"])


def test_explain_never_overwrites_an_input(tmp_path, capsys):
    dog = _png(tmp_path / "dog.png")
    other = _png(tmp_path / "explain-dog.png", seed=1)
    before = {p: p.read_bytes() for p in (dog, other)}
    assert _explain(dog, "--out", dog) == 2
    assert "is the image" in capsys.readouterr().err
    # two images: outputs explain-dog.png (= the second input) and explain-explain-dog.png
    assert _explain(dog, other, "--out", tmp_path / "explain.png") == 2
    assert "is the image" in capsys.readouterr().err
    assert _explain(dog, "--maps", dog.with_suffix(".npz"), "--out",
                    tmp_path / "missing" / "fig.png") == 2
    assert "does not exist" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (dog, other)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dog.png", "explain-dog.png"]


@pytest.mark.parametrize("problem", ["size", "truncated", "folder"])
def test_explain_user_mistakes_end_with_one_line(tmp_path, capsys, problem):
    image = _png(tmp_path / "cat.png")
    args: list = [image, "--out", tmp_path / "fig.png"]
    if problem == "size":
        args += ["--size", "0"]
    elif problem == "truncated":
        jpeg = tmp_path / "cut.jpg"
        from PIL import Image

        Image.open(image).convert("RGB").save(jpeg)
        jpeg.write_bytes(jpeg.read_bytes()[:200])
        args[0] = jpeg
    else:  # a folder without images
        (tmp_path / "empty").mkdir()
        args[0] = tmp_path / "empty"
    assert _explain(*args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("captum-fgcam explain: error: ")


def _benchmark(*args) -> int:
    return cli.main(["benchmark", *map(str, args)])


@pytest.mark.parametrize("args,message", [
    (["--images", "0"], "at least 1 image"),
    (["--methods", "fg-grad-kam"], "unknown method"),
    (["--model", "resnet18"], "not a zoo model"),
    (["--batch-size", "0"], "positive"),
    (["--methods", "Grad-CAM", "--layers", "input"], "gives maps at layers only"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--data", "imagenet", "--root", ".", "--boxes", ".", "--model", "resnet19"],
     "not a torchvision classification model"),
])
def test_benchmark_user_mistakes_keep_earlier_results(tmp_path, capsys, args, message):
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.csv").write_text("earlier, complete results\n")
    assert _benchmark("--out", out, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (out / "results.csv").read_text() == "earlier, complete results\n"


def test_benchmark_refuses_an_unwritable_out_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _benchmark("--out", blocker, "--quick") == 2
    assert "is a file" in capsys.readouterr().err
    assert _benchmark("--out", blocker / "sub", "--quick") == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_interrupted_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "fig.png"
    target.write_text("previous")
    with pytest.raises(KeyboardInterrupt), written(target) as partial:
        partial.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "previous" and list(tmp_path.iterdir()) == [target]
    with written(target) as partial:
        partial.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


# -- targets: every form Captum accepts works, the others are named ---------------------------

@pytest.mark.parametrize("form", ["int", "numpy array", "numpy int", "column tensor", "list",
                                  "tensor", "int32 tensor", "list of tuples"])
def test_target_forms_give_the_same_map(form):
    model = Small().eval()
    x = image_batch(2, 12, 12)
    fg = FGGradCam(model, "conv1", cam_layer="conv2")
    expected = fg.attribute(x, torch.tensor([1, 1]))
    target = {"int": 1, "numpy array": np.array([1, 1]), "numpy int": np.int64(1),
              "column tensor": torch.tensor([[1], [1]]), "list": [1, 1],
              "tensor": torch.tensor(1), "int32 tensor": torch.tensor([1, 1], dtype=torch.int32),
              "list of tuples": [(1,), (1,)]}[form]
    torch.testing.assert_close(fg.attribute(x, target), expected)


@pytest.mark.parametrize("target", [1.7, True, torch.tensor([True, False]),
                                    torch.tensor([1.0, 2.0]), [1, 2.5], np.array([0.5, 1.0])])
def test_target_forms_that_would_select_a_wrong_class_are_refused(target):
    model = Small().eval()
    with pytest.raises(TypeError, match="integers|integer"):
        FGGradCam(model, "conv1", cam_layer="conv2").attribute(image_batch(2, 12, 12), target)
    assert model.calls == 0  # refused before any work


# -- metrics: garbage in is refused, edge cases have documented values --------------------------

def _metric_case():
    from captum_fgcam import metrics
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    return metrics, model, image_batch(2, 8, 8)


@pytest.mark.parametrize("metric", ["average_drop_increase", "insertion_deletion",
                                    "energy_proportion", "pointing_game"])
def test_metrics_refuse_non_finite_maps(metric):
    metrics, model, x = _metric_case()
    maps = torch.rand(2, 1, 8, 8)
    maps[1, 0, 3, 3] = float("nan")
    box = torch.tensor([[0, 0, 4, 4]] * 2)
    call = {"average_drop_increase": lambda: metrics.average_drop_increase(model, x, maps, 0),
            "insertion_deletion": lambda: metrics.insertion_deletion(model, x, maps, 0),
            "energy_proportion": lambda: metrics.energy_proportion(maps, box, (8, 8)),
            "pointing_game": lambda: metrics.pointing_game(maps, box, image_size=(8, 8))}
    with pytest.raises(ValueError, match=r"images \[1\] contain NaN or Inf"):
        call[metric]()


@pytest.mark.parametrize("target", [1.7, torch.tensor([1.0, 0.0]), True, [0, 1.5]])
def test_metrics_refuse_non_integer_targets(target):
    metrics, model, x = _metric_case()
    with pytest.raises(TypeError, match="integer"):
        metrics.average_drop_increase(model, x, torch.rand(2, 1, 8, 8), target)


def test_metrics_refuse_out_of_range_targets():
    metrics, model, x = _metric_case()
    with pytest.raises(ValueError, match="target 7 is out of range: the model has 3 classes"):
        metrics.insertion_deletion(model, x, torch.rand(2, 1, 8, 8), 7)


def test_boxes_need_the_image_size():
    """Boxes in 64 px image coordinates, a 8x8 map: without image_size the box would cover
    the whole map (energy 1.0); with it, its real share (1/16 of a flat map)."""
    metrics, _, _ = _metric_case()
    flat, box = torch.ones(1, 1, 8, 8), torch.tensor([[0, 0, 16, 16]])
    with pytest.raises(ValueError, match="pass image_size"):
        metrics.energy_proportion(flat, box)
    torch.testing.assert_close(metrics.energy_proportion(flat, box, (64, 64)),
                               torch.tensor([1 / 16]))


@pytest.mark.parametrize("box,message", [([4, 0, 2, 4], "inverted"),
                                         ([0, float("nan"), 4, 4], "NaN or Inf")])
def test_bad_boxes_are_refused(box, message):
    metrics, _, _ = _metric_case()
    with pytest.raises(ValueError, match=message):
        metrics.energy_proportion(torch.rand(1, 1, 8, 8), torch.tensor([box]), (8, 8))


def test_quantus_style_float_masks_are_accepted_and_others_named():
    metrics, _, _ = _metric_case()
    maps = torch.rand(2, 1, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1.0
    torch.testing.assert_close(metrics.energy_proportion(maps, mask),
                               metrics.energy_proportion(maps, mask[:, 0].bool()))
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.energy_proportion(maps, mask * 0.5)


def test_all_zero_maps_have_documented_values():
    metrics, model, x = _metric_case()
    zero = torch.zeros(2, 1, 8, 8)
    everywhere = torch.ones(2, 8, 8, dtype=torch.bool)
    assert torch.equal(metrics.energy_proportion(zero, everywhere), torch.zeros(2))
    assert torch.equal(metrics.pointing_game(zero, everywhere), torch.zeros(2))
    drop = metrics.average_drop_increase(model, x, zero, 0, blur=torch.zeros_like)
    blank = torch.softmax(model(torch.zeros_like(x)), 1)[:, 0]
    torch.testing.assert_close(drop.perturbed, blank)  # keeps no pixel
