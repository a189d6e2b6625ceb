"""``captum-fgcam explain``: FG-CAM and baseline maps for your own images and model.

The model is a torchvision classification model name (``--weights DEFAULT`` for pretrained
weights, random weights otherwise), a checkpoint file (loaded with ``weights_only=True``; a
state_dict needs ``--arch``), or a :mod:`captum_fgcam.zoo` name (see
:mod:`captum_fgcam.loading`). User errors end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backend_bases import FigureCanvasBase
from torch import Tensor, nn

from .images import IMAGE_SUFFIXES, image_files, image_suffixes, load_images
from .loading import load_model, parse_device
from .methods import INPUT, METHODS, explainers, resolve
from .outputs import check_outputs, written
from .propagation import PRESETS, find_cam_layer
from .propagation.views import CONVOLUTION_LAYERS
from .usage import UsageError, suggest
from .visualization import DPI, SCALES, UPSAMPLING, plot_grid

MAP_SUFFIXES = (".pt", ".npz")

#: maps[method][layer] = N x 1 x h x w
Maps = dict[str, dict[str, Tensor]]


# -- arguments -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``explain`` subcommand's arguments."""
    parser.add_argument("images", nargs="+", metavar="IMAGE", type=Path,
                        help="image files or folders (searched recursively, see --ext)")
    parser.add_argument("--model", required=True, metavar="NAME_OR_CHECKPOINT",
                        help="a torchvision classification model name (e.g. resnet18), a "
                             "checkpoint file, or a captum_fgcam.zoo name")
    parser.add_argument("--weights", metavar="NAME",
                        help="torchvision weights: DEFAULT or a weights name such as "
                             "IMAGENET1K_V1 (without it: random weights, drawn with --seed)")
    parser.add_argument("--arch", metavar="NAME",
                        help="torchvision architecture of a state_dict checkpoint")
    parser.add_argument("--target", metavar="CLASS",
                        help="class index or name (default: the predicted class)")
    parser.add_argument("--layer", action="append", metavar="NAME", dest="layers",
                        help=f"dotted module name, or '{INPUT}' for the pixels; repeat for "
                             "several (default: the CAM layer and the input)")
    parser.add_argument("--method", action="append", metavar="METHOD", dest="methods",
                        help=f"one of {', '.join(METHODS)} (case, '-' and '_' ignored); "
                             "repeat for several (default: FG-Grad-CAM)")
    parser.add_argument("--denoise", action="store_true",
                        help="also show each FG method with SVD denoising (its -D variant)")
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
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")


# -- target, layers --------------------------------------------------------------------------

def resolve_target(spec: str | None, scores: Tensor,
                   categories: Sequence[str] | None) -> list[int]:
    """One class index per image: ``spec`` (an index or a class name) or the prediction."""
    classes = scores.shape[1]
    if spec is None:
        return scores.argmax(dim=1).tolist()
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < classes:
            raise UsageError(f"class index {index} is out of range: the model has {classes} "
                             f"classes; pass --target 0 to {classes - 1}")
        return [index] * scores.shape[0]
    if categories is None:
        raise UsageError(f"class name {spec!r} needs the model's class names, which only "
                         "torchvision --weights provide; pass a class index (0 to "
                         f"{classes - 1})")
    lowered = [c.lower() for c in categories]
    if spec.lower() not in lowered:
        raise UsageError(f"unknown class name {spec!r}{suggest(spec, list(categories))} "
                         f"(or pass a class index, 0 to {classes - 1})")
    return [lowered.index(spec.lower())] * scores.shape[0]


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

def compute_maps(model: nn.Module, x: Tensor, targets: list[int], methods: Sequence[str],
                 layers: Sequence[str], rules: str = "conserving") -> Maps:
    """``maps[method][layer] = N x 1 x h x w`` (on the CPU) for every pair the registry
    supports (:mod:`captum_fgcam.methods`: plain CAMs have no map at the input)."""
    target = torch.tensor(targets, device=x.device)
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


def save_maps(path: Path, maps: Maps, images: Sequence[Path], targets: list[int]) -> None:
    """The maps at each layer's resolution, named by method and layer: ``.npz`` (arrays
    ``"METHOD @ LAYER"`` of shape N x h x w, plus ``images`` and ``targets``) or ``.pt``
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
    if len(set(stems)) < len(stems):
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
    with ``--denoise`` each FG method's -D variant follows it."""
    names = args.methods or ["FG-Grad-CAM"]
    layers = args.layers or ["<the CAM layer>", INPUT]
    chosen = resolve(names, [INPUT if la == INPUT else "layer" for la in layers])
    if args.denoise:
        chosen = list(dict.fromkeys(n for m in chosen for n in (m, f"{m}-D") if n in METHODS))
    return chosen


