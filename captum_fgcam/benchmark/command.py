"""``captum-fgcam benchmark``: the paper's comparison on the embedded scenes or on ImageNet.

Under ``torchrun --nproc_per_node K -m captum_fgcam.cli benchmark ...`` each process takes
every K-th image and the sums are all-reduced (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .. import metrics, zoo
from ..loading import (
    classification_models,
    parse_device,
    probe,
    torchvision_model,
    torchvision_weights,
    weights_file,
    zoo_model,
)
from ..methods import INPUT, METHODS, PAPER_METHODS, get_method, resolve
from ..outputs import check_outputs
from ..propagation import PRESETS
from ..targets import box_iou
from ..usage import UsageError, suggest
from .data import ImageNetVal, SceneItems
from .runner import Settings, describe, run, write_tables

QUICK_IMAGES = 8
IMAGENET_SIZE = 224
PIXELS_PER_STEP = Settings.pixels_per_step
RESULT_SUFFIXES = (".csv", ".md", ".png")  # results.csv, .md, .png (write_tables)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=("scenes", "imagenet"), default="scenes",
                        help="the embedded scenes benchmark (default) or an ILSVRC2012 val copy")
    parser.add_argument("--model", default=None,
                        help="zoo name (scenes-vgg16bn, scenes-resnet, scenes-wall) or a "
                             "torchvision model name (default: scenes-vgg16bn / vgg16_bn)")
    parser.add_argument("--weights", default=None,
                        help="--data imagenet: torchvision weights (default: DEFAULT; "
                             "'none' for random weights)")
    parser.add_argument("--root", type=Path,
                        help="--data imagenet: the val images, ROOT/<wnid>/<image>")
    parser.add_argument("--boxes", type=Path, help="--data imagenet: the val box XML files")
    parser.add_argument("--size", type=int, default=None,
                        help="--data imagenet: images resized to SIZE x SIZE, no crop (224)")
    parser.add_argument("--images", type=int, default=500, help="number of images (500)")
    parser.add_argument("--methods", nargs="+", default=list(PAPER_METHODS), metavar="METHOD",
                        help=f"any of {', '.join(METHODS)} (case, '-' and '_' ignored; "
                        f"default: the paper's {', '.join(PAPER_METHODS)})")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="dotted layer names or 'input' (default: the paper's)")
    parser.add_argument("--batch-size", type=int, default=8, help="images explained together")
    parser.add_argument("--metric-batch-size", type=int, default=128,
                        help="perturbed images per forward pass")
    parser.add_argument("--pixels-per-step", type=int, default=None,
                        help=f"insertion/deletion: pixels changed per step ({PIXELS_PER_STEP})")
    parser.add_argument("--steps", type=int, default=None,
                        help="insertion/deletion: number of steps (instead of "
                             "--pixels-per-step)")
    parser.add_argument("--blur", type=float, nargs=2, default=None,
                        metavar=("KERNEL", "SIGMA"), help="blur substrate: an odd kernel size "
                        "and a positive sigma (default 51 50)")
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
    parser.add_argument("--seed", type=int, default=None,
                        help="--data scenes: seed of the test split (0)")
    parser.add_argument("--style", choices=("training", "held-out"), default=None,
                        help="--data scenes: the model's own generator (default: training) or "
                             "the held-out one (other backgrounds and distractors, never "
                             "trained on)")
    parser.add_argument("--rules", choices=sorted(PRESETS), default="conserving",
                        help="relevance rule preset of FG-CAM and LRP (default: conserving)")


def _load(args: argparse.Namespace) -> tuple[nn.Module, object, torch.Tensor | None, str, int]:
    """The model, the benchmark items, the unseen-pixel mask of a wall model, the title and
    the model's own image size."""
    if args.data == "scenes":
        name = args.model or "scenes-vgg16bn"
        model = zoo_model(name).model
        scenes = zoo.scenes(name, "test", length=args.images, seed=args.seed or 0,
                            style=args.style or "training")
        unseen = (model.unseen_mask(scenes.size, scenes.size)
                  if hasattr(model, "unseen_mask") else None)
        generator = " (held-out generator)" if args.style == "held-out" else ""
        items, title = SceneItems(scenes), f"{name} on {args.images} held-out scenes"
        if zoo.task(name) == "detection":
            items = SceneItems(scenes, boxes=True, indices=detected(model, scenes))
            title += (f", {len(items)} of them with the first object detected "
                      "(IoU >= 0.5, its class)")
        return model, items, unseen, title + generator, scenes.size
    name = args.model or "vgg16_bn"
    weights = _weights(args)
    model = torchvision_model(name, weights).model
    data = _imagenet(args)
    if len(data) > args.images:
        data = torch.utils.data.Subset(data, range(args.images))
    return (model, data, None, f"{name} ({args.weights or 'DEFAULT'}) on {len(data)} ImageNet "
            "images", IMAGENET_SIZE)


