"""`captum-fgcam benchmark`: tables on the embedded scenes, ImageNet layout, torchrun."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captum_fgcam.benchmark import INPUT, PAPER_METHODS, Settings, default_layers, explainers, run
from captum_fgcam.benchmark.data import ImageNetVal
from captum_fgcam.cli import main

SMALL = ["--methods", "Grad-CAM", "FG-Grad-CAM", "LRP", "--layers", "features.23", "input",
         "--steps", "8", "--blur", "11", "5", "--images", "4", "--batch-size", "2"]


def _rows(path: Path) -> dict[tuple[str, str, str], float]:
    with (path / "results.csv").open() as f:
        return {(r["method"], r["layer"], r["metric"]): float(r["value"])
                for r in csv.DictReader(f)}


def test_benchmark_command_writes_tables_with_values_in_range(tmp_path: Path) -> None:
    assert main(["benchmark", *SMALL, "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert {m for m, _, _ in rows} == {"Grad-CAM", "FG-Grad-CAM", "LRP"}
    assert ("Grad-CAM", INPUT, "A.D.") not in rows  # plain CAMs have no input-layer map
    assert ("LRP", "features.23", "A.D.") not in rows  # LRP is compared at the input only
    assert ("LRP", INPUT, "Unseen") not in rows  # the model has no region it cannot see
    for (_, _, metric), value in rows.items():
        low, high = {"A.D.": (0, 100), "A.I.": (0, 100), "Overall": (-1, 1)}.get(metric, (0, 1))
        assert low <= value <= high, (metric, value)
    markdown = (tmp_path / "results.md").read_text()
    assert "## Overall (higher is better)" in markdown and "| FG-Grad-CAM |" in markdown
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_default_layers_follow_the_paper_for_the_vgg_layout() -> None:
    from captum_fgcam import zoo

    assert default_layers(zoo.load_model("scenes-vgg16bn")) == [
        "features.33", "features.23", "features.13", INPUT]
    assert default_layers(zoo.load_model("scenes-resnet")) == ["layer3", "layer2", "layer1",
                                                               INPUT]
    scene = torch.zeros(1, 3, 96, 96)
    assert default_layers(zoo.load_model("scenes-wall"), scene) == ["features.28", INPUT]


def test_every_method_explains_at_every_layer_it_claims() -> None:
    from captum_fgcam import zoo
    from captum_fgcam.datasets import Scenes

    model = zoo.load_model("scenes-vgg16bn")
    image, label, _, _ = Scenes(split="test", length=1)[0]
    pairs = explainers(model, list(PAPER_METHODS), ["features.33", INPUT], benchmark=True)
    assert len(pairs) == 7 + 4 + 3  # 7 methods at a layer; 4 FG variants + 3 LRP at the input
    for (_, layer), explain in pairs.items():
        maps = explain(image[None], torch.tensor([label]))
        assert maps.shape[0] == 1 and torch.isfinite(maps).all()
        if layer == INPUT:
            assert maps.shape[-2:] == image.shape[-2:]


def _fake_imagenet(root: Path, classes: int = 3, per_class: int = 2) -> tuple[Path, Path]:
    """ROOT/<wnid>/<image>.JPEG and BOXES/<image>.xml in ILSVRC's layout."""
    rng = np.random.default_rng(0)
    images, boxes = root / "val", root / "boxes"
    boxes.mkdir(parents=True)
    for c in range(classes):
        wnid = f"n{c:08d}"
        (images / wnid).mkdir(parents=True)
        for k in range(per_class):
            stem = f"ILSVRC2012_val_{c * per_class + k:08d}"
            w, h = 80 + 10 * k, 60
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                images / wnid / f"{stem}.JPEG")
            objects = "".join(
                f"<object><name>{wnid}</name><bndbox><xmin>{x0}</xmin><ymin>10</ymin>"
                f"<xmax>{x0 + 20}</xmax><ymax>40</ymax></bndbox></object>"
                for x0 in ([5] if k == 0 else [5, 40]))
            (boxes / f"{stem}.xml").write_text(
                f"<annotation><size><width>{w}</width><height>{h}</height></size>"
                f"{objects}</annotation>")
    return images, boxes


