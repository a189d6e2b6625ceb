"""The conservation report: where FG-CAM's relevance goes stage by stage, as a function and in
``captum-fgcam explain --report``.

- a small CNN with a skip connection: the default stages are the blocks every path passes
  through, each keeps the CAM total sum(E) (Grad-CAM's map sum, computed here by Grad-CAM)
  within 1e-4 under the conserving rules, the pixels' total is FG-Grad-CAM's map sum, and the
  table says 100 %; with LRP-epsilon the biases absorb a share, reported as absorbed;
- a tiny torchvision ViT: its class token keeps a share (read here with the engine's own
  taps), and pixels + class token + absorbed = 100 %;
- a batch gives each image's report as alone; stages are checked;
- the command prints the table and refuses ``--report`` without an FG-CAM method.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torchvision
from conftest import image_batch, layer_output
from torch import nn

from captum_fgcam import (
    FGCam,
    FGGradCam,
    FineGrainedUpsampler,
    GradCam,
    LayerError,
    cli,
    conservation_report,
)
from captum_fgcam.explain import _report_weighting


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class SkipCnn(nn.Module):
    """A stem that halves the image, a residual block, a max pool, a convolution, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4),
                                  nn.ReLU())
        self.block = Residual(4)
        self.pool = nn.MaxPool2d(2)
        self.top = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.top(self.pool(self.block(self.stem(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return SkipCnn().eval()


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3)
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
    return model.eval()


def positive_tokens(forward_func, cam_layer, inputs, target, extra) -> torch.Tensor:
    """Random positive components at the patch tokens (none at the class token), the same on
    every call."""
    tokens = layer_output(forward_func, cam_layer, inputs).detach()
    g = torch.Generator().manual_seed(7)
    components = torch.rand(tokens.shape, generator=g)
    components[:, 0] = 0
    return components


# -- the function ----------------------------------------------------------------------------

def test_a_cnn_keeps_the_cam_total_at_every_stage(cnn):
    x = image_batch(2, 16, 16, seed=2)
    reports = conservation_report(cnn, x, 1)
    cam_totals = GradCam(cnn, "top.1").attribute(x, 1).sum((1, 2, 3))
    pixels = FGGradCam(cnn, cnn).attribute(x, 1, attribute_to_layer_input=True).sum((1, 2, 3))
    assert len(reports) == 2
    for i, report in enumerate(reports):
        assert report.image == i and report.cam_layer == "top.1"
        assert [s.layer for s in report.stages] == ["top.1", "pool", "block", "stem", "input"]
        assert [s.shape for s in report.stages] == [(8, 4, 4), (4, 4, 4), (4, 8, 8),
                                                    (4, 8, 8), (3, 16, 16)]
        assert math.isclose(report.cam_total, float(cam_totals[i]), rel_tol=1e-5)
        assert abs(report.cam_total) > 1e-3
        for stage in report.stages:
            assert math.isclose(stage.total, report.cam_total, rel_tol=1e-4), stage.layer
            assert stage.prefix_tokens == 0 and stage.prefix_share == 0 == stage.to_prefix
        assert math.isclose(report.stages[-1].total, float(pixels[i]), rel_tol=1e-5)
        assert abs(report.absorbed) < 1e-4 and report.prefix == 0
        text = str(report)
        assert text == report.to_markdown()
        assert "| top.1 (CAM layer) | 8 x 4 x 4 |" in text and "| input (pixels) |" in text
        assert "prefix tokens |" not in text.splitlines()[2]  # no token columns for a CNN
        assert text.count("| 100.00 % |") == 5
        assert text.endswith("absorbed 0.00 % = 100.00 % of sum E")


def test_what_biases_absorb_under_lrp_epsilon_is_reported(cnn):
    x = image_batch(1, 16, 16, seed=2)
    (report,) = conservation_report(cnn, x, 1, rules="epsilon")
    pixels = FGGradCam(cnn, cnn, rules="epsilon").attribute(x, 1, attribute_to_layer_input=True)
    assert math.isclose(report.pixels * report.cam_total, float(pixels.sum()), rel_tol=1e-5)
    assert abs(report.absorbed) > 1e-3  # the convolutions' biases take their share
    assert math.isclose(report.pixels + report.prefix + report.absorbed, 1, abs_tol=1e-9)
    assert math.isclose(sum(s.absorbed for s in report.stages), report.absorbed)


def test_a_vit_class_token_keeps_its_share(vit):
    x = image_batch(2, 32, 32, seed=3)
    reports = conservation_report(vit, x, 0, weighting=positive_tokens)
    cam = "encoder.layers.encoder_layer_1.ln_1"
    # the class token's share, read independently: the engine's taps where it is prepended
    up = FineGrainedUpsampler(vit, cam, vit)
    span = up.span(up.capture((x,)), attribute_to_layer_input=True)
    components = positive_tokens(vit, vit.get_submodule(cam), (x,), 0, None)
    _, (embedded,) = up.propagate_with_taps(span, components, ["encoder.dropout"], grid=False)
    class_token = embedded[:, 0].sum(1) / components.sum((1, 2))
    pixels = FGCam(vit, vit, weighting=positive_tokens).attribute(
        x, 0, attribute_to_layer_input=True).sum((1, 2, 3)) / components.sum((1, 2))
    for i, report in enumerate(reports):
        assert [s.layer for s in report.stages] == [
            cam, "encoder.layers.encoder_layer_0", "encoder.dropout", "conv_proj", "input"]
        assert [s.prefix_tokens for s in report.stages] == [1, 1, 1, 0, 0]
        assert report.stages[0].prefix_share == 0  # the CAM puts nothing on the class token
        assert report.prefix > 1e-3
        assert math.isclose(report.prefix, float(class_token[i]), rel_tol=1e-5)
        assert math.isclose(report.pixels, float(pixels[i]), rel_tol=1e-5)
        assert math.isclose(report.pixels + report.prefix + report.absorbed, 1, abs_tol=1e-9)
        assert abs(report.absorbed) < 1e-4  # the conserving rules: nothing else is lost
        text = str(report)
        assert "| in prefix tokens | kept by prefix tokens |" in text
        assert "| encoder.dropout | 17 x 16 (1 prefix + 16 tokens) |" in text
        assert f"prefix tokens {100 * report.prefix:.2f} %" in text
        assert text.endswith("= 100.00 % of sum E")


@pytest.mark.parametrize("model, size", [("cnn", 16), ("vit", 32)])
def test_a_batch_gives_each_image_its_own_report(model, size, request):
    net = request.getfixturevalue(model)
    x = image_batch(2, size, size, seed=5)
    target = torch.tensor([0, 2])
    both = conservation_report(net, x, target)
    for i in range(2):
        (alone,) = conservation_report(net, x[i:i + 1], int(target[i]))
        assert [s.layer for s in alone.stages] == [s.layer for s in both[i].stages]
        for a, b in zip(alone.stages, both[i].stages, strict=True):
            assert math.isclose(a.total, b.total, rel_tol=1e-4, abs_tol=1e-7)
            assert math.isclose(a.prefix_share, b.prefix_share, rel_tol=1e-4, abs_tol=1e-6)


def test_stages_are_ordered_and_checked(cnn):
    x = image_batch(1, 16, 16)
    (report,) = conservation_report(cnn, x, 0, stages=["stem.0", cnn.block, "top.0"])
    assert [s.layer for s in report.stages] == ["top.1", "top.0", "block", "stem.0", "input"]
    with pytest.raises(LayerError, match=r"'block.conv2' is not on every path.*'pool', 'block'"):
        conservation_report(cnn, x, 0, stages=["block.conv2"])
    with pytest.raises(LayerError, match="not between the CAM layer and the input"):
        conservation_report(cnn, x, 0, stages=["head"])
    with pytest.raises(LayerError, match="no submodule named 'blocks'"):
        conservation_report(cnn, x, 0, stages=["blocks"])


# -- the command -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "noise.png"
    matplotlib.image.imsave(path, np.random.default_rng(0).random((40, 50, 3)))
    return path


def test_explain_prints_the_report(image, tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert cli.main(["explain", str(image), "--model", "resnet18", "--size", "32", "--out",
                     str(out), "--report", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"{image}: class" in printed and out.exists()
    assert "Conservation of FG-CAM relevance, image 0" in printed
    assert "| layer4.1 (CAM layer) | 512 x 1 x 1 |" in printed
    for stage in ("layer4.0", "layer3", "layer2", "layer1", "maxpool", "conv1"):
        assert f"| {stage} |" in printed
    assert "| input (pixels) | 3 x 32 x 32 |" in printed
    assert printed.count("| 100.00 % |") == 8
    assert "absorbed 0.00 % = 100.00 % of sum E" in printed


def test_explain_refuses_a_report_without_an_fg_cam_method(image, capsys):
    assert cli.main(["explain", str(image), "--model", "resnet18", "--method", "grad-cam",
                     "--method", "lrp", "--report"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("captum-fgcam explain: error: --report")
    assert "Grad-CAM, LRP" in line and "--method fg-grad-cam" in line


def test_the_report_follows_the_first_fg_cam_method():
    assert _report_weighting(["Grad-CAM", "FG-Grad-CAM++-D", "FG-Score-CAM"]) == "grad_cam++"
    assert _report_weighting(["FG-Score-CAM-DM"]) == "score_cam"
    assert _report_weighting(["LRP", "FG-Grad-CAM"]) == "grad_cam"