def _check(args: argparse.Namespace) -> tuple[list[Path], list[str], torch.device, list[Path]]:
    """Everything checked before any work: the images, the methods, the device and the
    figure files (one per image)."""
    images = image_files(args.images, image_suffixes(args.ext))
    if args.size is not None and args.size < 1:
        raise UsageError(f"--size {args.size}: give a positive number of pixels")
    for option, value in [("--batch-size", args.batch_size), ("--dpi", args.dpi),
                          ("--cell", args.cell or 1)]:
        if value <= 0:
            raise UsageError(f"{option} {value}: give a positive number")
    if args.maps is not None and args.maps.suffix not in MAP_SUFFIXES:
        raise UsageError(f"--maps {args.maps}: use a .npz or .pt file name")
    if args.out.suffix.lstrip(".") not in FigureCanvasBase.get_supported_filetypes():
        raise UsageError(f"--out {args.out}: use a figure file name such as explain.png")
    methods = _methods(args)
    device = parse_device(args.device)
    outputs = _outputs(args.out, images)
    check_outputs(outputs + ([args.maps] if args.maps is not None else []), images)
    return images, methods, device, outputs


def explain(args: argparse.Namespace) -> None:
    """Run ``explain``, raising :class:`~captum_fgcam.usage.UsageError` (and the other user
    errors :mod:`captum_fgcam.cli` reports) for mistakes."""
    images, methods, device, outputs = _check(args)
    torch.manual_seed(args.seed)
    loaded = load_model(args.model, args.weights, args.arch)
    model = loaded.model.to(device)
    preprocessing = loaded.preprocessing.sized(args.size)
    all_maps: Maps = {}
    all_targets: list[int] = []
    bar = _progress(len(images), args.progress)
    for start in range(0, len(images), args.batch_size):
        paths = images[start:start + args.batch_size]
        shown, x = load_images(paths, preprocessing)
        x = x.to(device)
        with torch.no_grad():
            probabilities = model(x).softmax(dim=1).cpu()
        targets = resolve_target(args.target, probabilities, loaded.categories)
        if start == 0:
            cam_layer = find_cam_layer(model, x[:1])
            layers = resolve_layers(model, args.layers, cam_layer)
        maps = compute_maps(model, x, targets, methods, layers, args.rules)
        columns = {layer: _column(layer, maps, cam_layer) for layer in layers
                   if any(layer in row for row in maps.values())}
        for i, (image, path) in enumerate(zip(shown, paths, strict=True)):
            summary = _summary(probabilities[i], targets[i], loaded.categories)
            cells = {row: {columns[layer]: m[i] for layer, m in by_layer.items()}
                     for row, by_layer in maps.items()}
            _save_figure(outputs[start + i], image, cells, f"{loaded.label}: {summary}", args)
            bar.write(f"{path}: {summary} -> {outputs[start + i]}")
        bar.update(len(paths))
        _merge(all_maps, maps)
        all_targets += targets
    bar.close()
    if args.maps is not None:
        with written(args.maps) as partial:
            save_maps(partial, all_maps, images, all_targets)
        print(f"maps -> {args.maps}")


def _save_figure(out: Path, image: np.ndarray, cells: dict[str, dict[str, Tensor]],
                 title: str, args: argparse.Namespace) -> None:
    """One image's figure: rows = methods, columns = layers, drawn as the options say."""
    view = "positive relevance" if args.sign == "positive" else "signed relevance"
    fig = plot_grid(image, cells, sign=args.sign, title=f"{title}; {view}",
                    method="heat_map" if args.bare else "blended_heat_map",
                    mode=args.upsample, scale=args.scale, dpi=args.dpi, cell=args.cell,
                    scores=[m for m in cells if METHODS[m].scores])
    with written(out) as partial:
        fig.savefig(partial)
    plt.close(fig)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="explain", unit="image", disable=not enabled or None,
                file=sys.stderr)


def _summary(probabilities: Tensor, target: int, categories: Sequence[str] | None) -> str:
    """"class 3 'dog' (p = 0.81), predicted" for one image, or the prediction beside it."""
    def name(c: int) -> str:
        return f"{c} {categories[c]!r}" if categories else str(c)
    predicted = int(probabilities.argmax())
    text = f"class {name(target)} (p = {float(probabilities[target]):.2f})"
    if target == predicted:
        return f"{text}, predicted"
    return f"{text}; predicted {name(predicted)} (p = {float(probabilities[predicted]):.2f})"