def _task(args: argparse.Namespace) -> str:
    """What the model predicts: a zoo model's task; ImageNet models classify."""
    return zoo.task(args.model) if args.data == "scenes" and args.model else "classification"


@torch.no_grad()
def detected(model: nn.Module, scenes: torch.utils.data.Dataset) -> list[int]:
    """The scenes whose first object the detector finds: a detection of its class that
    overlaps its box by IoU >= 0.5 (the others have nothing to explain)."""
    kept = []
    for start in range(0, len(scenes), 32):
        items = [scenes[i] for i in range(start, min(start + 32, len(scenes)))]
        for k, (found, (_, labels, _masks, boxes)) in enumerate(
                zip(model([item[0] for item in items]), items, strict=True)):
            hit = ((box_iou(found["boxes"], boxes[0].float()) >= 0.5)
                   & (found["labels"] == labels[0]))
            if bool(hit.any()):
                kept.append(start + k)
    if not kept:
        raise UsageError("the detector finds none of the scenes' objects; nothing to explain")
    return kept


def _weights(args: argparse.Namespace) -> str | None:
    weights = args.weights or "DEFAULT"
    return None if weights.lower() == "none" else weights


def _imagenet(args: argparse.Namespace) -> ImageNetVal:
    try:
        return ImageNetVal(args.root, args.boxes, size=args.size or IMAGENET_SIZE)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err


#: options that only one --data uses: given with the other they would be ignored
_ONLY = {"scenes": ("--seed", "--style"), "imagenet": ("--weights", "--root", "--boxes", "--size")}


def _check(args: argparse.Namespace) -> torch.device:
    """Every option checked before any work (nothing is loaded yet, except ImageNet's file
    list and headers); the device."""
    if args.images < 1:
        raise UsageError(f"--images {args.images}: give at least 1 image")
    args.methods = list(dict.fromkeys(get_method(m).name for m in args.methods))
    for name, value in [("--batch-size", args.batch_size),
                        ("--metric-batch-size", args.metric_batch_size),
                        ("--pixels-per-step", args.pixels_per_step), ("--steps", args.steps),
                        ("--size", args.size)]:
        if value is not None and value < 1:
            raise UsageError(f"{name} {value}: give a positive number")
    if args.steps is not None and args.pixels_per_step is not None:
        raise UsageError(f"--steps {args.steps} and --pixels-per-step {args.pixels_per_step}: "
                         "give one of them (--steps sets the pixels per step)")
    if args.blur is not None:
        kernel, sigma = args.blur
        if not (kernel.is_integer() and kernel >= 1 and kernel % 2 == 1):
            raise UsageError(f"--blur {kernel:g} {sigma:g}: the kernel size must be a positive "
                             "odd integer (e.g. 51)")
        if not (math.isfinite(sigma) and sigma > 0):
            raise UsageError(f"--blur {kernel:g} {sigma:g}: sigma must be a positive number "
                             "(e.g. 50)")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed {args.seed}: give a seed of 0 or more")
    if args.layers:
        _check_pairs(args.methods, args.layers)
    if args.data == "scenes" and args.model in zoo.names():
        _check_task_methods(args.methods, zoo.task(args.model))
    other = "imagenet" if args.data == "scenes" else "scenes"
    for option in _ONLY[other]:
        if getattr(args, option.lstrip("-")) is not None:
            raise UsageError(f"{option} applies to --data {other} only; --data {args.data} "
                             "would ignore it: leave it out")
    inputs: list[tuple[str, Path]] = []
    if args.data == "scenes":
        name = args.model or "scenes-vgg16bn"
        if name not in zoo.names():
            raise UsageError(f"--model {name} is not a zoo model, which the scenes need "
                             f"({', '.join(zoo.names())}); for a torchvision model use --data "
                             "imagenet")
        inputs.append((f"the weights file of --model {name}", zoo.checkpoint_path(name)))
    else:
        if args.root is None or args.boxes is None:
            raise UsageError("--data imagenet needs --root (the val images) and --boxes (the "
                             "XMLs)")
        name = args.model or "vgg16_bn"
        if name not in classification_models():
            raise UsageError(f"--model {name} is not a torchvision classification "
                             f"model, which --data imagenet needs"
                             f"{suggest(name, classification_models())}")
        weights = _weights(args)
        if weights is not None:
            inputs.append(("the weights file --weights reads",
                           weights_file(torchvision_weights(name, weights))))
        inputs += [("the --root folder", args.root), ("the --boxes folder", args.boxes)]
    check_outputs([("--out", args.out / f"results{suffix}") for suffix in RESULT_SUFFIXES],
                  inputs, folders=[("--out", args.out)])
    device = parse_device(args.device)
    if args.data == "imagenet":
        try:
            _imagenet(args).check(QUICK_IMAGES if args.quick else args.images)
        except ValueError as err:
            raise UsageError(str(err)) from err
    return device


