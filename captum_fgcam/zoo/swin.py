r"""A small hierarchical vision transformer in Swin's layout, sized for 96 x 96 ``Scenes``.

Tokens live channels-last (N x H x W x C) as in torchvision's and timm's Swin. A convolutional
stem (two 3 x 3 convolutions of stride 2) embeds 4 x 4 patches; three stages of two Swin blocks
follow, 24 x 24 -> 12 x 12 -> 6 x 6 tokens with patch merging between them. A block is

    x = x + W-MSA(LN(x)),  x = x + MLP(LN(x)),

W-MSA being multi-head self-attention inside non-overlapping 6 x 6 windows, with a learned
relative position bias B, and every second block shifting the windows by 3 tokens (``roll``,
with the usual mask so that tokens from opposite edges do not attend to each other):

    Attention(Q, K, V) = softmax(Q K^T / \sqrt{d} + B + M) V .

The attention is written out (``matmul``, ``softmax``) rather than fused, like Swin's reference
code; the head averages the final tokens (``mean``) into a linear classifier.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def window_partition(x: Tensor, size: int) -> Tensor:
    """N x H x W x C -> (N * windows) x size^2 x C."""
    n, h, w, c = x.shape
    x = x.view(n, h // size, size, w // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, c)


def window_merge(windows: Tensor, size: int, h: int, w: int) -> Tensor:
    """The inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, h // size, w // size, size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _relative_index(size: int) -> Tensor:
    """For each pair of positions in a window, the index of their offset in the bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"))
    offsets = (coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :]) + size - 1
    return offsets[0] * (2 * size - 1) + offsets[1]


def _shift_mask(h: int, w: int, size: int, shift: int) -> Tensor:
    """-100 where two tokens of a shifted window come from different regions, 0 elsewhere."""
    region = torch.zeros(h, w)
    bounds = (slice(0, -size), slice(-size, -shift), slice(-shift, None))
    for k, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
        region[rows, cols] = k
    labels = window_partition(region[None, :, :, None], size).squeeze(-1)
    return (labels[:, :, None] != labels[:, None, :]).float() * -100.0


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a relative position bias."""

    def __init__(self, dim: int, heads: int, size: int) -> None:
        super().__init__()
        self.heads, self.size = heads, size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * size - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("index", _relative_index(size), persistent=False)

    def forward(self, windows: Tensor, mask: Tensor | None) -> Tensor:
        b, t, c = windows.shape
        q, k, v = self.qkv(windows).view(b, t, 3, self.heads, c // self.heads).permute(
            2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5
        scores = scores + self.bias_table[self.index].permute(2, 0, 1)
        if mask is not None:  # one mask per window position, the same for every image
            scores = scores.view(-1, mask.shape[0], self.heads, t, t) + mask[:, None]
            scores = scores.view(b, self.heads, t, t)
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class SwinBlock(nn.Module):
    """x + W-MSA(LN(x)), then x + MLP(LN(x)); windows shifted by ``shift`` tokens."""

    def __init__(self, dim: int, heads: int, size: int, shift: int, resolution: int) -> None:
        super().__init__()
        self.size, self.shift = size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        mask = _shift_mask(resolution, resolution, size, shift) if shift else None
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, h, w, c = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = window_merge(self.attn(window_partition(y, self.size), self.mask), self.size, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Each 2 x 2 neighbourhood of tokens -> one token: concatenate, LayerNorm, linear map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x))


class ScenesSwin(nn.Module):
    """Stem (96 -> 24 x 24 tokens) -> ``stages.0`` -> ``merges.0`` -> ``stages.1`` ->
    ``merges.1`` -> ``stages.2`` -> ``norm`` -> token mean -> ``head``."""

    def __init__(self, num_classes: int = 6, dims: tuple[int, ...] = (32, 64, 128),
                 heads: tuple[int, ...] = (2, 4, 8), size: int = 96, window: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, dims[0] // 2, 3, stride=2, padding=1), nn.BatchNorm2d(dims[0] // 2),
            nn.GELU(), nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1))
        self.embed_norm = nn.LayerNorm(dims[0])
        resolution = size // 4
        stages, merges = [], []
        for k, (dim, head) in enumerate(zip(dims, heads, strict=True)):
            shift = window // 2 if resolution > window else 0
            stages.append(nn.Sequential(SwinBlock(dim, head, window, 0, resolution),
                                        SwinBlock(dim, head, window, shift, resolution)))
            if k + 1 < len(dims):
                merges.append(PatchMerging(dim))
                resolution //= 2
        self.stages = nn.ModuleList(stages)
        self.merges = nn.ModuleList(merges)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed_norm(self.stem(x).permute(0, 2, 3, 1))
        for k, stage in enumerate(self.stages):
            x = stage(x)
            if k < len(self.merges):
                x = self.merges[k](x)
        return self.head(self.norm(x).mean(dim=(1, 2)))


def scenes_swin(num_classes: int = 6) -> ScenesSwin:
    """The zoo's transformer: :class:`ScenesSwin` for 96 px scenes and six classes."""
    return ScenesSwin(num_classes)

