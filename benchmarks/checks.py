"""Cost of the per-call checks against one ``attribute`` call (issue 12's budget: <= 5 %).

Every ``FGGradCam.attribute`` call checks, before any work, the inputs (type, dtype, rank,
device, finiteness), the model's parameters and buffers (finite: one sum per tensor) and the
target's form; after the recorded forward pass, the target's range and the finiteness of the
components and of the map. The model is recorded afresh on every call (that is how the model
is seen as it is at call time), so that cost is part of the attribute call itself.

    python benchmarks/checks.py [--size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from timing import median_time

from captum_fgcam import FGGradCam
from captum_fgcam.attr.validation import as_target, check_inputs, check_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn(num_classes=1000).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.arange(args.batch)
    explainer = FGGradCam(model, "features.13")
    scores = model(x)

    def checks() -> None:
        check_inputs(model, (x,))
        check_target(as_target(target), args.batch, scores)
        a_map = torch.zeros(args.batch, 256, args.size // 4, args.size // 4)
        bool(torch.isfinite(a_map).all())  # the map's finiteness check

    attribute = median_time(lambda: explainer.attribute(x, target), args.repeats)
    checking = median_time(checks, args.repeats * 4)
    print(f"VGG16-bn, {args.batch} x 3 x {args.size} x {args.size}, FG-Grad-CAM at features.13")
    print(f"  attribute call (checks included): {attribute:.3f} s")
    print(f"  per-call checks:                  {checking * 1e3:.1f} ms "
          f"= {checking / attribute:.1%} of the call (budget 5 %)")


if __name__ == "__main__":
    main()
