"""Figures in the paper's style: maps over the image, rows = methods, columns = layers.

Maps at any layer are upsampled to the image (nearest-neighbour by default, so a coarse map
stays visibly coarse; bilinear on request) and drawn over a grey copy of the image with a
perceptually uniform colour map ("inferno" for positive relevance, the diverging "RdBu_r"
centred on 0 for signed relevance), the overlay's opacity growing with |relevance| so that
zero relevance shows the image. :func:`to_image_map` returns the H x W x 1 arrays Captum's
``visualize_image_attr`` takes, so every map here also works with Captum's own views
(:func:`plot_views`).

Two scales:

* ``scale="map"``: each map relative to its own scale s = the |value| below which 98 % of
  the map's absolute mass lies (Captum's ``outlier_perc=2``), clipped to [0, 1] or [-1, 1];
* ``scale="method"``: relevance per image pixel, d_p = R_cell / (pixels per cell), with one
  colour scale per row (per method); every panel shows the map's signed total sum R, so
  that FG-CAM's conservation (the same total at every layer) is visible. Rows named in
  ``scores`` hold normalised scores, not relevance (RefineCAM, multi-scale FG-CAM: [0, 1] per
  map); they keep each map's own scale, under a colour bar of their own, without a total.

Panels have fixed sizes: colour bars live in their own column; labels are wrapped to the
panel width and laid out by matplotlib's constrained layout, so they neither overlap nor
clip at any grid size. A panel is ``cell`` inches wide (default: the map resolution, 1 image
pixel per figure pixel at ``dpi``, within 2 to 6 inches).
"""

from __future__ import annotations

import contextlib
import textwrap
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import visualization as viz
from matplotlib import colors, patches
from matplotlib.cm import ScalarMappable
from torch import Tensor

UPSAMPLING = ("nearest", "bilinear")
SCALES = ("map", "method")
SIGNS = ("positive", "all")
CMAPS = {"positive": "inferno", "all": "RdBu_r"}
DPI = 100
OUTLIER_PERCENT = 2.0  # Captum's default outlier_perc


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


def map_scale(values: np.ndarray, outlier_percent: float = OUTLIER_PERCENT) -> float:
    """s such that the |values| above s hold ``outlier_percent`` % of sum |values| (Captum's
    cumulative-sum threshold); 0 for an all-zero map."""
    flat = np.sort(np.abs(values).ravel())
    total = flat.sum()
    if total == 0:
        return 0.0
    index = np.searchsorted(np.cumsum(flat), total * (100 - outlier_percent) / 100)
    return float(flat[min(index, flat.size - 1)])


def _density(attr: Tensor, size: tuple[int, int], mode: str) -> np.ndarray:
    """Relevance per image pixel: the upsampled map divided by the pixels per map cell."""
    h, w = attr.shape[-2:]
    return to_image_map(attr, size, mode)[..., 0] * (h * w) / (size[0] * size[1])


def _overlay(ax: plt.Axes, grey: np.ndarray, values: np.ndarray, norm: colors.Normalize,
             cmap: colors.Colormap, blended: bool) -> None:
    """``values`` in colour over the grey image, opacity growing with |normalised value|."""
    rgba = cmap(norm(values))
    if blended:
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        centre = norm(0.0) if norm.vmin < 0 else 0.0
        strength = np.clip(np.abs(norm(values) - centre) / max(centre, 1 - centre), 0, 1)
        rgba[..., 3] = 0.9 * np.sqrt(strength)
    ax.imshow(rgba, interpolation="nearest")


def _explained(ax: plt.Axes, region: np.ndarray | None, box: Sequence[float] | None) -> None:
    """The explained region's outline and box, in cyan (a colour no colour map here uses)."""
    if region is not None and region.any() and not region.all():
        ax.contour(region.astype(float), levels=[0.5], colors="cyan", linewidths=1.0)
    if box is not None:
        x1, y1, x2, y2 = box
        ax.add_patch(patches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                       edgecolor="cyan", linewidth=1.2))


