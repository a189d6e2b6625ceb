"""`make demo` end to end: the figure is written, conservation and metrics are printed."""

from __future__ import annotations

import re

import matplotlib.image
import pytest

from captum_fgcam import demo, zoo


def test_demo_writes_a_legible_figure_and_prints_conservation_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo.png"
    demo.main(["--out", str(out), "--images", "2"])
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 1200 and image.shape[1] > 1200  # 8 rows x 6 columns, legible
    printed = capsys.readouterr().out
    ratios = [float(r) for r in re.findall(r"^\s+(?:features|input)\S*.*?(\d\.\d{6})$",
                                           printed, flags=re.M)]
    assert len(ratios) == 5 and all(abs(r - 1) < 1e-4 for r in ratios), printed
    rows = [line.split() for line in printed.splitlines()
            if line.strip().startswith(("FG-", "LRP", "Grad-CAM", "Score-CAM", "Layer-CAM"))]
    assert len(rows) == 12  # 7 methods at features.13, 5 at the input
    for row in rows:
        ad, ai, overall, proportion = map(float, row[-4:])
        assert 0 <= ad <= 100 and 0 <= ai <= 100 and -1 <= overall <= 1 and 0 <= proportion <= 1


@pytest.mark.parametrize("args, message", [
    (["--index", "-1"], "--index -1"),
    (["--images", "0"], "--images 0"),
    (["--out", "demo.xyz"], "--out demo.xyz: use a figure file name"),
    (["--out", "weights.png"], "--out weights.png is the weights file of scenes-vgg16bn"),
])
def test_demo_checks_its_options_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.png").symlink_to(zoo.checkpoint_path(demo.MODEL))
    with pytest.raises(SystemExit) as exit_:
        demo.main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["weights.png"]
    assert (tmp_path / "weights.png").is_symlink()
