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


def test_a_layer_on_a_side_branch_is_refused():
    model = Small().eval()
    with pytest.raises(LayerError, match="does not feed the CAM layer"):
        FGGradCam(model, "side", cam_layer="conv2").attribute(image_batch(1, 12, 12), 1)


@pytest.mark.parametrize("where", ["weight", "input"])
def test_non_finite_values_are_refused(where):
    model = Small().eval()
    x = image_batch(1, 12, 12)
    if where == "weight":
        with torch.no_grad():
            model.conv2.weight[0, 0, 0, 0] = float("nan")
        match = "NaN or Inf"
    else:
        x[0, 0, 0, 0] = float("inf")
        match = "NaN or Inf"
    with pytest.raises(ValueError, match=match):
        FGGradCam(model, "conv1", cam_layer="conv2").attribute(x, 1)


@pytest.mark.parametrize("weighting,message", [
    (lambda f, layer, inputs, target, extra=None: None, "returned NoneType"),
    (lambda f, layer, inputs, target, extra=None: [1.0], "returned list"),
    (lambda f, layer, inputs, target, extra=None: torch.ones(1, 2), "shape"),
])
def test_a_weighting_that_returns_no_components_is_named(weighting, message):
    model = Small().eval()
    with pytest.raises((TypeError, ValueError), match=message):
        FGCam(model, "conv1", weighting=weighting, cam_layer="conv2").attribute(
            image_batch(1, 12, 12))


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
    assert "is the input" in capsys.readouterr().err
    # two images: outputs explain-dog.png (= the second input) and explain-explain-dog.png
    assert _explain(dog, other, "--out", tmp_path / "explain.png") == 2
    assert "is the input" in capsys.readouterr().err
    assert _explain(dog, "--maps", dog.with_suffix(".npy"), "--out",
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
    else:
        args[0] = tmp_path
    assert _explain(*args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("captum-fgcam explain: error: ")


def _benchmark(*args) -> int:
    return cli.main(["benchmark", *map(str, args)])


@pytest.mark.parametrize("args,message", [
    (["--images", "0"], "at least 1 image"),
    (["--methods", "fg-grad-cam"], "unknown method"),
    (["--model", "resnet18"], "not a zoo model"),
    (["--batch-size", "0"], "positive"),
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
                                  "tensor"])
def test_target_forms_give_the_same_map(form):
    model = Small().eval()
    x = image_batch(2, 12, 12)
    fg = FGGradCam(model, "conv1", cam_layer="conv2")
    expected = fg.attribute(x, torch.tensor([1, 1]))
    target = {"int": 1, "numpy array": np.array([1, 1]), "numpy int": np.int64(1),
              "column tensor": torch.tensor([[1], [1]]), "list": [1, 1],
              "tensor": torch.tensor(1)}[form]
    torch.testing.assert_close(fg.attribute(x, target), expected)


@pytest.mark.parametrize("target", [1.7, True, torch.tensor([True, False]),
                                    torch.tensor([1.0, 2.0]), [1, 2.5], np.array([0.5, 1.0])])
def test_target_forms_that_would_select_a_wrong_class_are_refused(target):
    model = Small().eval()
    with pytest.raises(TypeError, match="integers|integer"):
        FGGradCam(model, "conv1", cam_layer="conv2").attribute(image_batch(2, 12, 12), target)
    assert model.calls == 0  # refused before any work
