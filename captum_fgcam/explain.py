"""``captum-fgcam explain``: FG-CAM and baseline maps for your own images and model.

The model is a torchvision classification model name (``--weights DEFAULT`` for pretrained
weights, random weights otherwise), a checkpoint file (loaded with ``weights_only=True``; a
state_dict needs ``--arch``), or a name from :mod:`captum_fgcam.zoo` when that module exists.
User errors end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as TF
from matplotlib.backend_bases import FigureCanvasBase
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from .methods import INPUT, METHODS, MethodError, explainers, resolve
from .outputs import OutputError, check_outputs, written
from .propagation import PRESETS, LayerError, MissingRuleError, find_cam_layer
from .visualization import DPI, SCALES, UPSAMPLING, plot_grid

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MAP_SUFFIXES = (".pt", ".npz")
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ExplainError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, crop the centre, scale to [0, 1], normalise."""

    resize: int = 224
    crop: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    interpolation: InterpolationMode = InterpolationMode.BILINEAR

    def __call__(self, image: Tensor) -> tuple[np.ndarray, Tensor]:
        """uint8 3 x H x W -> (the cropped image, H x W x 3 in [0, 1]; the model input)."""
        image = TF.resize(image, [self.resize], self.interpolation, antialias=True)
        image = TF.center_crop(image, [self.crop]).float() / 255
        shown = image.permute(1, 2, 0).numpy()
        return shown, TF.normalize(image, list(self.mean), list(self.std))

    def sized(self, size: int | None) -> Preprocessing:
        """The same normalisation at ``size`` pixels (resize and crop), if given."""
        if size is None:
            return self
        return Preprocessing(size, size, self.mean, self.std, self.interpolation)


@dataclass
class LoadedModel:
    """A model ready to explain, with what the figure and the preprocessing need."""

    model: nn.Module
    label: str  # for titles: the name, and "RANDOM WEIGHTS" where that holds
    preprocessing: Preprocessing
    categories: Sequence[str] | None = None


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


# -- model -----------------------------------------------------------------------------------