def test_imagenet_layout_reads_labels_boxes_and_the_localisation_rule(tmp_path: Path) -> None:
    images, boxes = _fake_imagenet(tmp_path)
    data = ImageNetVal(images, boxes, size=64)
    assert len(data) == 6 and data.classes == ["n00000000", "n00000001", "n00000002"]
    x, label, mask, localisable = data[2]  # class 1, one box
    assert x.shape == (3, 64, 64) and label == 1 and localisable
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert (xs.min().item(), xs.max().item()) == (4, 19)  # [5, 25] of 80 px -> [4, 20]
    assert not data[3][3]  # two boxes: not used for localisation, as in the paper
    with pytest.raises(FileNotFoundError, match="ImageFolder layout"):
        ImageNetVal(boxes, boxes)


def test_imagenet_benchmark_runs_on_a_torchvision_model(tmp_path: Path) -> None:
    images, boxes = _fake_imagenet(tmp_path)
    out = tmp_path / "out"
    args = ["benchmark", "--data", "imagenet", "--root", str(images), "--boxes", str(boxes),
            "--model", "resnet18", "--weights", "none", "--methods", "Grad-CAM",
            "FG-Grad-CAM", "--layers", "layer2", "--steps", "4", "--images", "4",
            "--size", "64", "--out", str(out)]
    assert main(args) == 0
    rows = _rows(out)
    assert ("FG-Grad-CAM", "layer2", "Proportion") in rows


def test_settings_defaults_follow_the_spec() -> None:
    s = Settings()
    assert (s.keep, s.pixels_per_step, s.steps, s.use_softmax) == (0.5, 448, None, True)
    assert (s.blur.kernel_size, s.blur.sigma) == (51, 50.0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs fork/spawn on this OS")
def test_torchrun_with_two_processes_gives_the_numbers_of_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["benchmark", *SMALL, "--device", "cpu", "--out", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", "-m", "captum_fgcam.cli", "benchmark", *SMALL,
                    "--device", "cpu", "--out", str(two)], check=True, env=env,
                   capture_output=True, timeout=900)
    a, b = _rows(one), _rows(two)
    assert a.keys() == b.keys()
    for key in a:
        assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), key


def test_run_is_per_image_so_sharding_cannot_change_results() -> None:
    """Two halves run separately sum to the whole (what the all-reduce relies on)."""
    from captum_fgcam import zoo
    from captum_fgcam.benchmark.data import SceneItems
    from captum_fgcam.datasets import Scenes

    model = zoo.load_model("scenes-vgg16bn")
    data = SceneItems(Scenes(split="test", length=4))
    settings = Settings(methods=["FG-Grad-CAM"], layers=["features.23"], steps=4,
                        batch_size=4, progress=False)
    whole = run(model, data, settings)
    settings.batch_size = 1
    single = run(model, data, settings)
    for pair in whole:
        assert math.isnan(whole[pair]["Unseen"])  # no wall: no Unseen or Dead zone metric
        assert math.isnan(whole[pair]["Dead zone"])
        for metric, value in whole[pair].items():
            if metric not in ("Unseen", "Dead zone"):
                assert math.isclose(value, single[pair][metric], rel_tol=1e-4, abs_tol=1e-6)


def test_unseen_metric_on_the_wall_model() -> None:
    """Grad-CAM's upsampled map puts mass behind the wall; FG-Grad-CAM at the input none."""
    from captum_fgcam import zoo
    from captum_fgcam.benchmark.data import SceneItems

    model = zoo.load_model("scenes-wall")
    scenes = zoo.scenes("scenes-wall", "test", length=2)
    settings = Settings(methods=["Grad-CAM", "FG-Grad-CAM"], steps=2, progress=False)
    results = run(model, SceneItems(scenes), settings,
                  unseen=model.unseen_mask(scenes.size, scenes.size))
    assert results["FG-Grad-CAM", INPUT]["Unseen"] == 0
    assert results["FG-Grad-CAM", INPUT]["Dead zone"] == 0
    assert results["Grad-CAM", "features.28"]["Unseen"] > 0.05
    assert results["Grad-CAM", "features.28"]["Dead zone"] > 0.05
