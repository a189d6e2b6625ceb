"""Figures built on Captum's ``visualize_image_attr`` (no parallel plotting stack).

Layer maps are upsampled to the image size (nearest-neighbour by default, so coarse maps stay
visibly coarse; bilinear on request) and handed to Captum as numpy H x W x 1 arrays.
"""

from __future__ import annotations

import contextlib
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures are saved, not shown  # noqa: E402

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import visualization as viz
from torch import Tensor

UPSAMPLING = ("nearest", "bilinear")


def to_image_map(attr: Tensor, size: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """One map (1 x h x w or h x w, any channels summed) as an H x W x 1 numpy array.

    ``mode``: "nearest" (each cell of a coarse map covers its block of pixels) or "bilinear".
    """
    if mode not in UPSAMPLING:
        raise ValueError(f"mode must be one of {UPSAMPLING}; got {mode!r}")
    a = attr.detach().float().cpu()
    a = a.reshape(-1, *a.shape[-2:]).sum(dim=0, keepdim=True)
    extra = {"align_corners": False} if mode == "bilinear" else {}
    a = F.interpolate(a[None], size=tuple(size), mode=mode, **extra)[0]
    return a.permute(1, 2, 0).numpy()


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised 3 x H x W image back to H x W x 3 in [0, 1]."""
    m = torch.tensor(mean).reshape(3, 1, 1)
    s = torch.tensor(std).reshape(3, 1, 1)
    return (image.detach().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


@contextlib.contextmanager
def _quiet_normalisation() -> Iterator[None]:
    # Captum warns when the largest value is below 1e-5 in absolute terms; maps of small
    # logits are legitimately that small, and are max-scaled.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attempting to normalize")
        yield


def plot_grid(image: np.ndarray, maps: Mapping[str, Mapping[str, Tensor]],
              sign: str = "positive", title: str | None = None, cell: float = 2.0,
              method: str = "heat_map", mode: str = "nearest") -> plt.Figure:
    """Rows = methods, columns = layers; each cell is Captum's view of one map.

    ``maps[method][layer]`` is a map at that layer (a missing entry leaves its cell empty);
    ``sign`` as in Captum ("positive": ReLU then max-scaling, "all": signed values);
    ``method``: Captum's "heat_map" or "blended_heat_map" (the map over the image);
    ``mode``: upsampling, as in :func:`to_image_map`. Each column's lowest map has a colour
    bar (every map is scaled to its own maximum).
    """
    rows = list(maps)
    cols = list(dict.fromkeys(c for r in rows for c in maps[r]))
    size = image.shape[:2]
    cells = {(i, col): to_image_map(maps[row][col], size, mode)
             for i, row in enumerate(rows) for col in cols if col in maps[row]}
    # a positive view of a map without positive values is drawn blank, without colour bar
    drawn = {key for key, attr in cells.items() if sign != "positive" or np.any(attr > 0)}
    lowest = {col: max((i for i, c in drawn if c == col), default=-1) for col in cols}
    fig, axes = plt.subplots(len(rows), len(cols) + 1,
                             figsize=(cell * (len(cols) + 1), cell * len(rows) + 0.8),
                             squeeze=False)
    width = max(12, int(cell * 10))  # characters per title line at font size 9
    for i, row in enumerate(rows):
        axes[i, 0].imshow(image)
        axes[i, 0].set_axis_off()
        axes[i, 0].set_title(textwrap.fill(row, width), fontsize=9, loc="left",
                             fontweight="bold")
        for j, col in enumerate(cols):
            ax = axes[i, j + 1]
            if (i, col) not in cells:
                ax.set_axis_off()
            elif (i, col) not in drawn:
                ax.imshow(image if method == "blended_heat_map" else np.ones(size), cmap="gray",
                          vmin=0, vmax=1)
                ax.text(0.5, 0.5, "no positive values", transform=ax.transAxes, fontsize=8,
                        ha="center", va="center", backgroundcolor="white")
                ax.set_axis_off()
            else:
                with _quiet_normalisation():
                    viz.visualize_image_attr(cells[i, col], image, method=method, sign=sign,
                                             plt_fig_axis=(fig, ax), use_pyplot=False,
                                             show_colorbar=i == lowest[col])
    for j, col in enumerate(cols):
        axes[0, j + 1].set_title(textwrap.fill(col, width), fontsize=9)
    if title:
        fig.suptitle(textwrap.fill(title, width * (len(cols) + 1)), fontsize=10)
    fig.tight_layout()
    return fig


def plot_views(image: np.ndarray, attr: Tensor, title: str | None = None,
               mode: str = "nearest", fig_size: tuple[float, float] = (10.0, 3.8)
               ) -> plt.Figure:
    """One map in three views (Captum's ``visualize_image_attr_multiple``): the image, the
    signed map (green positive, red negative) and its positive part over the image."""
    hwc = to_image_map(attr, image.shape[:2], mode)
    with _quiet_normalisation():
        fig, _ = viz.visualize_image_attr_multiple(
            hwc, image, ["original_image", "heat_map", "blended_heat_map"],
            ["all", "all", "positive"],
            titles=["image", "signed (green +, red -)", "positive, over the image"],
            fig_size=fig_size, use_pyplot=False, show_colorbar=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