def _cell_inches(size: tuple[int, int], cell: float | None, dpi: float) -> float:
    return cell if cell is not None else float(np.clip(max(size) / dpi, 2.0, 6.0))


@contextlib.contextmanager
def _quiet_normalisation() -> Iterator[None]:
    # Captum warns when the largest value is below 1e-5 in absolute terms; maps of small
    # logits are legitimately that small, and are max-scaled.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attempting to normalize")
        yield


def plot_grid(image: np.ndarray, maps: Mapping[str, Mapping[str, Tensor]],
              sign: str = "positive", title: str | None = None, cell: float | None = None,
              method: str = "blended_heat_map", mode: str = "nearest", scale: str = "map",
              dpi: float = DPI, cmap: str | None = None,
              scores: Collection[str] = (), region: np.ndarray | None = None,
              box: Sequence[float] | None = None) -> plt.Figure:
    """Rows = methods, columns = layers; the image once, top left.

    ``maps[method][layer]`` is a map at that layer (a missing entry leaves its cell empty,
    marked "no map here"); ``sign``: "positive" (the ReLU'd map) or "all" (signed);
    ``method``: "blended_heat_map" (the map over the image, default) or "heat_map" (bare
    maps), as in Captum; ``mode``: upsampling, as in :func:`to_image_map`; ``scale``: "map"
    or "method" (module docstring); ``cell``: panel width in inches (default: from the
    image size and ``dpi``); ``cmap``: a matplotlib colour map name; ``scores``: rows of
    normalised scores (module docstring); ``region`` (H x W boolean) is outlined and ``box``
    (x1, y1, x2, y2 in pixels) drawn on the image and every map: what was explained.
    """
    _check_choices(sign, scale, method)
    rows = list(maps)
    cols = list(dict.fromkeys(c for r in rows for c in maps[r]))
    size = tuple(image.shape[:2])
    colour_map = plt.get_cmap(cmap or CMAPS[sign])
    own = {row for row in rows if scale == "map" or row in scores}  # each map on its own scale
    values = _panel_values(maps, cols, size, mode, sign, own)
    norms = _norms(values, rows, own, sign)
    inches = _cell_inches(size, cell, dpi)
    font = 9 * max(1.0, inches / 2.5)  # points; grows with large panels
    label_width = max(8, int(inches * 100 / font))  # characters per line
    fig = plt.figure(figsize=(inches * (len(cols) + 1) + 0.9, inches * len(rows) + 0.9),
                     dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(len(rows), len(cols) + 2,
                            width_ratios=[1.0] * (len(cols) + 1) + [0.06])
    grey = image.mean(axis=2) if image.ndim == 3 else image
    for i, row in enumerate(rows):
        _image_panel(fig.add_subplot(grid[i, 0]), image if i == 0 else None, font)
        if i == 0:
            _explained(fig.axes[-1], region, box)
        for j, col in enumerate(cols):
            ax = fig.add_subplot(grid[i, j + 1])
            _label(ax, col if i == 0 else None, row if j == 0 else None, label_width, font)
            if (row, col) not in values:
                ax.imshow(np.ones(size), cmap="gray", vmin=0, vmax=1)
                ax.text(0.5, 0.5, "no map here", transform=ax.transAxes, fontsize=font * 0.9,
                        ha="center", va="center", color="0.4")
                continue
            _overlay(ax, grey, values[row, col], norms[row], colour_map,
                     method == "blended_heat_map")
            _explained(ax, region, box)
            if row not in own:
                _total(ax, maps[row][col], font)
    _colour_bars(fig, grid, rows, norms, colour_map, scale, own, font * 0.8)
    if title:
        fig.suptitle(textwrap.fill(title, label_width * (len(cols) + 1)), fontsize=font * 1.1)
    return fig


def _check_choices(sign: str, scale: str, method: str) -> None:
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}; got {sign!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    if method not in ("blended_heat_map", "heat_map"):
        raise ValueError(f"method must be 'blended_heat_map' or 'heat_map'; got {method!r}")


def _panel_values(maps: Mapping[str, Mapping[str, Tensor]], cols: Sequence[str],
                  size: tuple[int, int], mode: str, sign: str,
                  own: Collection[str]) -> dict[tuple[str, str], np.ndarray]:
    """Each map at the image size: divided by its own scale (rows in ``own``), else as
    relevance per pixel; ReLU'd for ``sign="positive"``."""
    values = {(row, col): (to_image_map(maps[row][col], size, mode)[..., 0] if row in own
                           else _density(maps[row][col], size, mode))
              for row in maps for col in cols if col in maps[row]}
    if sign == "positive":
        values = {key: np.maximum(v, 0) for key, v in values.items()}
    return {key: v / s if key[0] in own and (s := map_scale(v)) > 0 else v
            for key, v in values.items()}


def _image_panel(ax: plt.Axes, image: np.ndarray | None, font: float) -> None:
    """The image (first row), or nothing (the other rows)."""
    ax.set_axis_off()
    if image is not None:
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("image", fontsize=font)


def _label(ax: plt.Axes, column: str | None, row: str | None, width: int, font: float) -> None:
    """A map panel without ticks, titled with its column (first row) and row (first column)."""
    ax.set_xticks([])
    ax.set_yticks([])
    if column is not None:
        ax.set_title(textwrap.fill(column, width), fontsize=font)
    if row is not None:
        ax.set_ylabel(textwrap.fill(row, width), fontsize=font, fontweight="bold")


def _total(ax: plt.Axes, m: Tensor, font: float) -> None:
    """The map's signed total (conserved by FG-CAM) in the panel's corner."""
    total = float(m.sum())
    if abs(total) < 1e-6 * float(m.abs().sum()):
        total = 0.0  # round-off of a zero-sum map (denoised FG-CAM)
    ax.text(0.03, 0.03, f"ΣR = {total:.3g}", transform=ax.transAxes, fontsize=font * 0.8,
            va="bottom", bbox={"facecolor": "white", "alpha": 0.8, "pad": 1.5,
                               "edgecolor": "none"})


def _norms(values: Mapping[tuple[str, str], np.ndarray], rows: Sequence[str],
           own: Collection[str], sign: str) -> dict[str, colors.Normalize]:
    """One normalisation per row: [0, 1] or [-1, 1] for maps already divided by their own
    scale (rows in ``own``), else the joint scale of the row's maps."""
    norms = {}
    for row in rows:
        row_values = [v for (r, _), v in values.items() if r == row]
        if row in own:
            vmax = 1.0
        else:
            joint = np.concatenate([v.ravel() for v in row_values]) if row_values else [0.0]
            vmax = map_scale(np.asarray(joint)) or 1.0
        norms[row] = (colors.Normalize(0.0, vmax, clip=True) if sign == "positive"
                      else colors.Normalize(-vmax, vmax, clip=True))
    return norms


def _colour_bars(fig: plt.Figure, grid: matplotlib.gridspec.GridSpec, rows: Sequence[str],
                 norms: Mapping[str, colors.Normalize], cmap: colors.Colormap,
                 scale: str, own: Collection[str], font: float) -> None:
    """Colour bars in their own column: one for the figure (scale "map"), one per row."""
    spans = [(slice(None), rows[0])] if scale == "map" else [(i, r) for i, r in enumerate(rows)]
    for where, row in spans:
        label = ("relevance / map scale" if scale == "map" else "score / map scale"
                 if row in own else "relevance per pixel")
        ax = fig.add_subplot(grid[where, -1])
        bar = fig.colorbar(ScalarMappable(norm=norms[row], cmap=cmap), cax=ax)
        bar.ax.tick_params(labelsize=font)
        low, high = norms[row].vmin, norms[row].vmax
        ticks = matplotlib.ticker.MaxNLocator(nbins=4, symmetric=low < 0).tick_values(low, high)
        bar.set_ticks([t for t in ticks if low <= t <= high])
        bar.formatter = matplotlib.ticker.FormatStrFormatter("%.2g")
        bar.set_label(label, fontsize=font)


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
