"""Speed of FG-CAM relative to a floor measured in the same run.

Floor: one forward plus one backward to the input of the same model and batch, parameters
frozen (the least any gradient-based attribution to the input can cost). Each method's time is
the median of ``--repeats`` runs, printed as seconds and as a ratio to the floor.

    python benchmarks/speed.py                 # VGG16-bn, batch 8, 224 x 224, CPU
    python benchmarks/speed.py --score-cam     # adds FG-Score-CAM (N x 512 masked forwards)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from captum.attr import LayerGradCam

from captum_fgcam import FGGradCam, FGScoreCam


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitive caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--score-cam", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn(weights=None).eval().to(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    target = torch.arange(args.batch, device=args.device) % 1000
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def floor(layout: torch.memory_format = torch.contiguous_format) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            xi = x.contiguous(memory_format=layout).requires_grad_(True)
            out = model(xi).gather(1, target[:, None]).sum()
            torch.autograd.grad(out, xi)
            sync()
        finally:
            for p in model.parameters():
                p.requires_grad_(True)

    fg_input = FGGradCam(model, model.features[0])
    fg_13 = FGGradCam(model, model.features[13])
    grad_cam = LayerGradCam(model, model.features[43])

    def timed(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            fn()
            sync()
        return run

    rows: list[tuple[str, Callable[[], None]]] = [
        ("Grad-CAM (Captum LayerGradCam, features[43])",
         timed(lambda: grad_cam.attribute(x, target))),
        ("FG-Grad-CAM to features[13]", timed(lambda: fg_13.attribute(x, target))),
        ("FG-Grad-CAM to the input",
         timed(lambda: fg_input.attribute(x, target, attribute_to_layer_input=True))),
        ("FG-Grad-CAM + denoising to the input",
         timed(lambda: fg_input.attribute(x, target, attribute_to_layer_input=True,
                                          denoise=True))),
    ]
    if args.score_cam:
        fg_score = FGScoreCam(model, model.features[0], batch_size=64)
        rows.append(("FG-Score-CAM to the input",
                     timed(lambda: fg_score.attribute(x, target, attribute_to_layer_input=True))))

    base = median_time(floor, args.repeats)
    base_cl = median_time(lambda: floor(torch.channels_last), args.repeats)
    print(f"VGG16-bn, batch {args.batch}, {args.size}x{args.size}, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print("| method | seconds | ratio to floor |\n|---|---:|---:|")
    print(f"| floor: forward + backward to the input | {base:.3f} | 1.00 |")
    print(f"| same floor, input in channels-last layout | {base_cl:.3f} | {base_cl / base:.2f} |")
    for name, fn in rows:
        t = median_time(fn, args.repeats if "Score" not in name else 1)
        print(f"| {name} | {t:.3f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
