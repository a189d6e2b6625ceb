"""Tasks beyond one class: per-example targets, ``explain --task``, the dense benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.utils import save_image

from captum_fgcam import FGGradCam
from captum_fgcam.benchmark.runner import filled_boxes, task_target
from captum_fgcam.cli import main
from captum_fgcam.datasets import Scenes
from captum_fgcam.targets import ClassLogit, Detection, MultiLabel, SegmentationRegion
from captum_fgcam.zoo import load_model, scenes


@pytest.fixture(scope="module")
def segmenter() -> nn.Module:
    return load_model("scenes-seg")


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    return load_model("scenes-det")


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> list:
    """Two two-object test scenes as PNG files, and their (labels, masks, boxes)."""
    folder = tmp_path_factory.mktemp("scenes")
    data = Scenes("test", objects=2, normalize=False)
    files = []
    for i in range(2):
        image, labels, masks, boxes = data[i]
        save_image(image, folder / f"scene{i}.png")
        files.append((folder / f"scene{i}.png", labels, masks, boxes))
    return files


# -- per-example targets ---------------------------------------------------------------------

def _per_sample(model, x, make) -> torch.Tensor:
    explainer = FGGradCam(model, "")
    return torch.cat([explainer.attribute(x[i:i + 1], target=make(i),
                                          attribute_to_layer_input=True) for i in range(len(x))])


def test_segmentation_region_with_a_class_per_example_is_per_sample(segmenter):
    data = scenes("scenes-seg", "test", length=3)
    x = torch.stack([data[i][0] for i in range(3)])
    labels = torch.stack([data[i][1][0] for i in range(3)]) + 1
    masks = torch.stack([data[i][2][0] for i in range(3)])
    batch = FGGradCam(segmenter, "").attribute(x, target=SegmentationRegion(labels, masks),
                                              attribute_to_layer_input=True)
    single = _per_sample(segmenter, x,
                         lambda i: SegmentationRegion(int(labels[i]), masks[i]))
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-6)
    # the score is the logits of each example's class summed over its mask, by hand
    with torch.no_grad():
        z = segmenter(x)["out"]
    by_hand = torch.stack([(z[i, labels[i]] * masks[i]).sum() for i in range(3)])
    torch.testing.assert_close(SegmentationRegion(labels, masks)(segmenter(x)), by_hand)


def test_multilabel_selection_rows_are_per_example_sets():
    z = torch.randn(3, 5)
    selection = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1]]).bool()
    expected = torch.stack([z[n, selection[n]].sum() for n in range(3)])
    torch.testing.assert_close(MultiLabel(selection)(z), expected)
    torch.testing.assert_close(MultiLabel(selection).take(slice(1, 3))(z[1:]), expected[1:])
    with pytest.raises(ValueError, match=r"empty for example\(s\) \[1\]"):
        MultiLabel(torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="one row per example"):
        MultiLabel(selection)(torch.randn(3, 4))


def test_detection_with_a_label_per_image(detector, scene_files):
    x = torch.stack([Scenes("test", objects=2, normalize=False)[i][0] for i in range(2)])
    labels = torch.stack([f[1][1] for f in scene_files])  # the second objects
    boxes = torch.stack([f[3][1] for f in scene_files]).float()
    target = Detection(box=boxes, label=labels)
    with torch.no_grad():
        found = detector(list(x))
    chosen = target.boxes(found)
    for n in range(2):  # the detection of that class overlapping the box most, by hand
        d = found[n]
        iou = torch.tensor([_iou(b, boxes[n]) for b in d["boxes"]]) * (d["labels"] == labels[n])
        torch.testing.assert_close(chosen[n], d["boxes"][int(iou.argmax())])
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        Detection(box=boxes, label=[0, 1, 2]).check(found)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return float(w * h / (area(a) + area(b) - w * h))


def test_benchmark_targets_and_filled_boxes():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 0:10, 11:12] = True
    torch.testing.assert_close(filled_boxes(masks),
                               torch.tensor([[3.0, 2, 9, 5], [11, 0, 12, 10]]))
    labels = torch.tensor([1, 4])
    seg = task_target("segmentation", labels, masks)
    assert seg.category.tolist() == [2, 5] and seg.mask is masks
    det = task_target("detection", labels, masks)
    assert det.label.tolist() == [1, 4] and det.iou == 0.5
    assert task_target("classification", labels, masks) is labels


# -- explain --task --------------------------------------------------------------------------

def _explain(args: list) -> int:
    return main(["explain", *map(str, args), "--no-progress"])


def test_explain_segmentation_outlines_the_region(scene_files, tmp_path, capsys):
    path, labels = scene_files[0][0], scene_files[0][1]
    out, maps = tmp_path / "seg.png", tmp_path / "seg.npz"
    main(["explain", str(path), "--model", "scenes-seg", "--task", "segmentation",
          "--out", str(out), "--maps", str(maps), "--no-progress"])
    line = capsys.readouterr().out
    assert out.stat().st_size > 0 and "% of the pixels" in line
    saved = np.load(maps)
    assert saved["FG-Grad-CAM @ input"].shape == (1, 96, 96)
    # the default: the class covering most pixels, background excepted (one of the objects)
    assert int(saved["targets"][0]) - 1 in labels.tolist()
    assert _explain([path, "--model", "scenes-seg", "--task", "segmentation", "--target",
                     "background", "--out", tmp_path / "b.png"]) == 0
    assert _explain([path, "--model", "scenes-seg", "--out", tmp_path / "x.png"]) == 2
    assert "is a segmentation model; pass --task segmentation" in capsys.readouterr().err


def test_explain_detection_draws_the_box(scene_files, tmp_path, capsys):
    path, labels = scene_files[1][0], scene_files[1][1]
    out, maps = tmp_path / "det.png", tmp_path / "det.pt"
    name = Scenes.classes[int(labels[0])]
    main(["explain", str(path), "--model", "scenes-det", "--task", "detection", "--target",
          name, "--out", str(out), "--maps", str(maps), "--no-progress"])
    assert f"class {int(labels[0])} '{name}'" in capsys.readouterr().out
    saved = torch.load(maps, weights_only=True)
    assert saved["targets"][0].startswith(f"{int(labels[0])}: ")
    assert saved["maps"]["FG-Grad-CAM"]["input"].shape == (1, 1, 96, 96)
    absent = next(c for c in Scenes.classes if Scenes.classes.index(c) not in labels.tolist())
    with torch.no_grad():  # the class of neither object: no detection of it (usually)
        found = load_model("scenes-det")([_read(path)])[0]
    if Scenes.classes.index(absent) not in found["labels"].tolist():
        assert _explain([path, "--model", "scenes-det", "--task", "detection", "--target",
                         absent, "--out", tmp_path / "n.png"]) == 2
        assert "made no detection of class" in capsys.readouterr().err


def _read(path) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(Image.open(path).convert("RGB")).float() / 255


def test_explain_multilabel_and_similarity(scene_files, tmp_path, capsys):
    path, other = scene_files[0][0], scene_files[1][0]
    out, maps = tmp_path / "ml.png", tmp_path / "ml.npz"
    main(["explain", str(path), "--model", "scenes-resnet", "--task", "multilabel",
          "--target", "0,2", "--out", str(out), "--maps", str(maps), "--no-progress"])
    assert str(np.load(maps)["targets"][0]) == "0,2"
    main(["explain", str(path), "--model", "scenes-resnet", "--task", "multilabel",
          "--out", str(out), "--no-progress"])
    assert "sigmoid" in capsys.readouterr().out
    main(["explain", str(path), "--model", "scenes-resnet", "--task", "similarity",
          "--reference", str(other), "--out", str(out), "--no-progress"])
    assert "cosine similarity to the reference" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--task", "similarity"], "needs --reference IMAGE"),
    (["--reference", "{other}"], "--reference applies to --task similarity only"),
    (["--task", "similarity", "--reference", "{other}", "--target", "1"], "leave --target"),
    (["--task", "segmentation"], "is a classification model; pass --task classification"),
    (["--task", "multilabel", "--target", "1,,2"], "separated by commas"),
    (["--task", "multilabel", "--target", "1,9"], "class index 9 is out of range"),
    (["--task", "similarity", "--reference", "{other}", "--out", "{other}"],
     "the --reference image"),
])
def test_explain_task_options_are_checked_before_any_work(scene_files, tmp_path, capsys,
                                                           args, message):
    image, other = scene_files[0][0], scene_files[1][0]
    args = [a.format(image=image, other=other) for a in args]
    out = [] if "--out" in args else ["--out", tmp_path / "never.png"]
    code = _explain([image, "--model", "scenes-resnet", *args, *out])
    assert code == (2 if message else 0)
    if message:
        assert message in capsys.readouterr().err
        assert not (tmp_path / "never.png").exists()


def test_a_torchvision_model_of_another_task_names_it(scene_files, tmp_path, capsys):
    image = scene_files[0][0]
    assert _explain([image, "--model", "lraspp_mobilenet_v3_large", "--out",
                     tmp_path / "x.png"]) == 2
    assert "is a segmentation model: pass --task segmentation" in capsys.readouterr().err
    assert _explain([image, "--model", "resnet18", "--task", "detection", "--out",
                     tmp_path / "x.png"]) == 2
    assert "is a classification model: pass --task classification" in capsys.readouterr().err


def test_a_torchvision_segmentation_model_with_random_weights(scene_files, tmp_path, capsys):
    """Random weights, no download (the backbone's weights are not fetched either)."""
    out = tmp_path / "lraspp.png"
    assert main(["explain", str(scene_files[0][0]), "--model", "lraspp_mobilenet_v3_large",
                 "--task", "segmentation", "--size", "64", "--out", str(out),
                 "--no-progress"]) == 0
    assert out.stat().st_size > 0 and "% of the pixels" in capsys.readouterr().out


def test_class_logit_is_still_what_classification_explains(scene_files, tmp_path):
    from captum_fgcam.tasks import explained

    z = torch.randn(2, 6)
    what = explained("classification", z, None, None, ["a", "b"])
    assert isinstance(what.target, ClassLogit) and what.described == z.argmax(1).tolist()


def test_the_quantus_adapter_takes_target_objects(segmenter):
    from captum_fgcam.quantus import explain_func

    data = scenes("scenes-seg", "test", length=2)
    x = torch.stack([data[i][0] for i in range(2)])
    target = SegmentationRegion(torch.stack([data[i][1][0] for i in range(2)]) + 1,
                                torch.stack([data[i][2][0] for i in range(2)]))
    maps = explain_func(segmenter, x.numpy(), target, method="FG-Grad-CAM")
    expected = FGGradCam(segmenter, "").attribute(x, target, attribute_to_layer_input=True)
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-5, atol=1e-7)


