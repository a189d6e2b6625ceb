"""The model and device named on the command line, shared by ``explain`` and ``benchmark``.

A model is a torchvision model name of the task (classification, segmentation or detection;
with ``weights``, or random weights), a checkpoint file (a state_dict, loaded with
``weights_only=True``, of the torchvision architecture ``arch``), or a :mod:`captum_fgcam.zoo`
name. Mistakes raise
:class:`~captum_fgcam.usage.UsageError` naming the problem and its fix.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from . import zoo
from .datasets import Scenes
from .images import Preprocessing
from .usage import UsageError, one_line, suggest


@dataclass
class LoadedModel:
    """A model ready to explain, with what the figure and the preprocessing need."""

    model: nn.Module
    label: str  # for titles: the name, and "RANDOM WEIGHTS" where that holds
    preprocessing: Preprocessing
    categories: Sequence[str] | None = None


#: the tasks a model is loaded for; multi-label and similarity models are classifiers' kin
TASKS = ("classification", "multilabel", "similarity", "segmentation", "detection")


def classification_models() -> list[str]:
    """torchvision's classification model names."""
    return torchvision.models.list_models(module=torchvision.models)


def task_models(task: str = "classification") -> list[str]:
    """torchvision's model names for ``task`` (segmentation, detection; else classifiers)."""
    if task == "segmentation":
        return torchvision.models.list_models(module=torchvision.models.segmentation)
    if task == "detection":
        return torchvision.models.list_models(module=torchvision.models.detection)
    return classification_models()


def _zoo_task(task: str) -> str:
    return task if task in ("segmentation", "detection") else "classification"


