"""The model and device named on the command line, shared by ``explain`` and ``benchmark``.

A model is a torchvision classification model name (with ``weights``, or random weights), a
checkpoint file (a state_dict, loaded with ``weights_only=True``, of the torchvision
architecture ``arch``), or a :mod:`captum_fgcam.zoo` name. Mistakes raise
:class:`~captum_fgcam.usage.UsageError` naming the problem and its fix.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def classification_models() -> list[str]:
    """torchvision's classification model names."""
    return torchvision.models.list_models(module=torchvision.models)


def parse_device(name: str | None) -> torch.device:
    """The device ``name``, checked to be usable (default: CUDA when available, the
    ``LOCAL_RANK``-th under torchrun, else the CPU)."""
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise UsageError(f"--device {name}: {one_line(err, 160)}") from err
    return device


def _drawn_heads(model: nn.Module) -> nn.Module:
    """Random weights for linear layers initialised to zero (torchvision's ViT head): with
    them every score would be the same constant and every map zero."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and not bool(module.weight.any()):
            with torch.no_grad():
                nn.init.normal_(module.weight, std=0.02)
    return model


def torchvision_model(name: str, weights: str | None) -> LoadedModel:
    """torchvision's model ``name`` in eval mode with ``weights`` (a weights name or DEFAULT;
    None: random weights)."""
    if weights is None:
        model = _drawn_heads(torchvision.models.get_model(name, weights=None))
        return LoadedModel(model.eval(), f"{name}, RANDOM WEIGHTS", Preprocessing())
    enum = torchvision.models.get_model_weights(name)
    try:
        chosen = enum.verify(weights)
    except (KeyError, ValueError) as err:
        valid = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise UsageError(f"unknown weights {weights!r} for {name}; choose one of "
                         f"{valid}") from err
    try:
        model = torchvision.models.get_model(name, weights=chosen)
    except OSError as err:  # urllib's URLError and socket errors are OSErrors
        where = Path(torch.hub.get_dir()) / "checkpoints"
        raise UsageError(
            f"weights for {name} ({chosen}) are not cached in {where} and cannot be downloaded "
            f"({err}); download them once with internet access or pass a checkpoint file"
        ) from err
    t = chosen.transforms()
    preprocessing = Preprocessing(t.resize_size[0], t.crop_size[0], t.mean, t.std,
                                  t.interpolation)
    return LoadedModel(model.eval(), f"{name} ({chosen})", preprocessing,
                       chosen.meta.get("categories"))


def _checkpoint_model(path: Path, arch: str | None) -> LoadedModel:
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
    if arch is None:
        raise UsageError(f"{path} holds a state_dict, which does not say which model it "
                         "belongs to; pass --arch NAME (the torchvision architecture, e.g. "
                         "--arch resnet18)")
    if arch not in classification_models():
        raise UsageError(f"unknown --arch {arch!r}: not a torchvision classification model"
                         f"{suggest(arch, classification_models())}")
    classes = next(v.shape[0] for k, v in reversed(state.items()) if k.endswith("weight"))
    model = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UsageError(f"{path} does not fit --arch {arch}: {one_line(err)}") from err
    return LoadedModel(model.eval(), f"{arch} from {path.name}", Preprocessing())


def zoo_model(name: str) -> LoadedModel:
    """The :mod:`captum_fgcam.zoo` model ``name`` in eval mode, with the scenes' size,
    normalisation and class names."""
    size = zoo.scenes(name).size
    preprocessing = Preprocessing(resize=size, crop=size, mean=Scenes.mean, std=Scenes.std)
    return LoadedModel(zoo.load_model(name), name, preprocessing, list(Scenes.classes))


def load_model(name: str, weights: str | None = None, arch: str | None = None) -> LoadedModel:
    """The model named on the command line, in eval mode, with its preprocessing."""
    path = Path(name)
    if path.is_file():
        if weights is not None:
            raise UsageError("--weights applies to torchvision model names; a checkpoint "
                             "brings its own weights (name its architecture with --arch)")
        return _checkpoint_model(path, arch)
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin") or len(path.parts) > 1:
        raise UsageError(f"checkpoint file {name} not found")
    if arch is not None:
        raise UsageError("--arch applies to a checkpoint file (the architecture of its "
                         "state_dict); a model name says it already")
    if name in classification_models():
        if weights is None:
            print(f"WARNING: {name} has RANDOM weights (no --weights given): the maps show how "
                  "the methods work, not what a trained model looks at. Pass --weights DEFAULT "
                  "for pretrained weights.", file=sys.stderr)
        return torchvision_model(name, weights)
    if name not in zoo.names():
        raise UsageError(
            f"unknown model {name!r}: not a file and not a torchvision classification "
            f"model{suggest(name, classification_models())} (all names: "
            "torchvision.models.list_models(module=torchvision.models))")
    if weights is not None:
        raise UsageError(f"--weights applies to torchvision model names; {name} brings "
                         "its own weights")
    return zoo_model(name)
