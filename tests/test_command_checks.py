"""The commands check everything before any work: no output is a file they read or another
output (under any spelling of its path), and every option is validated up front. Each case
asserts the one-line error, that nothing was written and that every file given is unchanged
(bytes and modification time)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torchvision

from captum_fgcam import cli, zoo
from captum_fgcam.loading import weights_file
from captum_fgcam.outputs import OutputError, _CaseProbe, check_outputs

ZOO_WEIGHTS = zoo.checkpoint_path("scenes-vgg16bn")


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under ``roots`` (or the file itself): kind, bytes, link target, mtime."""
    state = {}
    for root in roots:
        paths = [root] if root.is_file() else [root, *root.rglob("*")]
        for path in paths:
            st = os.lstat(path)
            if path.is_symlink():
                state[str(path)] = ("link", os.readlink(path), st.st_mtime_ns)
            elif path.is_file():
                state[str(path)] = ("file", path.read_bytes(), st.st_mtime_ns)
            else:
                state[str(path)] = ("folder", st.st_mtime_ns)
    return state


@pytest.fixture
def place(tmp_path, monkeypatch):
    """tmp_path as the working folder: img/dog.png, img/cat.png, model.pt (a state_dict),
    an ImageNet-layout val/ and boxes/ folder, and TORCH_HOME=home/ holding resnet18's
    DEFAULT weights file (a stand-in: nothing is loaded before the refusals)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    for name in ("dog.png", "cat.png"):
        matplotlib.image.imsave(tmp_path / "img" / name, rng.random((40, 50, 3)))
    torch.save({"weight": torch.zeros(3, 2)}, tmp_path / "model.pt")
    (tmp_path / "val" / "n00000000").mkdir(parents=True)
    (tmp_path / "boxes").mkdir()
    matplotlib.image.imsave(tmp_path / "val" / "n00000000" / "ILSVRC2012_val_00000001.JPEG",
                            rng.random((30, 40, 3)))
    (tmp_path / "boxes" / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><size><width>40</width><height>30</height></size><object><name>"
        "n00000000</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>20</xmax><ymax>20</ymax>"
        "</bndbox></object></annotation>")
    cached = weights_file(torchvision.models.ResNet18_Weights.DEFAULT)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached weights")
    return tmp_path


def _refused(command: str, args: list, capsys, *also: Path) -> str:
    """Run ``command`` with ``args``; assert exit code 2, one error line and no trace of a
    write under the working folder or in ``also``; the error line."""
    before = _snapshot(Path.cwd(), *also)
    try:
        code = cli.main([command, *map(str, args)])
    except SystemExit as exit_:  # argparse's own checks (choices, types)
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]
    if not lines[-1].startswith(f"captum-fgcam {command}: error: argument "):
        assert len(lines) == 1, err  # argparse prints its usage first
    assert lines[-1].startswith(f"captum-fgcam {command}: error: "), err
    assert _snapshot(Path.cwd(), *also) == before, "something was written"
    return lines[-1]


def _link(link: str, target: Path) -> Path:
    Path(link).symlink_to(target.resolve())
    return Path(link)


# -- files -------------------------------------------------------------------------------

CHECKPOINT = ["--model", "model.pt", "--arch", "resnet18"]
DOG = "img/dog.png"


def _hard(name: str, target: str) -> str:
    os.link(target, name)
    return name


@pytest.mark.parametrize("case", [
    "checkpoint relative", "checkpoint absolute", "checkpoint ./ and ..", "checkpoint symlink",
    "checkpoint hard link", "image", "image ./", "image through a folder symlink",
    "image hard link", "second image's name", "zoo weights symlink", "cached weights symlink",
    "maps symlink to figure", "maps hard link of figure", "out in the image folder",
    "maps in a subfolder of the image folder", "out is a folder",
    "benchmark out is --root", "benchmark out inside --root", "benchmark out is --boxes",
    "benchmark out symlink to --root", "benchmark out holds a link to the zoo weights",
])
def test_no_output_is_an_input_or_another_output(place, capsys, case):
    here = place
    command, expected = "explain", []
    if case.startswith("checkpoint"):
        maps = {"checkpoint relative": "model.pt",
                "checkpoint absolute": str(here / "model.pt"),
                "checkpoint ./ and ..": "./img/../model.pt"}.get(case)
        if case == "checkpoint symlink":
            maps = _link("link.pt", here / "model.pt")
        elif case == "checkpoint hard link":
            maps = _hard("hard.pt", "model.pt")
        args = [DOG, *CHECKPOINT, "--maps", maps]
        expected = [f"--maps {Path(maps)} is the checkpoint --model reads (model.pt)"]
    elif case.startswith("image"):
        out = {"image": DOG, "image ./": "./img/dog.png"}.get(case)
        if case == "image through a folder symlink":
            out = str(_link("pictures", here / "img") / "dog.png")
        elif case == "image hard link":
            out = _hard("copy.png", DOG)
        args = [DOG, "--model", "resnet18", "--out", out]
        expected = [f"--out {Path(out)} is the image (img/dog.png)"]
    elif case == "second image's name":  # two images: explain-dog.png is the second input
        (here / "explain-dog.png").write_bytes((here / DOG).read_bytes())
        args = [DOG, "explain-dog.png", "--model", "resnet18"]
        expected = ["--out explain-dog.png is the image (explain-dog.png)"]
    elif case == "zoo weights symlink":
        _link("zoo.pt", ZOO_WEIGHTS)
        args = [DOG, "--model", "scenes-vgg16bn", "--maps", "zoo.pt"]
        expected = [f"--maps zoo.pt is the weights file of --model scenes-vgg16bn "
                    f"({ZOO_WEIGHTS})"]
    elif case == "cached weights symlink":
        cached = weights_file(torchvision.models.ResNet18_Weights.DEFAULT)
        _link("cached.pt", cached)
        args = [DOG, "--model", "resnet18", "--weights", "DEFAULT", "--maps", "cached.pt"]
        expected = [f"--maps cached.pt is the weights file --weights reads ({cached})"]
    elif case.startswith("maps"):
        if case == "maps symlink to figure":
            (here / "maps.npz").write_bytes(b"earlier maps")
            _link("fig.png", here / "maps.npz")
            args = [DOG, "--model", "resnet18", "--out", "fig.png", "--maps", "maps.npz"]
            expected = ["--out fig.png and --maps maps.npz are the same file"]
        elif case == "maps hard link of figure":
            (here / "fig.png").write_bytes(b"earlier figure")
            _hard("maps.npz", "fig.png")
            args = [DOG, "--model", "resnet18", "--out", "fig.png", "--maps", "maps.npz"]
            expected = ["--out fig.png and --maps maps.npz are the same file"]
        else:
            (here / "img" / "sub").mkdir()
            args = ["img", "--model", "resnet18", "--out", "fig.png", "--maps",
                    "./img/sub/../sub/maps.npz"]
            expected = ["--maps img/sub/../sub/maps.npz is inside the image folder img"]
    elif case == "out in the image folder":
        args = ["img", "--model", "resnet18", "--out", "img/fig.png"]
        expected = ["--out img/fig-cat.png is inside the image folder img", "outside img"]
    elif case == "out is a folder":
        (here / "fig.png").mkdir()
        args = [DOG, "--model", "resnet18", "--out", "fig.png"]
        expected = ["--out fig.png is a folder"]
    else:
        command = "benchmark"
        imagenet = ["--data", "imagenet", "--root", "val", "--boxes", "boxes", "--model",
                    "squeezenet1_1", "--weights", "none", "--images", "1", "--methods",
                    "Grad-CAM", "--layers", "features.12", "--steps", "2"]
        out = {"benchmark out is --root": "val", "benchmark out inside --root": "val/results",
               "benchmark out is --boxes": "./boxes"}.get(case)
        if case == "benchmark out symlink to --root":
            out = str(_link("results", here / "val"))
        if case == "benchmark out holds a link to the zoo weights":
            (here / "results").mkdir()
            _link("results/results.png", ZOO_WEIGHTS)
            args = ["--images", "1", "--methods", "Grad-CAM", "--layers", "features.13",
                    "--steps", "2", "--out", "results"]
            expected = ["--out results/results.png is the weights file of --model "
                        "scenes-vgg16bn"]
        else:
            args = [*imagenet, "--out", out]
            where = "is inside" if case == "benchmark out inside --root" else "is"
            folder = "--boxes folder boxes" if "boxes" in case else "--root folder val"
            expected = [f"--out {Path(out)} {where} the {folder}, which the command reads"]
    line = _refused(command, args, capsys, ZOO_WEIGHTS)
    for text in expected:
        assert text in line, line


def test_names_that_differ_in_case_only_are_one_file_where_the_folder_ignores_case(
        tmp_path, monkeypatch):
    """Case-insensitivity is looked up per folder: here (a case-sensitive file system, as
    the lookup finds) Fig.png and fig.png are two files; where the lookup finds a folder
    that ignores case they are one, also for a file that does not exist yet."""
    (tmp_path / "Some.txt").write_text("x")
    sensitive = not (tmp_path / "sOME.TXT").exists()
    assert _CaseProbe._probe(tmp_path) is (not sensitive)
    outputs = [("--out", tmp_path / "Fig.png"), ("--maps", tmp_path / "fig.png")]
    if sensitive:
        check_outputs(outputs)
    monkeypatch.setattr(_CaseProbe, "_probe", staticmethod(lambda folder: True))
    with pytest.raises(OutputError, match="--out .*Fig.png and --maps .*fig.png are the same"):
        check_outputs(outputs)
    with pytest.raises(OutputError, match="is the image"):
        check_outputs([("--out", tmp_path / "new" / "A.png")],
                      [("the image", tmp_path / "new" / "a.png")])


# -- options -----------------------------------------------------------------------------

SCENES = ["--images", "1", "--methods", "Grad-CAM", "--layers", "features.13", "--steps", "2"]
IMAGENET = ["--data", "imagenet", "--root", "val", "--boxes", "boxes", "--model",
            "squeezenet1_1", "--weights", "none", "--images", "1", "--methods", "Grad-CAM",
            "--layers", "features.12", "--steps", "2"]


@pytest.mark.parametrize("command, args, expected", [
    # explain: one case per option (--denoise, --bare, --no-progress are flags)
    ("explain", [DOG, "broken.png", "--model", "resnet18", "--batch-size", "1"],
     ["cannot read image broken.png"]),
    ("explain", [DOG, "--model", "resnet19"], ["unknown model 'resnet19'"]),
    ("explain", [DOG, "--model", "resnet18", "--weights", "IMAGENET9K"],
     ["unknown weights 'IMAGENET9K'"]),
    ("explain", [DOG, "--model", "resnet18", "--arch", "resnet18"], ["--arch applies to"]),
    ("explain", [DOG, "--model", "scenes-vgg16bn", "--target", "-1"], ["--target -1"]),
    ("explain", [DOG, "--model", "scenes-vgg16bn", "--target", "7"],
     ["class index 7 is out of range", "--target 0 to"]),
    ("explain", [DOG, "--model", "scenes-vgg16bn", "--layer", "features.99"],
     ["unknown layer 'features.99'"]),
    ("explain", [DOG, "--model", "resnet18", "--method", "fg-gradcam-plus"],
     ["unknown method 'fg-gradcam-plus'"]),
    ("explain", [DOG, "--model", "resnet18", "--rules", "bogus"],
     ["argument --rules: invalid choice: 'bogus'"]),
    ("explain", [DOG, "--model", "resnet18", "--sign", "negative"], ["argument --sign"]),
    ("explain", [DOG, "--model", "resnet18", "--upsample", "cubic"], ["argument --upsample"]),
    ("explain", [DOG, "--model", "resnet18", "--scale", "layer"], ["argument --scale"]),
    ("explain", [DOG, "--model", "resnet18", "--dpi", "1"], ["--dpi 1: give 10 or more"]),
    ("explain", [DOG, "--model", "resnet18", "--dpi", "nan"], ["--dpi nan"]),
    ("explain", [DOG, "--model", "resnet18", "--dpi", "20000"],
     ["--dpi 20000 and --cell 2", "at most 65535 a side"]),
    ("explain", [DOG, "--model", "resnet18", "--cell", "0"], ["--cell 0"]),
    ("explain", [DOG, "--model", "scenes-vgg16bn", "--size", "8"],
     ["--size 8: scenes-vgg16bn cannot run on 8 x 8 images", "pass --size 32"]),
    ("explain", ["img", "--model", "resnet18", "--ext", ","], ["--ext ','"]),
    ("explain", [DOG, "--model", "resnet18", "--batch-size", "0"], ["--batch-size 0"]),
    ("explain", [DOG, "--model", "resnet18", "--device", "meta"], ["--device meta"]),
    ("explain", [DOG, "--model", "resnet18", "--seed", str(2**64)], [f"--seed {2**64}"]),
    ("explain", [DOG, "--model", "resnet18", "--out", "fig.xyz"], ["--out fig.xyz"]),
    ("explain", [DOG, "--model", "resnet18", "--maps", "maps.txt"], ["--maps maps.txt"]),
    ("explain", [DOG, "--model", "resnet18", "--out", "missing/fig.png"],
     ["folder", "missing does not exist"]),
    # benchmark: one case per option (--logits, --quick, --no-progress are flags)
    ("benchmark", ["--data", "cifar"], ["argument --data"]),
    ("benchmark", ["--model", "resnet18"], ["--model resnet18 is not a zoo model"]),
    ("benchmark", [*SCENES, "--weights", "DEFAULT"], ["--weights applies to --data imagenet"]),
    ("benchmark", [*SCENES, "--root", "val"], ["--root applies to --data imagenet"]),
    ("benchmark", [*SCENES, "--boxes", "boxes"], ["--boxes applies to --data imagenet"]),
    ("benchmark", [*SCENES, "--size", "64"], ["--size applies to --data imagenet"]),
    ("benchmark", [*IMAGENET, "--size", "8"],
     ["--size 8: squeezenet1_1 cannot run on 8 x 8 images", "pass --size 17"]),
    ("benchmark", [*IMAGENET, "--weights", "IMAGENET9K"], ["unknown weights 'IMAGENET9K'"]),
    ("benchmark", [*IMAGENET, "--boxes", "img"], ["cannot use", "no box annotation"]),
    ("benchmark", [*IMAGENET, "--root", "missing"], ["--root missing is not a directory"]),
    ("benchmark", [*SCENES, "--images", "0"], ["--images 0"]),
    ("benchmark", [*SCENES, "--methods", "fg-grad-kam"], ["unknown method 'fg-grad-kam'"]),
    ("benchmark", [*SCENES, "--layers", "features.99"], ["--layers features.99"]),
    ("benchmark", [*SCENES, "--methods", "LRP"], ["--methods LRP is compared at the input"]),
    ("benchmark", [*SCENES, "--batch-size", "0"], ["--batch-size 0"]),
    ("benchmark", [*SCENES, "--metric-batch-size", "0"], ["--metric-batch-size 0"]),
    ("benchmark", [*SCENES[:-2], "--pixels-per-step", "0"], ["--pixels-per-step 0"]),
    ("benchmark", [*SCENES, "--steps", "0"], ["--steps 0"]),
    ("benchmark", [*SCENES, "--pixels-per-step", "4"], ["give one of them"]),
    ("benchmark", [*SCENES, "--blur", "50", "5"], ["--blur 50 5", "odd integer"]),
    ("benchmark", [*SCENES, "--blur", "51.5", "5"], ["--blur 51.5 5"]),
    ("benchmark", [*SCENES, "--blur", "51", "0"], ["--blur 51 0", "sigma"]),
    ("benchmark", [*SCENES, "--device", "meta"], ["--device meta"]),
    ("benchmark", [*SCENES, "--out", "img/dog.png"], ["--out img/dog.png is a file"]),
    ("benchmark", [*SCENES, "--seed", "-1"], ["--seed -1"]),
    ("benchmark", [*IMAGENET, "--seed", "1"], ["--seed applies to --data scenes"]),
    ("benchmark", [*IMAGENET, "--style", "held-out"], ["--style applies to --data scenes"]),
    ("benchmark", [*SCENES, "--rules", "bogus"], ["argument --rules"]),
])
def test_every_option_is_checked_before_any_work(place, capsys, command, args, expected):
    (place / "broken.png").write_bytes(b"not an image")
    line = _refused(command, args, capsys)
    for text in expected:
        assert text in line, line
