"""Figures built on Captum's ``visualize_image_attr`` (no parallel plotting stack).

Layer maps are upsampled to the image size (nearest-neighbour, so coarse maps stay visibly
coarse) and handed to Captum as numpy HWC arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures are saved, not shown  # noqa: E402

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import visualization as viz
from torch import Tensor


def to_image_map(attr: Tensor, size: tuple[int, int]) -> np.ndarray:
    """One map (1 x h x w or h x w, any channels summed) as an H x W x 1 numpy array."""
    a = attr.detach().float().cpu()
    a = a.reshape(-1, *a.shape[-2:]).sum(dim=0, keepdim=True)
    a = F.interpolate(a[None], size=size, mode="nearest")[0]
    return a.permute(1, 2, 0).numpy()


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised 3 x H x W image back to H x W x 3 in [0, 1]."""
    m = torch.tensor(mean).reshape(3, 1, 1)
    s = torch.tensor(std).reshape(3, 1, 1)
    return (image.detach().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def plot_grid(image: np.ndarray, maps: Mapping[str, Mapping[str, Tensor]],
              sign: str = "positive", title: str | None = None,
              cell: float = 2.0) -> plt.Figure:
    """Rows = methods, columns = layers; each cell is Captum's heat map of one map.

    ``maps[method][layer]`` is a map at that layer; ``sign`` as in Captum ("positive" shows
    ReLU then max-scaling, "all" shows signed values).
    """
    rows = list(maps)
    cols = list(dict.fromkeys(c for r in rows for c in maps[r]))
    fig, axes = plt.subplots(len(rows), len(cols) + 1,
                             figsize=(cell * (len(cols) + 1), cell * len(rows) + 0.6),
                             squeeze=False)
    size = image.shape[:2]
    for i, row in enumerate(rows):
        axes[i, 0].imshow(image)
        axes[i, 0].set_axis_off()
        axes[i, 0].set_title(row, fontsize=9, loc="left")
        for j, col in enumerate(cols):
            ax = axes[i, j + 1]
            if col not in maps[row]:
                ax.set_axis_off()
                continue
            attr = to_image_map(maps[row][col], size)
            if not np.any(attr > 0) and sign == "positive":
                ax.imshow(np.zeros(size), cmap="Greens", vmin=0, vmax=1)
                ax.set_axis_off()
            else:
                with warnings.catch_warnings():
                    # Captum warns when the largest value is below 1e-5 in absolute terms;
                    # maps of small logits are legitimately that small, and are max-scaled.
                    warnings.filterwarnings("ignore", message="Attempting to normalize")
                    viz.visualize_image_attr(attr, image, method="heat_map", sign=sign,
                                             plt_fig_axis=(fig, ax), use_pyplot=False,
                                             show_colorbar=i == len(rows) - 1)
    for j, col in enumerate(cols):
        axes[0, j + 1].set_title(col, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
