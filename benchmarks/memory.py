"""Peak memory of FG-CAM relative to a floor, measured in one run.

Each measurement runs in a fresh process (peak resident memory only grows within a process):
the peak during the call minus the memory held just before it (model, weights and input
already loaded). Floor: one forward plus one backward to the input, parameters frozen.

    python benchmarks/memory.py     # batch 8, 224 x 224, FG-Grad-CAM to the input (its first call)
    python benchmarks/memory.py --models resnet50
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(name: str, kind: str, batch: int, size: int, queue: mp.Queue) -> None:
    import torch
    import torchvision

    from captum_fgcam import FGGradCam

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    target = torch.arange(batch)
    first = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    fg = FGGradCam(model, first)
    if kind == "floor":
        for p in model.parameters():
            p.requires_grad_(False)
    before = _rss_mib()
    if kind == "floor":
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, target[:, None]).sum(), xi)
    else:
        fg.attribute(x, target, attribute_to_layer_input=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    queue.put(peak - before)


def measure(name: str, kind: str, batch: int, size: int) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(name, kind, batch, size, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["vgg16_bn", "resnet50", "efficientnet_b0",
                                 "mobilenet_v3_large", "convnext_tiny"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    print(f"batch {args.batch}, {args.size}x{args.size}: peak memory above the loaded model "
          "and input\n")
    print("| model | call | MiB | ratio to floor |\n|---|---|---:|---:|")
    for name in args.models:
        floor = measure(name, "floor", args.batch, args.size)
        ours = measure(name, "fg-grad-cam", args.batch, args.size)
        print(f"| {name} | floor: forward + backward to the input | {floor:.0f} | 1.00 |")
        print(f"| {name} | FG-Grad-CAM to the input | {ours:.0f} | {ours / floor:.2f} |",
              flush=True)

if __name__ == "__main__":
    main()