def _suggest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _classification_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _drawn_heads(model: nn.Module) -> nn.Module:
    """Random weights for linear layers initialised to zero (torchvision's ViT head): with
    them every score would be the same constant and every map zero."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and not bool(module.weight.any()):
            with torch.no_grad():
                nn.init.normal_(module.weight, std=0.02)
    return model


def _torchvision_model(name: str, weights: str | None) -> LoadedModel:
    if weights is None:
        print(f"WARNING: {name} has RANDOM weights (no --weights given): the maps show how the "
              "methods work, not what a trained model looks at. Pass --weights DEFAULT for "
              "pretrained weights.", file=sys.stderr)
        return LoadedModel(_drawn_heads(torchvision.models.get_model(name, weights=None)),
                           f"{name}, RANDOM WEIGHTS", Preprocessing())
    enum = torchvision.models.get_model_weights(name)
    try:
        chosen = enum.verify(weights)
    except (KeyError, ValueError) as err:
        valid = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ExplainError(f"unknown weights {weights!r} for {name}; choose one of "
                           f"{valid}") from err
    try:
        model = torchvision.models.get_model(name, weights=chosen)
    except OSError as err:  # urllib's URLError and socket errors are OSErrors
        where = Path(torch.hub.get_dir()) / "checkpoints"
        raise ExplainError(
            f"weights for {name} ({chosen}) are not cached in {where} and cannot be downloaded "
            f"({err}); download them once with internet access or pass a checkpoint file"
        ) from err
    t = chosen.transforms()
    preprocessing = Preprocessing(t.resize_size[0], t.crop_size[0], t.mean, t.std,
                                  t.interpolation)
    return LoadedModel(model, f"{name} ({chosen})", preprocessing,
                       chosen.meta.get("categories"))


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _checkpoint_model(path: Path, arch: str | None) -> LoadedModel:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and format errors all mean "not loadable safely"
        raise ExplainError(
            f"cannot load {path} safely (torch.load with weights_only=True: "
            f"{_one_line(err, 160)}); save model.state_dict() and pass the file with "
            "--arch NAME") from err
    if not (isinstance(state, Mapping) and state
            and all(isinstance(v, Tensor) for v in state.values())):
        raise ExplainError(f"{path} does not hold a state_dict (parameter names -> tensors); "
                           "save model.state_dict() and pass the file with --arch NAME")
    if arch is None:
        raise ExplainError(f"{path} holds a state_dict, which does not say which model it "
                           "belongs to; pass --arch NAME (the torchvision architecture, e.g. "
                           "--arch resnet18)")
    if arch not in _classification_models():
        raise ExplainError(f"unknown --arch {arch!r}: not a torchvision classification model"
                           f"{_suggest(arch, _classification_models())}")
    classes = next(v.shape[0] for k, v in reversed(state.items()) if k.endswith("weight"))
    model = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ExplainError(f"{path} does not fit --arch {arch}: {_one_line(err)}") from err
    return LoadedModel(model, f"{arch} from {path.name}", Preprocessing())


def _zoo_model(name: str) -> LoadedModel | None:
    """A model from :mod:`captum_fgcam.zoo` with the scenes' size, normalisation and class
    names, or None for a name the zoo does not know."""
    from . import zoo
    from .datasets import Scenes

    if name not in zoo.names():
        return None
    data = zoo.scenes(name)
    preprocessing = Preprocessing(resize=data.size, crop=data.size, mean=Scenes.mean,
                                  std=Scenes.std)
    return LoadedModel(zoo.load_model(name), name, preprocessing, list(Scenes.classes))


def load_model(name: str, weights: str | None = None, arch: str | None = None) -> LoadedModel:
    """The model named on the command line, in eval mode, with its preprocessing."""
    path = Path(name)
    if path.is_file():
        if weights is not None:
            raise ExplainError("--weights applies to torchvision model names; a checkpoint "
                               "brings its own weights (name its architecture with --arch)")
        loaded = _checkpoint_model(path, arch)
    elif path.suffix in (".pt", ".pth", ".ckpt", ".bin") or len(path.parts) > 1:
        raise ExplainError(f"checkpoint file {name} not found")
    elif arch is not None:
        raise ExplainError("--arch applies to a checkpoint file (the architecture of its "
                           "state_dict); a model name says it already")
    elif name in _classification_models():
        loaded = _torchvision_model(name, weights)
    else:
        found = _zoo_model(name)
        if found is None:
            raise ExplainError(
                f"unknown model {name!r}: not a file and not a torchvision classification "
                f"model{_suggest(name, _classification_models())} (all names: "
                "torchvision.models.list_models(module=torchvision.models))")
        if weights is not None:
            raise ExplainError(f"--weights applies to torchvision model names; {name} brings "
                               "its own weights")
        loaded = found
    loaded.model.eval()
    return loaded


# -- images, target, layers ------------------------------------------------------------------

def image_files(paths: Sequence[Path], suffixes: Sequence[str]) -> list[Path]:
    """The image files named, folders searched recursively for ``suffixes`` (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise ExplainError(f"folder {path} holds no image files with extensions "
                                   f"{', '.join(suffixes)} (see --ext)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ExplainError(f"image file or folder {path} not found")
    return list(dict.fromkeys(files))


def load_images(paths: Sequence[Path], preprocessing: Preprocessing
                ) -> tuple[list[np.ndarray], Tensor]:
    """The images as shown (H x W x 3 in [0, 1]) and as a normalised batch."""
    shown, batch = [], []
    for path in paths:
        try:
            with Image.open(path) as opened:
                raw = TF.pil_to_tensor(opened.convert("RGB"))
        except UnidentifiedImageError as err:
            raise ExplainError(f"cannot read image {path}: not an image file Pillow knows; "
                               "pass a PNG, JPEG, WebP, ... file") from err
        except OSError as err:  # truncated or damaged files
            raise ExplainError(f"cannot read image {path}: {err}") from err
        image, x = preprocessing(raw)
        shown.append(image)
        batch.append(x)
    return shown, torch.stack(batch)


def resolve_target(spec: str | None, scores: Tensor,
                   categories: Sequence[str] | None) -> list[int]:
    """One class index per image: ``spec`` (an index or a class name) or the prediction."""
    classes = scores.shape[1]
    if spec is None:
        return scores.argmax(dim=1).tolist()
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < classes:
            raise ExplainError(f"class index {index} is out of range: the model has {classes} "
                               f"classes; pass --target 0 to {classes - 1}")
        return [index] * scores.shape[0]
    if categories is None:
        raise ExplainError(f"class name {spec!r} needs the model's class names, which only "
                           "torchvision --weights provide; pass a class index (0 to "
                           f"{classes - 1})")
    lowered = [c.lower() for c in categories]
    if spec.lower() not in lowered:
        raise ExplainError(f"unknown class name {spec!r}{_suggest(spec, list(categories))} "
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
                       and any(isinstance(c, CONVOLUTIONS) for c in m.modules())]
            picks = [shallow[i] for i in np.linspace(0, len(shallow) - 1, 8).astype(int)]
            examples = ", ".join(dict.fromkeys([cam_layer, *picks, INPUT]))
            raise ExplainError(f"unknown layer {name!r}; valid names include {examples} "
                               "(any name from model.named_modules())")
    return names


# -- maps ------------------------------------------------------------------------------------

def compute_maps(model: nn.Module, x: Tensor, targets: list[int], methods: Sequence[str],
                 layers: Sequence[str], rules: str = "conserving"
                 ) -> dict[str, dict[str, Tensor]]:
    """``maps[method][layer] = N x 1 x h x w`` (on the CPU) for every pair the registry
    supports (:mod:`captum_fgcam.methods`: plain CAMs have no map at the input)."""
    target = torch.tensor(targets, device=x.device)
    maps: dict[str, dict[str, Tensor]] = {method: {} for method in methods}
    for (method, layer), explain_batch in explainers(model, methods, layers, x[:1],
                                                     rules).items():
        m = explain_batch(x, target)
        if m.dim() != 4:
            raise ExplainError(f"{method} at layer {layer!r} gives a map of shape "
                               f"{tuple(m.shape)}, not an image-like one; choose a layer "
                               "with a spatial output, at or before the CAM layer")
        maps[method][layer] = m.cpu()
    return {method: row for method, row in maps.items() if row}


def _column(layer: str, maps: dict[str, dict[str, Tensor]], cam_layer: str) -> str:
    shape = next(row[layer].shape[-2:] for row in maps.values() if layer in row)
    note = ", CAM layer" if layer == cam_layer else ""
    return f"{layer} ({shape[0]}x{shape[1]}{note})"


def save_maps(path: Path, maps: dict[str, dict[str, Tensor]], images: Sequence[Path],
              targets: list[int]) -> None:
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


def _merge(into: dict[str, dict[str, Tensor]], maps: dict[str, dict[str, Tensor]]) -> None:
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


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise ExplainError(f"--device {name}: {_one_line(err, 160)}") from err
    return device


def explain(args: argparse.Namespace) -> None:
    """Everything ``run`` does, raising :class:`ExplainError` for user errors."""
    suffixes = tuple(f".{e.strip().lstrip('.').lower()}" for e in args.ext.split(",")
                     if e.strip())
    images = image_files(args.images, suffixes)
    if args.size is not None and args.size < 1:
        raise ExplainError(f"--size {args.size}: give a positive number of pixels")
    for option, value in [("--batch-size", args.batch_size), ("--dpi", args.dpi),
                          ("--cell", args.cell or 1)]:
        if value <= 0:
            raise ExplainError(f"{option} {value}: give a positive number")
    if args.maps is not None and args.maps.suffix not in MAP_SUFFIXES:
        raise ExplainError(f"--maps {args.maps}: use a .npz or .pt file name")
    if args.out.suffix.lstrip(".") not in FigureCanvasBase.get_supported_filetypes():
        raise ExplainError(f"--out {args.out}: use a figure file name such as explain.png")
    methods = _methods(args)
    device = _device(args.device)
    outputs = _outputs(args.out, images)
    check_outputs(outputs + ([args.maps] if args.maps is not None else []), images)
    torch.manual_seed(args.seed)
    loaded = load_model(args.model, args.weights, args.arch)
    model = loaded.model.to(device)
    preprocessing = loaded.preprocessing.sized(args.size)
    all_maps: dict[str, dict[str, Tensor]] = {}
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
            out = outputs[start + i]
            summary = _summary(probabilities[i], targets[i], loaded.categories)
            view = "positive relevance" if args.sign == "positive" else "signed relevance"
            cells = {row: {columns[layer]: m[i] for layer, m in by_layer.items()}
                     for row, by_layer in maps.items()}
            fig = plot_grid(image, cells, sign=args.sign, title=f"{loaded.label}: {summary}; "
                            f"{view}", method="heat_map" if args.bare else "blended_heat_map",
                            mode=args.upsample, scale=args.scale, dpi=args.dpi,
                            cell=args.cell, scores=[m for m in maps if METHODS[m].scores])
            with written(out) as partial:
                fig.savefig(partial)
            plt.close(fig)
            bar.write(f"{path}: {summary} -> {out}")
        bar.update(len(paths))
        _merge(all_maps, maps)
        all_targets += targets
    bar.close()
    if args.maps is not None:
        with written(args.maps) as partial:
            save_maps(partial, all_maps, images, all_targets)
        print(f"maps -> {args.maps}")


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


def run(args: argparse.Namespace) -> int:
    """Run ``explain``; user errors print one line (no traceback) and return 2."""
    try:
        explain(args)
    except (ExplainError, OutputError, LayerError, MissingRuleError, MethodError) as err:
        print(f"captum-fgcam explain: error: {_one_line(err, 1000)}", file=sys.stderr)
        return 2
    return 0