def _check_pairs(methods: list[str], layers: list[str]) -> None:
    """Refuse a method that has no (method, layer) pair in the tables: no map at the layers
    asked for, or (the LRP family) compared at the input only."""
    resolve(methods, [INPUT if layer == INPUT else "layer" for layer in layers])
    for name in methods:
        method = METHODS[name]
        if not any(method.supports(layer) and (layer == INPUT or method.benchmarked_at_layers)
                   for layer in layers):
            raise UsageError(f"--methods {name} is compared at the input only, not at "
                             f"{', '.join(layers)}; add --layers {INPUT}")


def _check_task_methods(methods: list[str], task: str) -> None:
    """Refuse the methods that cannot explain a segmentation region or a detection: guided
    backpropagation and CLRP / SGLRP take class indices only; LRP starts at a score tensor,
    which a detector does not return."""
    if task == "classification":
        return
    for name in methods:
        if METHODS[name].family == "guided" or name in ("CLRP", "SGLRP") or (
                task == "detection" and METHODS[name].family == "LRP"):
            raise UsageError(f"--methods {name} cannot explain a {task} model's "
                             f"{'detection' if task == 'detection' else 'region'} (it takes "
                             "class indices of a classifier's scores); leave it out")


def _check_model(model: nn.Module, args: argparse.Namespace, size: int, default: int,
                 device: torch.device) -> None:
    """The checks that need the model, on one all-zero image before any is explained: it runs
    at the image size, the layers exist."""
    probe(model, size, device, default, args.model or "the model", task=_task(args))
    if args.layers:
        names = dict(model.named_modules())
        unknown = [layer for layer in args.layers
                   if layer != INPUT and (not layer or layer not in names)]
        if unknown:
            shown = [n for n in names if n][-8:]
            raise UsageError(f"--layers {unknown[0]}: the model has no such layer"
                             f"{suggest(unknown[0], [n for n in names if n])}; use '{INPUT}' or "
                             f"a name from model.named_modules() (e.g. {', '.join(shown)})")


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
        model, data, unseen, title, default = _load(args)
        model = model.to(device)
        _check_model(model, args, args.size or default, default, device)
        settings = Settings(
            methods=args.methods, layers=args.layers or (), batch_size=args.batch_size,
            metric_batch_size=args.metric_batch_size, steps=args.steps,
            pixels_per_step=args.pixels_per_step or PIXELS_PER_STEP,
            blur=(metrics.Blur(int(args.blur[0]), args.blur[1]) if args.blur
                  else metrics.Blur()),
            use_softmax=not args.logits, rules=args.rules, progress=args.progress,
            task=_task(args))
        results = run(model, data, settings,
                      None if unseen is None else unseen.to(device))
        if not dist.is_initialized() or dist.get_rank() == 0:
            paths = write_tables(results, args.out, title, notes=describe(settings))
            print(paths[1].read_text())
            print("wrote " + ", ".join(str(p) for p in paths))
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
