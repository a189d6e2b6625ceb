"""``captum-fgcam explain``: FG-CAM and baseline maps for your own images and model.

The model is a torchvision model name of the ``--task`` (``--weights DEFAULT`` for
pretrained weights, random weights otherwise), a checkpoint file (loaded with
``weights_only=True``; a state_dict needs ``--arch``), or a :mod:`captum_fgcam.zoo` name (see
:mod:`captum_fgcam.loading`); what is explained per task: :mod:`captum_fgcam.tasks`. User
errors end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backend_bases import FigureCanvasBase
from torch import Tensor, nn

from .arguments import TargetType
from .conservation import conservation_report
from .denoising import DENOISE_MODES
from .images import IMAGE_SUFFIXES, check_images, image_files, image_suffixes, load_images
from .loading import TASKS, ModelSource, model_source, parse_device, probe
from .methods import INPUT, METHODS, explainers, resolve
from .outputs import check_outputs, written
from .propagation import PRESETS, find_cam_layer
from .propagation.views import CONVOLUTION_LAYERS
from .tasks import (
    Explained,
    check_classes,
    class_indices,
    embedding_of,
    explained,
    output_classes,
)
from .usage import UsageError
from .visualization import DPI, SCALES, UPSAMPLING, _cell_inches, plot_grid

MAP_SUFFIXES = (".pt", ".npz")
MIN_DPI = 10  # below it FreeType cannot size the 9-point labels
MAX_FIGURE_SIDE = 2**16 - 1  # matplotlib's Agg refuses larger images
MAX_FIGURE_PIXELS = 2**29  # 2 GiB of RGBA

#: maps[method][layer] = N x 1 x h x w
Maps = dict[str, dict[str, Tensor]]


# -- arguments -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``explain`` subcommand's arguments."""
    parser.add_argument("images", nargs="+", metavar="IMAGE", type=Path,
                        help="image files or folders (searched recursively, see --ext)")
    parser.add_argument("--model", required=True, metavar="NAME_OR_CHECKPOINT",
                        help="a torchvision model name of the task (e.g. resnet18, "
                             "deeplabv3_resnet50, fasterrcnn_resnet50_fpn), a checkpoint "
                             "file, or a captum_fgcam.zoo name")
    parser.add_argument("--task", choices=TASKS, default="classification",
                        help="what the model predicts and what is explained: a class "
                             "(default), several classes (multilabel), the similarity to "
                             "--reference, a segmented region, a detection")
    parser.add_argument("--weights", metavar="NAME",
                        help="torchvision weights: DEFAULT or a weights name such as "
                             "IMAGENET1K_V1 (without it: random weights, drawn with --seed)")
    parser.add_argument("--arch", metavar="NAME",
                        help="torchvision architecture of a state_dict checkpoint")
    parser.add_argument("--target", metavar="CLASS",
                        help="class index or name (default: the predicted class; "
                             "segmentation: the class covering most pixels; detection: the "
                             "most confident detection, of this class if given; multilabel: "
                             "a comma-separated list, default the classes with sigmoid >= "
                             "0.5)")
    parser.add_argument("--reference", type=Path, metavar="IMAGE",
                        help="--task similarity: the image whose embedding the images' "
                             "embeddings are compared with (cosine)")
    parser.add_argument("--layer", action="append", metavar="NAME", dest="layers",
                        help=f"dotted module name, or '{INPUT}' for the pixels; repeat for "
                             "several (default: the CAM layer and the input)")
    parser.add_argument("--method", action="append", metavar="METHOD", dest="methods",
                        help=f"one of {', '.join(METHODS)} (case, '-' and '_' ignored); "
                             "repeat for several (default: FG-Grad-CAM)")
    parser.add_argument("--denoise", nargs="?", const="paper", choices=DENOISE_MODES,
                        help="also show each FG method with SVD denoising: the paper's (its -D "
                             "variant), or with 'keep-mean' the channel means kept (its -DK "
                             "variant, for transformers)")
    parser.add_argument("--rules", choices=list(PRESETS), default="conserving",
                        help="relevance rule preset of FG-CAM and LRP (default: conserving)")
    parser.add_argument("--sign", choices=("positive", "all"), default="positive",
                        help="positive relevance, or signed (default: positive)")
    parser.add_argument("--upsample", choices=UPSAMPLING, default="nearest",
                        help="how layer maps are enlarged to the image (default: nearest)")
    parser.add_argument("--scale", choices=SCALES, default="map",
                        help="colour scale: 'map' (each map to its own scale) or 'method' "
                             "(relevance per pixel, shared by a method's maps, with each "
                             "map's total; default: map)")
    parser.add_argument("--bare", action="store_true",
                        help="bare maps instead of maps over the image")
    parser.add_argument("--dpi", type=float, default=DPI,
                        help=f"figure resolution (default: {DPI})")
    parser.add_argument("--cell", type=float, metavar="INCHES",
                        help="panel width (default: one image pixel per figure pixel, "
                             "2 to 6 inches)")
    parser.add_argument("--size", type=int, metavar="PIXELS",
                        help="resize and crop images to this size (default: the weights' "
                             "preprocessing, else 224)")
    parser.add_argument("--ext", default=",".join(s.lstrip(".") for s in IMAGE_SUFFIXES),
                        metavar="LIST", help="file extensions read from folders (default: "
                        "%(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="images explained together (default: 8)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:1, mps, ... (default: cpu)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for random weights (default: 0, so runs repeat)")
    parser.add_argument("--out", type=Path, default=Path("explain.png"), metavar="FILE",
                        help="figure file (default: explain.png; with several images, "
                             "one file per image: explain-<image>.png)")
    parser.add_argument("--maps", type=Path, metavar="FILE",
                        help="also save the maps at each layer's resolution: .npz (one "
                             "array per method and layer, named 'METHOD @ LAYER', N x h x w, "
                             "with 'images' and 'targets') or .pt (a dict)")
    parser.add_argument("--report", action="store_true",
                        help="also print, per image, a table of where the first FG-CAM "
                             "method's relevance goes from the CAM layer to the pixels, stage "
                             "by stage (its weighting, --rules)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")


# -- layers ----------------------------------------------------------------------------------

def resolve_layers(model: nn.Module, names: Sequence[str] | None, cam_layer: str) -> list[str]:
    """The layers to explain, checked; default: the CAM layer and the input."""
    names = list(names or [cam_layer, INPUT])
    modules = dict(model.named_modules())
    for name in names:
        if name != INPUT and (not name or name not in modules):
            # examples: convolutions and blocks holding some, near the top of the tree
            shallow = [n for n, m in modules.items() if n and n.count(".") <= 1
                       and any(isinstance(c, CONVOLUTION_LAYERS) for c in m.modules())]
            picks = [shallow[i] for i in np.linspace(0, len(shallow) - 1, 8).astype(int)]
            examples = ", ".join(dict.fromkeys([cam_layer, *picks, INPUT]))
            raise UsageError(f"unknown layer {name!r}; valid names include {examples} "
                             "(any name from model.named_modules())")
    return names


# -- maps ------------------------------------------------------------------------------------

def compute_maps(model: nn.Module, x: Tensor, target: TargetType, methods: Sequence[str],
                 layers: Sequence[str], rules: str = "conserving") -> Maps:
    """``maps[method][layer] = N x 1 x h x w`` (on the CPU) for every pair the registry
    supports (:mod:`captum_fgcam.methods`: plain CAMs have no map at the input); ``target``:
    class indices (one per image) or a target object."""
    if isinstance(target, list):
        target = torch.tensor(target, device=x.device)
    maps: Maps = {method: {} for method in methods}
    for (method, layer), explain_batch in explainers(model, methods, layers, x[:1],
                                                     rules).items():
        m = explain_batch(x, target)
        if m.dim() != 4:
            raise UsageError(f"{method} at layer {layer!r} gives a map of shape "
                             f"{tuple(m.shape)}, not an image-like one; choose a layer "
                             "with a spatial output, at or before the CAM layer")
        maps[method][layer] = m.cpu()
    return {method: row for method, row in maps.items() if row}


def _column(layer: str, maps: Maps, cam_layer: str) -> str:
    shape = next(row[layer].shape[-2:] for row in maps.values() if layer in row)
    note = ", CAM layer" if layer == cam_layer else ""
    return f"{layer} ({shape[0]}x{shape[1]}{note})"


def save_maps(path: Path, maps: Maps, images: Sequence[Path], targets: list[int | str]
              ) -> None:
    """The maps at each layer's resolution, named by method and layer: ``.npz`` (arrays
    ``"METHOD @ LAYER"`` of shape N x h x w, plus ``images`` and ``targets``, what was
    explained in each image as text: a class index, "1,3", "label: x1, y1, x2, y2") or ``.pt``
    (``{"images", "targets", "maps": {method: {layer: N x 1 x h x w}}}``)."""
    if path.suffix == ".pt":
        torch.save({"images": [str(p) for p in images], "targets": targets, "maps": maps}, path)
        return
    arrays = {f"{method} @ {layer}": m[:, 0].numpy() for method, row in maps.items()
              for layer, m in row.items()}
    with path.open("wb") as f:
        np.savez(f, images=np.array([str(p) for p in images]), targets=np.array(targets),
                 **arrays)


def _outputs(out: Path, images: Sequence[Path]) -> list[Path]:
    if len(images) == 1:
        return [out]
    stems = [p.stem for p in images]
    if len({s.casefold() for s in stems}) < len(stems):  # case-insensitive file systems too
        stems = [f"{i + 1}-{s}" for i, s in enumerate(stems)]
    return [out.with_name(f"{out.stem}-{s}{out.suffix}") for s in stems]


def _merge(into: Maps, maps: Maps) -> None:
    for method, row in maps.items():
        for layer, m in row.items():
            previous = into.setdefault(method, {}).get(layer)
            into[method][layer] = m if previous is None else torch.cat([previous, m])


# -- the command -----------------------------------------------------------------------------

def _methods(args: argparse.Namespace) -> list[str]:
    """The methods asked for (canonical names), checked against the layers before any work;
    with ``--denoise`` each FG method's -D (or -DK, with ``keep-mean``) variant follows it."""
    names = args.methods or ["FG-Grad-CAM"]
    layers = args.layers or ["<the CAM layer>", INPUT]
    chosen = resolve(names, [INPUT if la == INPUT else "layer" for la in layers])
    if args.denoise:
        suffix = "-DK" if args.denoise == "keep-mean" else "-D"
        chosen = list(dict.fromkeys(n for m in chosen for n in (m, m + suffix) if n in METHODS))
    return chosen


def _report_weighting(methods: Sequence[str]) -> str:
    """The CAM weighting of the first FG-CAM method, the one ``--report`` follows."""
    fg = next((m for m in methods if METHODS[m].family == "FG-CAM"), None)
    if fg is None:
        raise UsageError("--report follows FG-CAM's relevance from the CAM layer to the "
                         f"pixels, and none of {', '.join(methods)} propagates it; add an "
                         "FG-CAM method, e.g. --method fg-grad-cam")
    return METHODS[fg].weighting


@dataclass
class _Plan:
    """What ``explain`` does, every part checked before any work."""

    images: list[Path]
    methods: list[str]
    device: torch.device
    outputs: list[Path]
    source: ModelSource
    classes: list[int] | None  # --target's classes (None: chosen per image)
    report: str | None  # --report: the weighting it follows


def _check(args: argparse.Namespace) -> _Plan:
    """Every option checked before any work (the model is not loaded yet): the images (found
    and decodable), the numbers, the file names, the methods, the device, the model's name,
    files and weights, the target as far as it goes without the model, the figure's size,
    and the output files against everything the command reads."""
    images = image_files(args.images, image_suffixes(args.ext))
    if args.size is not None and args.size < 1:
        raise UsageError(f"--size {args.size}: give a positive number of pixels")
    for option, value in [("--batch-size", args.batch_size), ("--dpi", args.dpi),
                          ("--cell", args.cell)]:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{option} {value}: give a positive number")
    if args.dpi < MIN_DPI:
        raise UsageError(f"--dpi {args.dpi:g}: give {MIN_DPI} or more (below it the text "
                         "cannot be drawn)")
    if not -2**63 <= args.seed < 2**64:
        raise UsageError(f"--seed {args.seed}: torch.manual_seed takes -2**63 to 2**64 - 1")
    if args.maps is not None and args.maps.suffix not in MAP_SUFFIXES:
        raise UsageError(f"--maps {args.maps}: use a .npz or .pt file name")
    if args.out.suffix.lstrip(".") not in FigureCanvasBase.get_supported_filetypes():
        raise UsageError(f"--out {args.out}: use a figure file name such as explain.png "
                         f"({', '.join(FigureCanvasBase.get_supported_filetypes())})")
    methods = _methods(args)
    report = _report_weighting(methods) if args.report else None
    device = parse_device(args.device)
    source = model_source(args.model, args.weights, args.arch, args.task)
    classes = class_indices(args.target, source.categories, args.task)
    if (args.reference is None) == (args.task == "similarity"):
        raise UsageError("--task similarity needs --reference IMAGE (the image to compare "
                         "with)" if args.reference is None else
                         "--reference applies to --task similarity only; leave it out")
    references = [] if args.reference is None else [args.reference]
    _check_figure_size(args, source.preprocessing.sized(args.size).crop, len(methods))
    outputs = _outputs(args.out, images)
    check_outputs([("--out", p) for p in outputs]
                  + ([("--maps", args.maps)] if args.maps is not None else []),
                  [("the image", p) for p in images]
                  + [("the --reference image", p) for p in references]
                  + [("the image folder", p) for p in args.images if p.is_dir()]
                  + list(source.files))
    check_images(images + references)
    return _Plan(images, methods, device, outputs, source, classes, report)


def _check_figure_size(args: argparse.Namespace, size: int, methods: int) -> None:
    """Refuse a figure larger than matplotlib draws (``MAX_FIGURE_SIDE`` pixels a side,
    ``MAX_FIGURE_PIXELS`` in all), as large as the methods x layers grid can make it."""
    layers = len(args.layers) if args.layers else 2
    inches = _cell_inches((size, size), args.cell, args.dpi)
    width = (inches * (layers + 1) + 0.9) * args.dpi
    height = (inches * methods + 0.9) * args.dpi
    if max(width, height) > MAX_FIGURE_SIDE or width * height > MAX_FIGURE_PIXELS:
        raise UsageError(f"--dpi {args.dpi:g} and --cell {args.cell or inches:g} give a figure "
                         f"of up to {width:.0f} x {height:.0f} pixels; matplotlib draws at most "
                         f"{MAX_FIGURE_SIDE} a side and {MAX_FIGURE_PIXELS} in all: lower "
                         "--dpi or --cell")


def explain(args: argparse.Namespace) -> None:
    """Run ``explain``, raising :class:`~captum_fgcam.usage.UsageError` (and the other user
    errors :mod:`captum_fgcam.cli` reports) for mistakes."""
    plan = _check(args)
    torch.manual_seed(args.seed)
    loaded = plan.source.load()
    model = loaded.model.to(plan.device)
    preprocessing = loaded.preprocessing.sized(args.size)
    # the cheap checks that need the model, on one all-zero image before any image is read:
    # the size runs, the output is the task's, the target is a class, the layers exist
    blank = torch.zeros(1, 3, preprocessing.crop, preprocessing.crop, device=plan.device)
    output = probe(model, preprocessing.crop, plan.device, loaded.preprocessing.crop,
                   args.model, task=args.task)
    classes = output_classes(output, args.task)
    if classes is not None:
        check_classes(plan.classes, classes)
    reference = None
    if args.reference is not None:
        with torch.no_grad():
            reference = embedding_of(model(load_images([args.reference], preprocessing)[1]
                                           .to(plan.device)))
    cam_layer = find_cam_layer(model, blank)
    layers = resolve_layers(model, args.layers, cam_layer)
    images, outputs = plan.images, plan.outputs
    all_maps: Maps = {}
    all_targets: list[int | str] = []
    bar = _progress(len(images), args.progress)
    for start in range(0, len(images), args.batch_size):
        paths = images[start:start + args.batch_size]
        shown, x = load_images(paths, preprocessing)
        x = x.to(plan.device)
        with torch.no_grad():
            what = explained(args.task, model(x), plan.classes, loaded.categories, paths,
                             reference)
        maps = compute_maps(model, x, what.target, plan.methods, layers, args.rules)
        reports = ([] if plan.report is None else conservation_report(
            model, x, what.target, weighting=plan.report, rules=args.rules))
        columns = {layer: _column(layer, maps, cam_layer) for layer in layers
                   if any(layer in row for row in maps.values())}
        for i, (image, path) in enumerate(zip(shown, paths, strict=True)):
            cells = {row: {columns[layer]: m[i] for layer, m in by_layer.items()}
                     for row, by_layer in maps.items()}
            _save_figure(outputs[start + i], image, cells,
                         f"{loaded.label}: {what.summaries[i]}", args, what, i)
            bar.write(f"{path}: {what.summaries[i]} -> {outputs[start + i]}")
            if reports:
                bar.write(f"{reports[i]}\n")
        bar.update(len(paths))
        _merge(all_maps, maps)
        all_targets += what.described
    bar.close()
    if args.maps is not None:
        with written(args.maps) as partial:
            save_maps(partial, all_maps, images, all_targets)
        print(f"maps -> {args.maps}")


def _save_figure(out: Path, image: np.ndarray, cells: dict[str, dict[str, Tensor]],
                 title: str, args: argparse.Namespace, what: Explained, i: int) -> None:
    """One image's figure: rows = methods, columns = layers, drawn as the options say; the
    explained region outlined, or the explained box drawn, on every panel."""
    view = "positive relevance" if args.sign == "positive" else "signed relevance"
    fig = plot_grid(image, cells, sign=args.sign, title=f"{title}; {view}",
                    method="heat_map" if args.bare else "blended_heat_map",
                    mode=args.upsample, scale=args.scale, dpi=args.dpi, cell=args.cell,
                    scores=[m for m in cells if METHODS[m].scores],
                    region=what.regions[i] if what.regions else None,
                    box=what.boxes[i] if what.boxes else None)
    with written(out) as partial:
        fig.savefig(partial)
    plt.close(fig)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="explain", unit="image", disable=not enabled or None,
                file=sys.stderr)
