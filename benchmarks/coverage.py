"""Measured conservation of FG-Grad-CAM from the CAM layer to the image, per model family.

The families, sizes and checks are those of ``tests/test_coverage.py`` (random weights,
BatchNorm statistics randomised, 2 images, the predicted class): for each model the CAM layer
found, the image layer, and max over the images of |sum(map) - sum(components)| / sum|components|;
then torchvision's segmentation models and detectors (``tests/test_targets.py``).

    python benchmarks/coverage.py            # every family (about 1 minute on 2 CPU cores)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_coverage as cases  # noqa: E402
from conftest import image_batch  # noqa: E402


def main() -> None:
    rows = [("torchvision", name, cases.assert_explained(*cases.torchvision_case(name)))
            for name in cases.TORCHVISION]
    rows += [("timm", name, cases.assert_explained(*cases.timm_case(name)))
             for name in cases.TIMM]
    rows += [("transformers", name, cases.assert_explained(model, image_batch(2, 64, 64, 6)))
             for name, model in cases.hugging_face_models().items()]
    for name, make, shape in [("Conv1d signal CNN", cases.signal_cnn, (2, 2, 40)),
                              ("Conv3d volume CNN", cases.volume_cnn, (2, 1, 8, 12, 12))]:
        torch.manual_seed(0)
        model, x = make(), torch.randn(*shape)
        rows.append(("own", name, cases.assert_explained(model, x)))
    rows += task_rows()
    print("| library | model | max relative conservation error |")
    print("|---|---|---|")
    for library, name, error in rows:
        print(f"| {library} | {name} | {error:.1e} |")


def task_rows() -> list[tuple[str, str, float]]:
    """Segmentation models (a region of class 1) and detectors (their first detection), at
    the image the user passes, from the default CAM layer (``tests/test_targets.py``)."""
    import test_targets as tasks

    from captum_fgcam.targets import Detection, SegmentationRegion

    x = image_batch(2, 64, 64, 9)
    rows = [("torchvision", f"{name} (segmentation)", tasks.conservation_error(
        tasks.segmentation(name)[0], x, SegmentationRegion(1, torch.ones(64, 64)))[0])
            for name in tasks.SEGMENTATION]
    rows.append(("transformers", "SegFormer (segmentation)", tasks.conservation_error(
        tasks.segformer(), x, SegmentationRegion(1, torch.ones(16, 16)))[0]))
    images = torch.rand(2, 3, 96, 80, generator=torch.Generator().manual_seed(4))
    rows += [("torchvision", f"{name} (detection)", tasks.conservation_error(
        tasks.detector(name), images, Detection(index=0))[0]) for name in tasks.DETECTORS]
    return rows


if __name__ == "__main__":
    main()
