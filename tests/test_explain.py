"""``captum-fgcam explain`` end to end (small random models, nothing downloaded) and the
visualisation helpers."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from captum_fgcam import cli
from captum_fgcam.explain import compute_maps
from captum_fgcam.methods import METHODS
from captum_fgcam.visualization import plot_grid, plot_views, to_image_map

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 100  # explain's default resolution; small images get 2-inch panels


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """An 80 x 100 RGB PNG with a red square."""
    rng = np.random.default_rng(0)
    pixels = rng.random((80, 100, 3))
    pixels[20:50, 30:60] = [1.0, 0.0, 0.0]
    path = tmp_path_factory.mktemp("images") / "square.png"
    matplotlib.image.imsave(path, pixels)
    return path


@pytest.fixture(scope="module")
def cached_weights(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds (random) ResNet-18 weights under the file name
    torchvision expects: ``weights="DEFAULT"`` then loads offline. torch.hub checks a hash
    only while downloading (check_hash), never for a file already cached."""
    home = tmp_path_factory.mktemp("torch_home")
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, checkpoints / Path(weights.url).name)
    return home


def explain(*args: str | Path) -> int:
    return cli.main(["explain", *map(str, args)])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def grid_shape(rows: int, columns: int, cell: float = 2.0) -> tuple[int, int]:
    """Pixel height and width of a figure of ``rows`` x ``columns`` maps (plus the image
    column, a colour bar column and the title)."""
    return round((cell * rows + 0.9) * DPI), round((cell * (columns + 1) + 0.9) * DPI)


def png_shape(path: Path) -> tuple[int, ...]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path).shape


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


# -- the command -----------------------------------------------------------------------------

def test_random_weights_figure_and_maps(image, tmp_path, capsys):
    out, maps = tmp_path / "fig.png", tmp_path / "maps.npz"
    code = explain(image, "--model", "resnet18", "--size", "32", "--out", out, "--maps", maps,
                   "--method", "fg-grad-cam", "--method", "grad-cam", "--denoise")
    captured = capsys.readouterr()
    assert code == 0
    assert "RANDOM weights" in captured.err and "--weights DEFAULT" in captured.err
    # rows: FG-Grad-CAM, denoised, Grad-CAM; columns: the image, layer4.1, input
    assert png_shape(out) == (*grid_shape(3, 2), 4)
    saved = np.load(maps)
    assert sorted(saved) == ["FG-Grad-CAM @ input", "FG-Grad-CAM @ layer4.1",
                             "FG-Grad-CAM-D @ input", "FG-Grad-CAM-D @ layer4.1",
                             "Grad-CAM @ layer4.1", "images", "targets"]
    assert saved["FG-Grad-CAM @ input"].shape == (1, 32, 32)  # Grad-CAM has no map there
    assert saved["Grad-CAM @ layer4.1"].shape == (1, 1, 1)
    assert all(np.isfinite(saved[k]).all() for k in saved if "@" in k)
    assert saved["images"].tolist() == [str(image)]


def test_pretrained_weights_offline_with_class_name(image, tmp_path, cached_weights,
                                                   monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(cached_weights))
    out, maps = tmp_path / "fig.png", tmp_path / "maps.pt"
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / image.name
    copy.write_bytes(image.read_bytes())
    code = explain(image, copy, "--model", "resnet18", "--weights", "DEFAULT", "--size", "32",
                   "--target", "Tench", "--layer", "layer3", "--out", out, "--maps", maps)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "RANDOM" not in captured.err
    assert captured.out.count("class 0 'tench'") == 2
    assert all(png_shape(tmp_path / f"fig-{i}-square.png")[:2] == grid_shape(1, 1)
               for i in (1, 2))
    saved = torch.load(maps, weights_only=True)
    assert saved["targets"] == [0, 0]
    assert saved["maps"]["FG-Grad-CAM"]["layer3"].shape == (2, 1, 2, 2)


def test_weights_not_cached_and_no_internet(image, tmp_path, monkeypatch, capsys):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert explain(image, "--model", "resnet18", "--weights", "DEFAULT") == 2
    line = error_line(capsys)
    assert "weights for resnet18" in line and "not cached in" in line
    assert str(tmp_path / "hub" / "checkpoints") in line
    assert "download them once with internet access or pass a checkpoint file" in line


