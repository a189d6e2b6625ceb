"""``captum-fgcam benchmark``: the paper's comparison on the embedded scenes or on ImageNet.

Under ``torchrun --nproc_per_node K -m captum_fgcam.cli benchmark ...`` each process takes
every K-th image and the sums are all-reduced (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .. import metrics, zoo
from ..loading import classification_models, parse_device, torchvision_model, zoo_model
from ..methods import METHODS, PAPER_METHODS, get_method
from ..outputs import check_outputs
from ..propagation import PRESETS
from ..usage import UsageError, suggest
from .data import ImageNetVal, SceneItems
from .runner import Settings, describe, run, write_tables

QUICK_IMAGES = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=("scenes", "imagenet"), default="scenes",
                        help="the embedded scenes benchmark (default) or an ILSVRC2012 val copy")
    parser.add_argument("--model", default=None,
                        help="zoo name (scenes-vgg16bn, scenes-resnet, scenes-wall) or a "
                             "torchvision model name (default: scenes-vgg16bn / vgg16_bn)")
    parser.add_argument("--weights", default="DEFAULT",
                        help="torchvision weights for --data imagenet (default: DEFAULT; "
                             "'none' for random weights)")
    parser.add_argument("--root", type=Path, help="ImageNet val images, ROOT/<wnid>/<image>")
    parser.add_argument("--boxes", type=Path, help="ImageNet val box XML files")
    parser.add_argument("--size", type=int, default=224,
                        help="ImageNet: images resized to SIZE x SIZE, no crop (224)")
    parser.add_argument("--images", type=int, default=500, help="number of images (500)")
    parser.add_argument("--methods", nargs="+", default=list(PAPER_METHODS), metavar="METHOD",
                        help=f"any of {', '.join(METHODS)} (case, '-' and '_' ignored; "
                        f"default: the paper's {', '.join(PAPER_METHODS)})")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="dotted layer names or 'input' (default: the paper's)")
    parser.add_argument("--batch-size", type=int, default=8, help="images explained together")
    parser.add_argument("--metric-batch-size", type=int, default=128,
                        help="perturbed images per forward pass")
    parser.add_argument("--pixels-per-step", type=int, default=448,
                        help="insertion/deletion: pixels changed per step (448)")
    parser.add_argument("--steps", type=int, default=None,
                        help="insertion/deletion: number of steps (overrides the above)")
    parser.add_argument("--blur", type=float, nargs=2, default=None,
                        metavar=("KERNEL", "SIGMA"), help="blur substrate (default 51 50)")
    parser.add_argument("--logits", action="store_true",
                        help="score with logits instead of softmax probabilities")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_IMAGES} images: a smoke run of every method and metric")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (it shows only on a terminal anyway)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if "
                                                       "available; LOCAL_RANK under torchrun)")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"),
                        help="output folder for results.md, results.csv, results.png")
    parser.add_argument("--seed", type=int, default=0, help="scenes: seed of the test split")
    parser.add_argument("--style", choices=("training", "held-out"), default="training",
                        help="scenes: the model's own generator (default) or the held-out one "
                             "(other backgrounds and distractors, never trained on)")
    parser.add_argument("--rules", choices=sorted(PRESETS), default="conserving",
                        help="relevance rule preset of FG-CAM and LRP (default: conserving)")


def _load(args: argparse.Namespace) -> tuple[nn.Module, object, torch.Tensor | None, str]:
    """The model, the benchmark items, the unseen-pixel mask of a wall model, the title."""
    if args.data == "scenes":
        name = args.model or "scenes-vgg16bn"
        model = zoo_model(name).model
        scenes = zoo.scenes(name, "test", length=args.images, seed=args.seed, style=args.style)
        unseen = (model.unseen_mask(scenes.size, scenes.size)
                  if hasattr(model, "unseen_mask") else None)
        generator = " (held-out generator)" if args.style == "held-out" else ""
        return (model, SceneItems(scenes), unseen,
                f"{name} on {args.images} held-out scenes{generator}")
    name = args.model or "vgg16_bn"
    weights = None if args.weights.lower() == "none" else args.weights
    model = torchvision_model(name, weights).model
    data = ImageNetVal(args.root, args.boxes, size=args.size)
    if len(data) > args.images:
        data = torch.utils.data.Subset(data, range(args.images))
    return model, data, None, f"{name} ({args.weights}) on {len(data)} ImageNet images"


def _check(args: argparse.Namespace) -> torch.device:
    """Every argument that can be checked before any work; the device."""
    if args.images < 1:
        raise UsageError(f"--images {args.images}: give at least 1 image")
    args.methods = list(dict.fromkeys(get_method(m).name for m in args.methods))
    for name, value in [("--batch-size", args.batch_size),
                        ("--metric-batch-size", args.metric_batch_size),
                        ("--pixels-per-step", args.pixels_per_step)]:
        if value < 1:
            raise UsageError(f"{name} {value}: give a positive number")
    if args.data == "scenes" and args.model is not None and args.model not in zoo.names():
        raise UsageError(f"--model {args.model} is not a zoo model, which the scenes need "
                         f"({', '.join(zoo.names())}); for a torchvision model use --data "
                         "imagenet")
    if args.data == "imagenet":
        if args.root is None or args.boxes is None:
            raise UsageError("--data imagenet needs --root (the val images) and --boxes (the "
                             "XMLs)")
        if args.model is not None and args.model not in classification_models():
            raise UsageError(f"--model {args.model} is not a torchvision classification "
                             f"model, which --data imagenet needs"
                             f"{suggest(args.model, classification_models())}")
    check_outputs([], folders=[args.out])
    return parse_device(args.device)


def run_command(args: argparse.Namespace) -> None:
    """Run ``benchmark``, raising :class:`~captum_fgcam.usage.UsageError` (and the other user
    errors :mod:`captum_fgcam.cli` reports) for mistakes."""
    device = _check(args)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        if args.quick:
            args.images = min(args.images, QUICK_IMAGES)
        model, data, unseen, title = _load(args)
        model = model.to(device)
        settings = Settings(
            methods=args.methods, layers=args.layers or (), batch_size=args.batch_size,
            metric_batch_size=args.metric_batch_size, steps=args.steps,
            pixels_per_step=args.pixels_per_step,
            blur=(metrics.Blur(int(args.blur[0]), args.blur[1]) if args.blur
                  else metrics.Blur()),
            use_softmax=not args.logits, rules=args.rules, progress=args.progress)
        results = run(model, data, settings,
                      None if unseen is None else unseen.to(device))
        if not dist.is_initialized() or dist.get_rank() == 0:
            paths = write_tables(results, args.out, title, notes=describe(settings))
            print(paths[1].read_text())
            print("wrote " + ", ".join(str(p) for p in paths))
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
