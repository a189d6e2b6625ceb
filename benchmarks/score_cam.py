"""Score-CAM's cost: time and peak memory of FG-Score-CAM against ``batch_size``.

Score-CAM runs one forward pass per channel of the CAM layer per image (VGG16-bn at 224 px:
512 masked images per image), ``batch_size`` at a time. Each setting runs in a fresh process
so that its peak resident memory is its own.

    python benchmarks/score_cam.py [--size 224] [--images 1] [--batch-sizes 16 64 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(size: int, images: int, batch_size: int) -> dict[str, float]:
    import torch
    import torchvision

    from captum_fgcam import FGScoreCam

    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn(num_classes=1000).eval()
    x = torch.randn(images, 3, size, size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    FGScoreCam(model, "features.23", batch_size=batch_size, progress=False).attribute(x, 1)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mib": (peak - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.size, args.images, args.child)))
        return
    print(f"FG-Score-CAM, VGG16-bn (random weights), {args.images} image(s) of {args.size} px, "
          f"features.43 has 512 channels: {512 * args.images} masked forward passes")
    for batch_size in args.batch_sizes:
        out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--images",
                              str(args.images), "--child", str(batch_size)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  batch_size {batch_size:4d}: {r['seconds']:6.1f} s, "
              f"{r['seconds'] / (512 * args.images) * 1e3:5.1f} ms per masked image, "
              f"peak memory above the loaded model {r['peak_mib']:6.0f} MiB")


if __name__ == "__main__":
    main()