def task_preprocessing(task: str) -> Preprocessing:
    """The default preprocessing of a torchvision model of ``task`` without weights: 224 px
    for classifiers, 520 for segmentation (torchvision's), 512 in [0, 1] for detectors
    (they normalise and resize inside)."""
    if task == "segmentation":
        return Preprocessing(520, 520)
    if task == "detection":
        return Preprocessing(512, 512, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return Preprocessing()


def parse_device(name: str | None) -> torch.device:
    """The device ``name``, checked to be usable: a tensor is made there, computed on and
    copied back (default: CUDA when available, the ``LOCAL_RANK``-th under torchrun, else the
    CPU). ``meta`` holds no data and is refused."""
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
        if device.type == "meta":
            raise RuntimeError("the meta device holds no data, so nothing can be computed")
        if float((torch.ones(1, device=device) * 2).cpu()) != 2:
            raise RuntimeError("1 * 2 is not 2 there")
    except Exception as err:  # each backend fails its own way (Runtime-, Assertion-, Import-)
        raise UsageError(f"--device {name}: {one_line(err, 160)}; use cpu, cuda, cuda:1, "
                         "mps, ... (a device this torch build can use)") from err
    return device


def _drawn_heads(model: nn.Module) -> nn.Module:
    """Random weights for linear layers initialised to zero (torchvision's ViT head): with
    them every score would be the same constant and every map zero."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and not bool(module.weight.any()):
            with torch.no_grad():
                nn.init.normal_(module.weight, std=0.02)
    return model


def torchvision_weights(name: str, weights: str) -> torchvision.models.WeightsEnum:
    """torchvision's weights ``weights`` (a weights name or DEFAULT) of model ``name``."""
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum.verify(weights)
    except (KeyError, ValueError) as err:
        valid = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise UsageError(f"unknown weights {weights!r} for {name}; choose one of "
                         f"{valid}") from err


def weights_file(weights: torchvision.models.WeightsEnum) -> Path:
    """Where torch.hub caches (and reads) ``weights``: ``<hub dir>/checkpoints/<URL's name>``."""
    return (Path(torch.hub.get_dir()) / "checkpoints"
            / os.path.basename(urllib.parse.urlparse(weights.url).path))


def torchvision_model(name: str, weights: str | None, task: str = "classification"
                      ) -> LoadedModel:
    """torchvision's model ``name`` in eval mode with ``weights`` (a weights name or DEFAULT;
    None: random weights, the backbone's too)."""
    if weights is None:
        options = {} if name in classification_models() else {"weights_backbone": None}
        model = _drawn_heads(torchvision.models.get_model(name, weights=None, **options))
        return LoadedModel(model.eval(), f"{name}, RANDOM WEIGHTS", task_preprocessing(task))
    chosen = torchvision_weights(name, weights)
    try:
        model = torchvision.models.get_model(name, weights=chosen)
    except OSError as err:  # urllib's URLError and socket errors are OSErrors
        where = Path(torch.hub.get_dir()) / "checkpoints"
        raise UsageError(
            f"weights for {name} ({chosen}) are not cached in {where} and cannot be downloaded "
            f"({err}); download them once with internet access or pass a checkpoint file"
        ) from err
    return LoadedModel(model.eval(), f"{name} ({chosen})", _weights_preprocessing(chosen),
                       chosen.meta.get("categories"))


def _weights_preprocessing(weights: torchvision.models.WeightsEnum) -> Preprocessing:
    t = weights.transforms()
    if not hasattr(t, "mean"):  # a detector's: images in [0, 1], resized inside the model
        return task_preprocessing("detection")
    resize = t.resize_size[0] if t.resize_size else 520
    crop = t.crop_size[0] if hasattr(t, "crop_size") else resize
    return Preprocessing(resize, crop, t.mean, t.std, t.interpolation)


def _checkpoint_model(path: Path, arch: str, task: str = "classification") -> LoadedModel:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and format errors all mean "not loadable safely"
        raise UsageError(
            f"cannot load {path} safely (torch.load with weights_only=True: "
            f"{one_line(err, 160)}); save model.state_dict() and pass the file with "
            "--arch NAME") from err
    if not (isinstance(state, Mapping) and state
            and all(isinstance(v, Tensor) for v in state.values())):
        raise UsageError(f"{path} does not hold a state_dict (parameter names -> tensors); "
                         "save model.state_dict() and pass the file with --arch NAME")
    if arch in classification_models():
        classes = next(v.shape[0] for k, v in reversed(state.items()) if k.endswith("weight"))
        model = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    else:  # the architecture's own class count (VOC's 21, COCO's 91)
        model = torchvision.models.get_model(arch, weights=None, weights_backbone=None)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UsageError(f"{path} does not fit --arch {arch}: {one_line(err)}") from err
    return LoadedModel(model.eval(), f"{arch} from {path.name}", task_preprocessing(task))


def zoo_model(name: str) -> LoadedModel:
    """The :mod:`captum_fgcam.zoo` model ``name`` in eval mode, with the scenes' size,
    normalisation and class names."""
    return LoadedModel(zoo.load_model(name), name, _zoo_preprocessing(name),
                       _zoo_categories(name))


def _zoo_categories(name: str) -> list[str]:
    """The scenes' class names; the segmenter's class 0 is the background."""
    classes = list(Scenes.classes)
    return ["background", *classes] if zoo.task(name) == "segmentation" else classes


def _zoo_preprocessing(name: str) -> Preprocessing:
    scenes = zoo.scenes(name)
    if not scenes.normalize:  # the zoo detector takes [0, 1] images, as torchvision's do
        return Preprocessing(scenes.size, scenes.size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return Preprocessing(resize=scenes.size, crop=scenes.size, mean=Scenes.mean, std=Scenes.std)


@dataclass(frozen=True)
class ModelSource:
    """A model named on the command line, checked but not loaded yet: which files loading it
    reads, its preprocessing and class names (both known without loading it)."""

    kind: str  # "torchvision", "checkpoint" or "zoo"
    name: str  # the model name, or the checkpoint's path
    task: str = "classification"  # one of TASKS
    weights: str | None = None  # torchvision: a weights name (None: random weights)
    arch: str | None = None  # checkpoint: its torchvision architecture
    #: (what it is, path) for every file loading reads (for ``check_outputs``)
    files: tuple[tuple[str, Path], ...] = ()
    preprocessing: Preprocessing = Preprocessing()
    categories: Sequence[str] | None = None

    def load(self) -> LoadedModel:
        """The model in eval mode, with its preprocessing."""
        if self.kind == "checkpoint":
            return _checkpoint_model(Path(self.name), str(self.arch), self.task)
        if self.kind == "zoo":
            return zoo_model(self.name)
        if self.weights is None:
            print(f"WARNING: {self.name} has RANDOM weights (no --weights given): the maps "
                  "show how the methods work, not what a trained model looks at. Pass "
                  "--weights DEFAULT for pretrained weights.", file=sys.stderr)
        return torchvision_model(self.name, self.weights, self.task)


def model_source(name: str, weights: str | None = None, arch: str | None = None,
                 task: str = "classification") -> ModelSource:
    """The model named on the command line, checked without loading anything: a checkpoint
    file (with ``arch``), a torchvision model name of ``task`` (with ``weights`` or random
    weights) or a zoo name of that task."""
    models = task_models(task)
    kind = {"segmentation": "segmentation", "detection": "detection"}.get(task,
                                                                         "classification")
    path = Path(name)
    if path.is_file():
        if weights is not None:
            raise UsageError("--weights applies to torchvision model names; a checkpoint "
                             "brings its own weights (name its architecture with --arch)")
        if arch is None:
            raise UsageError(f"--model {path} is a checkpoint, and a state_dict does not "
                             "say which model it belongs to; pass --arch NAME (the "
                             "torchvision architecture, e.g. --arch resnet18)")
        if arch not in models:
            raise UsageError(f"unknown --arch {arch!r}: not a torchvision {kind} model"
                             f"{suggest(arch, models)}{_other_task(arch)}")
        return ModelSource("checkpoint", name, task, arch=arch,
                           files=(("the checkpoint --model reads", path),),
                           preprocessing=task_preprocessing(task))
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin") or len(path.parts) > 1:
        raise UsageError(f"checkpoint file {name} not found")
    if arch is not None:
        raise UsageError("--arch applies to a checkpoint file (the architecture of its "
                         "state_dict); a model name says it already")
    if name in models:
        if weights is None:
            return ModelSource("torchvision", name, task,
                               preprocessing=task_preprocessing(task))
        chosen = torchvision_weights(name, weights)
        return ModelSource("torchvision", name, task, weights, files=(
            ("the weights file --weights reads", weights_file(chosen)),),
            preprocessing=_weights_preprocessing(chosen),
            categories=chosen.meta.get("categories"))
    if name not in zoo.names():
        module = "" if kind == "classification" else f".{kind}"
        raise UsageError(
            f"unknown model {name!r}: not a file and not a torchvision {kind} "
            f"model{suggest(name, models)}{_other_task(name)} (all names: "
            f"torchvision.models.list_models(module=torchvision.models{module}))")
    if weights is not None:
        raise UsageError(f"--weights applies to torchvision model names; {name} brings "
                         "its own weights")
    if zoo.task(name) != _zoo_task(task):
        raise UsageError(f"--model {name} is a {zoo.task(name)} model; pass --task "
                         f"{zoo.task(name)}")
    return ModelSource("zoo", name, task, files=(
        (f"the weights file of --model {name}", zoo.checkpoint_path(name)),),
        preprocessing=_zoo_preprocessing(name), categories=_zoo_categories(name))


def _other_task(name: str) -> str:
    """"; it is a detection model: pass --task detection" where ``name`` is one."""
    for task in ("classification", "segmentation", "detection"):
        if name in task_models(task) or (name in zoo.names() and zoo.task(name) == task):
            return f"; {name} is a {task} model: pass --task {task}"
    return ""


def load_model(name: str, weights: str | None = None, arch: str | None = None) -> LoadedModel:
    """The model named on the command line, in eval mode, with its preprocessing."""
    return model_source(name, weights, arch).load()


def probe(model: nn.Module, size: int, device: torch.device, default: int, label: str,
          option: str = "--size", task: str = "classification") -> Any:
    """The output for one all-zero image of ``size`` x ``size`` pixels: the cheap check that
    ``model`` runs at that size and returns (1, classes) scores (another ``task``: any output;
    :func:`captum_fgcam.tasks.output_classes` checks it), done before any image is read.
    Where it does not run, the smallest size that does between ``size`` and ``default``
    (the model's own, which must run) is found by bisection and named in the error."""
    def scores(side: int) -> Any:
        try:
            with torch.no_grad():
                return model(torch.zeros(1, 3, side, side, device=device))
        except Exception as err:  # each layer refuses a small input its own way
            return err

    out = scores(size)
    if isinstance(out, Exception):
        if size == default or isinstance(scores(default), Exception):
            raise UsageError(f"--model {label} cannot run on a {default} x {default} image "
                             f"({one_line(out, 200)}); check that it is an image model "
                             "taking 3-channel images") from out
        if size > default:
            raise UsageError(f"{option} {size}: {label} cannot run on {size} x {size} images "
                             f"({one_line(out, 200)}); it runs at {default}: pass "
                             f"{option} {default}") from out
        low, high = size, default  # fails at low, runs at high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = ((middle, high) if isinstance(scores(middle), Exception)
                         else (low, middle))
        raise UsageError(f"{option} {size}: {label} cannot run on {size} x {size} images "
                         f"({one_line(out, 200)}); the smallest size that runs, found by "
                         f"bisection between {size} and {default}, is {high}: pass "
                         f"{option} {high}") from out
    if task != "classification":
        return out
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] < 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UsageError(f"--model {label} returns {shape} for one image, not (1, classes) "
                         "scores; pass an image classifier")
    return out
