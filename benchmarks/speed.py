"""Speed of FG-CAM relative to a floor measured in the same run.

Floor: one forward plus one backward to the input of the same model and batch, parameters
frozen (the least any gradient-based attribution to the input can cost). Each method's time is
the median of ``--repeats`` runs, printed as seconds and as a ratio to the floor.

    python benchmarks/speed.py   # VGG16-bn, ResNet-50, EfficientNet-B0, MobileNetV3-L, ConvNeXt-T
    python benchmarks/speed.py --models vgg16_bn --score-cam   # adds FG-Score-CAM
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torchvision
from captum.attr import LayerGradCam
from timing import median_time

from captum_fgcam import FGGradCam, FGScoreCam, find_cam_layer


def first_conv(model: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))


def rows_for(name: str, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
             score_cam: bool) -> list[tuple[str, Callable[[], object]]]:
    cam = find_cam_layer(model)
    fg_input = FGGradCam(model, first_conv(model))
    grad_cam = LayerGradCam(model, model.get_submodule(cam))
    rows: list[tuple[str, Callable[[], object]]] = [
        (f"Grad-CAM (Captum LayerGradCam, {cam})", lambda: grad_cam.attribute(x, target)),
        ("FG-Grad-CAM to the input",
         lambda: fg_input.attribute(x, target, attribute_to_layer_input=True)),
        ("FG-Grad-CAM to the input, first call (CAM layer found in the pass)",
         lambda: FGGradCam(model, first_conv(model)).attribute(
             x, target, attribute_to_layer_input=True)),
    ]
    if name == "vgg16_bn":
        fg_13 = FGGradCam(model, model.features[13])
        rows.insert(1, ("FG-Grad-CAM to features[13]", lambda: fg_13.attribute(x, target)))
        rows.append(("FG-Grad-CAM + denoising to the input",
                     lambda: fg_input.attribute(x, target, attribute_to_layer_input=True,
                                                denoise=True)))
    if score_cam:
        fg_score = FGScoreCam(model, first_conv(model), batch_size=64)
        rows.append(("FG-Score-CAM to the input",
                     lambda: fg_score.attribute(x, target, attribute_to_layer_input=True)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["vgg16_bn", "resnet50", "efficientnet_b0",
                                 "mobilenet_v3_large", "convnext_tiny"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--score-cam", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| model | method | seconds | ratio to floor |\n|---|---|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval().to(args.device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
        target = torch.arange(args.batch, device=args.device) % 1000

        def floor(model: torch.nn.Module = model, x: torch.Tensor = x,
                  target: torch.Tensor = target) -> None:
            flags = [p.requires_grad for p in model.parameters()]
            for p in model.parameters():
                p.requires_grad_(False)
            try:
                xi = x.clone().requires_grad_(True)
                torch.autograd.grad(model(xi).gather(1, target[:, None]).sum(), xi)
                sync()
            finally:
                for p, flag in zip(model.parameters(), flags, strict=True):
                    p.requires_grad_(flag)

        base = median_time(floor, args.repeats)
        print(f"| {name} | floor: forward + backward to the input | {base:.3f} | 1.00 |",
              flush=True)
        for label, fn in rows_for(name, model, x, target, args.score_cam):
            def run(fn: Callable[[], object] = fn) -> None:
                fn()
                sync()
            t = median_time(run, 1 if "Score" in label else args.repeats)
            print(f"| {name} | {label} | {t:.3f} | {t / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
