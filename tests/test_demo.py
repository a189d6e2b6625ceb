"""`make demo` end to end: the figure is written and conservation is printed."""

from __future__ import annotations

import sys

import matplotlib.image

from captum_fgcam import demo


def test_demo_writes_a_figure(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo.png"
    monkeypatch.setattr(sys, "argv", ["demo", "--out", str(out)])
    demo.main()
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 500 and image.shape[1] > 1000  # legible at its default size
    printed = capsys.readouterr().out
    assert printed.count("1.000000") == 5  # the map sums to the components at every layer