def test_checkpoint(image, tmp_path, capsys):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    checkpoint = tmp_path / "model.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "fig.png"
    code = explain(image, "--model", checkpoint, "--arch", "resnet18", "--size", "32",
                   "--target", "4", "--method", "lrp", "--out", out)
    assert code == 0, capsys.readouterr().err
    assert "class 4" in capsys.readouterr().out
    assert png_shape(out)[:2] == grid_shape(1, 2)

    assert explain(image, "--model", checkpoint) == 2
    line = error_line(capsys)
    assert "state_dict" in line and "--arch NAME" in line
    assert explain(image, "--model", checkpoint, "--arch", "squeezenet1_1") == 2
    assert "does not fit --arch squeezenet1_1" in error_line(capsys)

    pickled = tmp_path / "whole.pt"
    torch.save(model, pickled)
    assert explain(image, "--model", pickled, "--arch", "resnet18") == 2
    line = error_line(capsys)
    assert "cannot load" in line and "weights_only=True" in line
    assert "save model.state_dict()" in line


def test_folders_seed_and_summary(image, tmp_path, capsys):
    """Folders are searched recursively with an extension filter; --seed makes random
    weights repeat; each image gets a summary line; maps keep their names."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(image.read_bytes())
    (folder / "sub" / "b.PNG").write_bytes(image.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    runs = []
    for run in range(2):
        maps = tmp_path / f"maps{run}.npz"
        assert explain(folder, "--model", "resnet18", "--size", "32", "--out",
                       tmp_path / f"fig{run}.png", "--maps", maps, "--batch-size", "1",
                       "--device", "cpu") == 0
        runs.append(np.load(maps))
    out = capsys.readouterr().out
    assert out.count("predicted") == 4 and "notes" not in out
    assert runs[0]["images"].tolist() == [str(folder / "a.png"), str(folder / "sub" / "b.PNG")]
    assert np.array_equal(runs[0]["targets"], runs[1]["targets"])  # same seed, same weights
    first, second = runs[0]["FG-Grad-CAM @ input"], runs[1]["FG-Grad-CAM @ input"]
    # the same weights give the same maps, up to the order of CPU kernels' parallel sums
    np.testing.assert_allclose(first, second, rtol=1e-4, atol=1e-6 * np.abs(first).max())
    assert runs[0]["FG-Grad-CAM @ input"].shape == (2, 32, 32)
    assert explain(folder, "--model", "resnet18", "--ext", "jpg") == 2
    assert "holds no image files with extensions .jpg" in error_line(capsys)


def test_zoo_names(image, tmp_path, capsys):
    """The zoo's names are models, with the scenes' size and class names."""
    out = tmp_path / "fig.png"
    assert explain(image, "--model", "scenes-vgg16bn", "--target", "square", "--out", out,
                   "--method", "fg-grad-cam", "--method", "grad-cam",
                   "--layer", "features.13", "--layer", "input", "--maps",
                   tmp_path / "maps.pt") == 0
    maps = torch.load(tmp_path / "maps.pt", weights_only=True)
    assert maps["targets"] == [1]  # Scenes.classes.index("square")
    assert maps["maps"]["FG-Grad-CAM"]["input"].shape[-2:] == (96, 96)
    assert maps["maps"]["FG-Grad-CAM"]["features.13"].shape[-2:] == (24, 24)
    assert explain(image, "--model", "scenes-vgg16bnn") == 2
    assert "unknown model 'scenes-vgg16bnn'" in error_line(capsys)


@pytest.mark.parametrize("args, expected", [
    (["missing.png", "--model", "resnet18"], ["image file or folder missing.png not found"]),
    (["{image}", "--model", "resnet19"], ["unknown model 'resnet19'", "did you mean",
                                         "resnet18", "list_models"]),
    (["{image}", "--model", "weights/absent.pt"], ["checkpoint file weights/absent.pt not"]),
    (["{image}", "--model", "resnet18", "--size", "32", "--layer", "layer9"],
     ["unknown layer 'layer9'", "layer4.1", "input", "named_modules"]),
    (["{image}", "--model", "resnet18", "--size", "32", "--target", "1000"],
     ["class index 1000 is out of range", "1000 classes", "--target 0 to 999"]),
    (["{image}", "--model", "resnet18", "--size", "32", "--target", "tench"],
     ["class name 'tench' needs", "--weights", "class index"]),
    (["{image}", "--model", "resnet18", "--weights", "IMAGENET9K"],
     ["unknown weights 'IMAGENET9K'", "DEFAULT", "IMAGENET1K_V1"]),
    (["{image}", "--model", "resnet18", "--out", "fig.npy"], ["--out fig.npy", "explain.png"]),
    (["{image}", "--model", "resnet18", "--maps", "maps.txt"], [".npz or .pt"]),
    (["{image}", "--model", "resnet18", "--method", "gradcam", "--layer", "input"],
     ["Grad-CAM gives maps at layers only, not at input", "FG-Grad-CAM"]),
    (["{image}", "--model", "resnet18", "--method", "fg-gradcam-plus"],
     ["unknown method 'fg-gradcam-plus'", "did you mean", "FG-Grad-CAM++"]),
    (["{image}", "--model", "resnet18", "--device", "cuda:7"], ["--device cuda:7"]),
    (["{image}", "--model", "resnet18", "--arch", "resnet18"], ["--arch applies to a checkpoint"]),
])
def test_errors_name_problem_and_fix(image, args, expected, capsys):
    assert explain(*[a.format(image=image) for a in args]) == 2
    line = error_line(capsys)
    assert line.startswith("captum-fgcam explain: error: ")
    for text in expected:
        assert text in line


def test_unknown_class_name(image, cached_weights, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(cached_weights))
    assert explain(image, "--model", "resnet18", "--weights", "DEFAULT",
                   "--target", "goldfishes") == 2
    line = error_line(capsys)
    assert "unknown class name 'goldfishes'" in line and "goldfish" in line
    assert "0 to 999" in line


def test_model_state_comes_back_unchanged():
    model = tiny_cnn().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 16, 16)
    compute_maps(model, x, [1], list(METHODS), ["3", "input"])
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


# -- visualisation helpers -------------------------------------------------------------------

def test_to_image_map_nearest_and_bilinear():
    coarse = torch.tensor([[1.0, -2.0], [3.0, 4.0]])[None, None]  # 1 x 1 x 2 x 2
    nearest = to_image_map(coarse, (4, 6))
    assert nearest.shape == (4, 6, 1) and nearest.dtype == np.float32
    assert nearest[:2, :3, 0].tolist() == [[1.0] * 3] * 2
    assert nearest[2:, 3:, 0].tolist() == [[4.0] * 3] * 2
    smooth = to_image_map(coarse, (4, 4), mode="bilinear")
    assert smooth.shape == (4, 4, 1)
    # half-pixel centres: the edges keep their cell, pixels in between are interpolated
    assert smooth[0, :, 0].tolist() == [1.0, 0.25, -1.25, -2.0]
    channels = torch.ones(3, 2, 2)
    assert np.all(to_image_map(channels, (2, 2)) == 3.0)  # channels are summed
    with pytest.raises(ValueError, match="nearest"):
        to_image_map(coarse, (4, 4), mode="cubic")


@pytest.mark.parametrize("sign", ["positive", "all"])
@pytest.mark.parametrize("scale", ["map", "method"])
def test_plot_grid_and_views(sign, scale):
    img = np.random.default_rng(0).random((16, 16, 3))
    maps = {"A": {"l1": torch.randn(1, 4, 4), "input": torch.randn(1, 16, 16)},
            "B": {"l1": -torch.ones(1, 4, 4)}}
    fig = plot_grid(img, maps, sign=sign, title="t", mode="bilinear", scale=scale)
    fig.canvas.draw()
    # row 0: the image, then one panel per layer; row 1: an empty slot, its panels
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "l1", "input"]
    assert fig.axes[1].get_ylabel() == "A" and fig.axes[4].get_ylabel() == "B"
    bars = 1 if scale == "map" else 2  # one colour bar, or one per method
    assert len(fig.axes) == 2 * 3 + bars
    panels = [ax.get_position().bounds for ax in fig.axes[:6] if ax.get_title() != "image"]
    widths = {round(b[2], 4) for b in panels}
    assert len(widths) == 1, widths  # colour bars never shrink a panel
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "no map here" in texts  # B has no map at the input
    if scale == "method":  # each panel names its map's total
        assert "ΣR = -16" in texts
    views = plot_views(img, maps["A"]["l1"], title="one map")
    titles = [ax.get_title() for ax in views.axes]
    assert titles[:3] == ["image", "signed (green +, red -)", "positive, over the image"]


def test_score_rows_keep_their_own_scale_and_no_total():
    """A row of normalised scores (RefineCAM, FG-X-DM) in a relevance-per-pixel figure: each
    map on its own scale (the coarse and the fine map both reach the top of the bar), its own
    colour bar label, no ΣR."""
    img = np.random.default_rng(0).random((16, 16, 3))
    coarse, fine = torch.rand(1, 4, 4), torch.rand(1, 16, 16)
    maps = {"relevance": {"l1": coarse, "input": fine}, "scores": {"l1": coarse, "input": fine}}
    fig = plot_grid(img, maps, scale="method", scores=["scores"])
    fig.canvas.draw()
    texts = {ax.get_ylabel(): [t.get_text() for t in ax.texts] for ax in fig.axes[:7]}
    assert any(t.startswith("ΣR") for t in texts["relevance"])
    assert not any(t.startswith("ΣR") for t in texts["scores"])
    labels = [ax.get_ylabel() for ax in fig.axes[-2:]]
    assert labels == ["relevance per pixel", "score / map scale"]
    def opacity(ax):  # the overlay's largest alpha: 0.9 where a map reaches its bar's top
        return float(ax.get_images()[-1].get_array()[..., 3].max())

    relevance, scores = [fig.axes[1], fig.axes[2]], [fig.axes[4], fig.axes[5]]
    assert all(opacity(ax) > 0.85 for ax in scores)  # both fill their own scale
    assert opacity(relevance[0]) < 0.5  # per pixel, the 4x4 map's 16-pixel cells are faint


def test_figure_text_never_overlaps():
    """Titles, row labels and colour bar labels of an 8 x 6 grid with long names: no two
    text boxes overlap and none leaves the figure."""
    img = np.random.default_rng(0).random((32, 32, 3))
    rows = [f"FG-Grad-CAM++-D, variant {i} with a long name" for i in range(8)]
    cols = [f"backbone.stage{j}.block.conv2 ({4 * j + 4}x{4 * j + 4}, CAM layer)"
            for j in range(6)]
    maps = {r: {c: torch.randn(1, 4 * j + 4, 4 * j + 4) for j, c in enumerate(cols)}
            for r in rows}
    fig = plot_grid(img, maps, sign="all", scale="method", title="a long title " * 30)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text() and t.get_visible()]
    boxes = [t.get_window_extent(renderer) for t in texts]
    figure = fig.bbox
    for box in boxes:
        assert box.x0 >= figure.x0 - 1 and box.x1 <= figure.x1 + 1
        assert box.y0 >= figure.y0 - 1 and box.y1 <= figure.y1 + 1
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
            assert not (overlap[0] > 1 and overlap[1] > 1), (a, b)


def test_a_vision_transformer_is_explained_at_its_stages(image, tmp_path, capsys):
    """The zoo's Swin: maps at a stage (its channels-last tokens as a 12 x 12 grid) and the
    pixels; Captum's Guided Grad-CAM, which cannot read a token grid, refused first."""
    out, saved = tmp_path / "swin.png", tmp_path / "swin.pt"
    assert explain(image, "--model", "scenes-swin", "--method", "fg-grad-cam", "--method",
                   "grad-cam", "--method", "lrp", "--layer", "stages.1", "--layer", "input",
                   "--out", out, "--maps", saved, "--no-progress") == 0
    maps = torch.load(saved, weights_only=True)["maps"]
    assert maps["FG-Grad-CAM"]["stages.1"].shape[-2:] == (12, 12)
    assert maps["Grad-CAM"]["stages.1"].shape[-2:] == (12, 12)
    assert maps["LRP"]["input"].shape[-2:] == (96, 96)
    assert all(torch.isfinite(m).all() for row in maps.values() for m in row.values())
    refused = tmp_path / "guided.png"
    assert explain(image, "--model", "scenes-swin", "--method", "guided grad-cam", "--out",
                   refused) == 2
    assert "channels-last" in error_line(capsys) and not refused.exists()
