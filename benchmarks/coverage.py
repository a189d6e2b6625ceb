"""Measured conservation of FG-Grad-CAM from the CAM layer to the image, per model family.

The families, sizes and checks are those of ``tests/test_coverage.py`` (random weights,
BatchNorm statistics randomised, 2 images, the predicted class): for each model the CAM layer
found, the image layer, and max over the images of |sum(map) - sum(components)| / sum|components|;
then torchvision's segmentation models and detectors (``tests/test_targets.py``).

The Hugging Face vision transformers of ``tests/test_transformers.py`` (ViT, DeiT with its
teacher, BEiT, DINOv2, Swin, Swin V2, CLIP's image tower explained by the cosine similarity
to a reference image's embedding) come with them: their class and distillation tokens are
learned constants that keep a share of the relevance (the label says how much, worst image),
counted as explained.

    python benchmarks/coverage.py            # every family (about 1 minute on 2 CPU cores)
    python benchmarks/coverage.py --only vit swin   # the families whose row names these
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_coverage as cases  # noqa: E402
from conftest import image_batch  # noqa: E402

#: (library, model, () -> (model label, max relative conservation error))
Row = tuple[str, str, Callable[[], tuple[str, float]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="WORD",
                        help="only the rows whose 'library model' contains one of these words "
                             "(case-insensitive)")
    only = [word.lower() for word in parser.parse_args().only or []]
    print("| library | model | max relative conservation error |")
    print("|---|---|---|")
    for library, name, measure in rows():
        if only and not any(word in f"{library} {name}".lower() for word in only):
            continue
        label, error = measure()
        print(f"| {library} | {label} | {error:.1e} |", flush=True)


def _named(name: str, measure: Callable[[], float]) -> Callable[[], tuple[str, float]]:
    return lambda: (name, measure())


def rows() -> list[Row]:
    found = [("torchvision", name, _named(name, lambda name=name: cases.assert_explained(
        *cases.torchvision_case(name)))) for name in cases.TORCHVISION]
    found += [("timm", name, _named(name, lambda name=name: cases.assert_explained(
        *cases.timm_case(name)))) for name in cases.TIMM]
    found += [("transformers", name, _named(name, lambda name=name: cases.assert_explained(
        hugging_face_cnns()[name], image_batch(2, 64, 64, 6))))
              for name in hugging_face_cnns()]
    found += [("transformers", name.removeprefix("transformers "),
               lambda name=name: transformer_row(name)) for name in transformer_names()]
    for name, make, shape in [("Conv1d signal CNN", cases.signal_cnn, (2, 2, 40)),
                              ("Conv3d volume CNN", cases.volume_cnn, (2, 1, 8, 12, 12))]:
        found.append(("own", name, _named(name, lambda make=make, shape=shape: own(make, shape))))
    return found + task_rows()


@functools.cache
def hugging_face_cnns() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)  # as tests/test_coverage.py builds them
    return cases.hugging_face_models()


def own(make: Callable[[], torch.nn.Module], shape: tuple[int, ...]) -> float:
    torch.manual_seed(0)
    model, x = make(), torch.randn(*shape)
    return cases.assert_explained(model, x)


def transformer_names() -> list[str]:
    import test_transformers as transformers_cases

    return transformers_cases.HF_NAMES


def transformer_row(name: str) -> tuple[str, float]:
    """A Hugging Face vision transformer of ``tests/test_transformers.py`` (random weights, 2
    images; the predicted class, or for CLIP's image tower the cosine similarity to a third
    image's embedding): FG-Grad-CAM from the CAM layer found to the pixels, max over the
    images of |sum(map) + kept - sum(components)| / sum|components|, ``kept`` the relevance
    the class / distillation tokens (learned constants) keep, which the label gives as a share
    of sum|components| (worst image)."""
    import test_transformers as transformers_cases

    from captum_fgcam import (
        FGGradCam,
        FineGrainedUpsampler,
        TokenLayout,
        find_cam_layer,
        find_input_layer,
    )

    make, size, cam, _, prefix_layer = transformers_cases.MODELS[name]
    torch.manual_seed(0)
    model = make()
    x = image_batch(2, size, size, 6)
    target = transformers_cases.explained_target(model, x)
    assert find_cam_layer(model, x) == cam
    first = find_input_layer(model, x)
    pixels = FGGradCam(model, first, cam_layer=cam).attribute(x, target,
                                                                attribute_to_layer_input=True)
    grid = FGGradCam(model, cam).attribute(x, target, attr_dim_summation=False)
    up = FineGrainedUpsampler(model, cam, first)  # again, to read the prefix tokens' share
    span = up.span(up.capture((x,)), attribute_to_layer_input=True)
    components = TokenLayout.of(span.activation(), x, span.capture.grids).from_grid(grid)
    again, tapped = up.propagate_with_taps(span, components,
                                           [prefix_layer] if prefix_layer else [], grid=False)
    torch.testing.assert_close(again.sum(dim=1, keepdim=True), pixels, rtol=1e-5,
                               atol=1e-6 * float(pixels.abs().max()))
    kept = torch.zeros(x.shape[0])
    if prefix_layer:
        layout = TokenLayout.of(tapped[0], x, span.capture.grids)
        kept = tapped[0][:, :layout.prefix].flatten(1).sum(dim=1)
    scale = grid.abs().flatten(1).sum(dim=1)
    error = (pixels.flatten(1).sum(dim=1) + kept - grid.flatten(1).sum(dim=1)).abs() / scale
    label = name.removeprefix("transformers ")
    if prefix_layer:
        label += f" (class tokens keep {float((kept.abs() / scale).max()):.1e})"
    return label, float(error.max())


def task_rows() -> list[Row]:
    """Segmentation models (a region of class 1) and detectors (their first detection), at
    the image the user passes, from the default CAM layer (``tests/test_targets.py``)."""
    import test_targets as tasks

    from captum_fgcam.targets import Detection, SegmentationRegion

    x = image_batch(2, 64, 64, 9)
    found = [("torchvision", f"{name} (segmentation)", _named(
        f"{name} (segmentation)", lambda name=name: tasks.conservation_error(
            tasks.segmentation(name)[0], x, SegmentationRegion(1, torch.ones(64, 64)))[0]))
            for name in tasks.SEGMENTATION]
    found.append(("transformers", "SegFormer (segmentation)", _named(
        "SegFormer (segmentation)", lambda: tasks.conservation_error(
            tasks.segformer(), x, SegmentationRegion(1, torch.ones(16, 16)))[0])))
    images = torch.rand(2, 3, 96, 80, generator=torch.Generator().manual_seed(4))
    found += [("torchvision", f"{name} (detection)", _named(
        f"{name} (detection)", lambda name=name: tasks.conservation_error(
            tasks.detector(name), images, Detection(index=0))[0])) for name in tasks.DETECTORS]
    return found


if __name__ == "__main__":
    main()
