r"""FG-CAM with denoising: a low-rank approximation of the components at the CAM layer.

Per image, the components E (C x h x w) are reshaped to M (C x hw); each row's mean is
subtracted (and not added back); with M - mean = U S V^T, the top d singular triplets are kept:

    E_denoised = reshape( \sum_{k <= d} s_k u_k v_k^T ),   d = int(rank * min(C, hw)) (>= 1)

for a fractional ``rank`` (the paper's 10 %: d = 4 for VGG16 at 224 px), or d = ``rank`` for an
integer. The result is signed and zero-sum (each v_k is orthogonal to the constant vector, as
every centred row is): a denoised map's total is 0 up to round-off, at every layer, not the
class score. Computed in float64, returned in E's dtype.

``keep_mean=True`` (``denoise="keep-mean"`` in the attribution classes) adds the row means back:

    E_denoised = reshape( \bar{M} + \sum_{k <= d} s_k u_k v_k^T ),  \bar{M}_{c,t} = mean_t M_{c,t}

so the denoised components keep their total (the class score under conserving rules). This is
the variant for token grids: in a transformer's last stage every token carries the class
evidence, which lies in the row means; removing them leaves token-position noise
(docs/transformers.md#denoising).
"""

from __future__ import annotations

import torch
from torch import Tensor


def denoise_rank_count(rank: float | int, channels: int, pixels: int) -> int:
    """The number d of singular triplets kept."""
    full = min(channels, pixels)
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank <= 0:
        raise ValueError(f"denoise_rank must be a fraction in (0, 1] or a count >= 1; got {rank!r}")
    if isinstance(rank, int):
        return min(rank, full)
    if rank > 1:
        raise ValueError(f"a fractional denoise_rank must be in (0, 1]; got {rank}")
    return max(1, int(rank * full))


#: ``denoise=`` values: the paper's (True or "paper": means removed) and "keep-mean"
DENOISE_MODES = ("paper", "keep-mean")


def denoise_mode(denoise: bool | str | None) -> str | None:
    """The denoising asked for by a ``denoise=`` argument: None (off), "paper" or "keep-mean"."""
    if denoise is None or denoise is False:
        return None
    if denoise is True:
        return "paper"
    if isinstance(denoise, str) and denoise in DENOISE_MODES:
        return denoise
    raise ValueError(f"denoise must be True, False or one of {', '.join(DENOISE_MODES)}; "
                     f"got {denoise!r}")


def svd_denoise(components: Tensor, rank: float | int = 0.1, keep_mean: bool = False) -> Tensor:
    """Low-rank, row-centred version of ``components`` (N x C x h x w), one SVD per image;
    with ``keep_mean`` the row means are added back."""
    n, c = components.shape[:2]
    m = components.reshape(n, c, -1).double()
    d = denoise_rank_count(rank, c, m.shape[2])
    mean = m.mean(dim=2, keepdim=True)
    u, s, vh = torch.linalg.svd(m - mean, full_matrices=False)
    low_rank = (u[:, :, :d] * s[:, None, :d]) @ vh[:, :d, :]
    if keep_mean:
        low_rank = low_rank + mean
    return low_rank.to(components.dtype).reshape(components.shape)