# -- benchmark on the zoo's dense models -----------------------------------------------------

@pytest.mark.parametrize("model, methods, layers", [
    ("scenes-seg", ["FG-Grad-CAM", "Grad-CAM", "LRP"], ["backbone.23", "input"]),
    ("scenes-det", ["FG-Layer-CAM", "Layer-CAM"], ["backbone.body.layer2", "input"])])
def test_benchmark_on_a_segmenter_and_a_detector(tmp_path, capsys, model, methods, layers):
    out = tmp_path / model
    assert main(["benchmark", "--model", model, "--images", "2", "--methods", *methods,
                 "--layers", *layers, "--steps", "4", "--no-progress", "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert "scores: the " in table and ("mask" in table or "box" in table)
    rows = (out / "results.csv").read_text().splitlines()[1:]
    values = [float(line.split(",")[3]) for line in rows]
    assert values and all(np.isfinite(values))


@pytest.mark.parametrize("model, method", [("scenes-det", "LRP"), ("scenes-seg", "CLRP"),
                                           ("scenes-seg", "Guided Grad-CAM")])
def test_benchmark_refuses_methods_that_take_class_indices_only(tmp_path, capsys, model, method):
    assert main(["benchmark", "--model", model, "--methods", method, "--no-progress",
                 "--out", str(tmp_path / "never")]) == 2
    assert f"--methods {method} cannot explain" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_an_embedding_model_is_not_taken_for_a_dense_prediction():
    """A CLIP-style image tower returns embeddings (no logits): its CAM layer is found as for
    a class-token ViT, and the similarity to a reference is explained per example."""
    transformers = pytest.importorskip("transformers")
    from captum_fgcam import find_cam_layer, find_input_layer
    from captum_fgcam.targets import Similarity

    torch.manual_seed(0)
    tower = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, projection_dim=16)).eval()
    x = torch.randn(3, 3, 32, 32)
    assert find_cam_layer(tower, x) == "vision_model.encoder.layers.1.layer_norm1"
    with torch.no_grad():
        reference = tower(x[:1]).image_embeds
    fg = FGGradCam(tower, find_input_layer(tower, x))
    target = Similarity(reference.expand(3, -1))
    maps = fg.attribute(x, target, attribute_to_layer_input=True)
    assert maps.shape == (3, 1, 32, 32) and bool(maps.abs().sum() > 0)
    one = fg.attribute(x[2:], Similarity(reference), attribute_to_layer_input=True)
    torch.testing.assert_close(one, maps[2:], rtol=1e-4, atol=1e-6)
