"""Speed of FG-Grad-CAM to the pixels of a segmentation model and a detector, relative to a
floor measured in the same run: one forward plus one backward of the explained score to the
input (parameters frozen). Random weights; the median of ``--repeats`` runs.

    python benchmarks/task_speed.py   # DeepLabV3-MobileNetV3 and Faster R-CNN-MobileNetV3-FPN
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torchvision
from timing import median_time

from captum_fgcam import FGGradCam
from captum_fgcam.targets import Detection, SegmentationRegion, Target


def floor(model: torch.nn.Module, x: torch.Tensor, target: Target) -> None:
    """d target(model(x)) / dx, the parameters frozen."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(target(model(xi)).sum(), xi)
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def to_pixels(fg: FGGradCam, x: torch.Tensor, target: Target) -> Callable[[], object]:
    return lambda: fg.attribute(x, target, attribute_to_layer_input=True)


def cases(batch: int) -> list[tuple[str, torch.nn.Module, torch.Tensor, Target]]:
    torch.manual_seed(0)
    segmentation = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21).eval()
    x = torch.randn(batch, 3, 224, 224)
    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=91).eval()
    detector.roi_heads.score_thresh = 0.0
    images = torch.rand(batch, 3, 320, 320)
    centre = torch.zeros(224, 224, dtype=torch.bool)
    centre[56:168, 56:168] = True
    return [("deeplabv3_mobilenet_v3_large, 224 px", segmentation, x,
             SegmentationRegion(0, centre)),
            ("fasterrcnn_mobilenet_v3_large_fpn, 320 px", detector, images,
             Detection(index=0))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"batch {args.batch}, cpu, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}\n")
    print("| model | method | seconds | ratio to floor |\n|---|---|---:|---:|")
    for name, model, x, target in cases(args.batch):
        base = median_time(lambda m=model, x=x, t=target: floor(m, x, t), args.repeats)
        print(f"| {name} | floor: forward + backward of the score to the input | {base:.3f} "
              "| 1.00 |", flush=True)
        t = median_time(to_pixels(FGGradCam(model, ""), x, target), args.repeats)
        print(f"| {name} | FG-Grad-CAM to the pixels | {t:.3f} | {t / base:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
