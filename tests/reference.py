"""An independent, straightforward implementation of FG-CAM (spec section 2) for VGG.

Written for the tests only, as a plain loop over ``model.features``, with explicit
convolution / transposed-convolution arithmetic and index scattering: none of the package's
tracing, rules or autograd tricks are used, so agreement means the engine is right.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _div(num: Tensor, den: Tensor) -> Tensor:
    out = torch.zeros_like(num)
    nz = den != 0
    out[nz] = num[nz] / den[nz]
    return out


def _conv_t(s: Tensor, conv: nn.Conv2d, weight: Tensor, in_shape: torch.Size) -> Tensor:
    """sum_j w_ij s_j, i.e. the transposed convolution, sized to the input."""
    out = F.conv_transpose2d(s, weight, stride=conv.stride, padding=conv.padding,
                             dilation=conv.dilation)
    pad_h = in_shape[2] - out.shape[2]
    pad_w = in_shape[3] - out.shape[3]
    return F.pad(out, (0, pad_w, 0, pad_h))


def zplus(conv: nn.Conv2d, x: Tensor, r: Tensor) -> Tensor:
    w = conv.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    z = F.conv2d(xp, wp, **kw) + F.conv2d(xn, wn, **kw)
    s = _div(r, z)
    return xp * _conv_t(s, conv, wp, x.shape) + xn * _conv_t(s, conv, wn, x.shape)


def zbox(conv: nn.Conv2d, x: Tensor, r: Tensor) -> Tensor:
    w = conv.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    n = x.shape[0]
    low = x.reshape(n, -1).min(dim=1).values.reshape(n, 1, 1, 1) * torch.ones_like(x)
    high = x.reshape(n, -1).max(dim=1).values.reshape(n, 1, 1, 1) * torch.ones_like(x)
    kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    z = F.conv2d(x, w, **kw) - F.conv2d(low, wp, **kw) - F.conv2d(high, wn, **kw)
    s = _div(r, z)
    return (x * _conv_t(s, conv, w, x.shape) - low * _conv_t(s, conv, wp, x.shape)
            - high * _conv_t(s, conv, wn, x.shape))


def winner_take_all(pool: nn.MaxPool2d, x: Tensor, r: Tensor) -> Tensor:
    out, idx = F.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                            pool.ceil_mode, return_indices=True)
    r = torch.where(out == 0, torch.zeros_like(r), r)
    flat = torch.zeros(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], dtype=r.dtype)
    flat.scatter_add_(2, idx.reshape(*idx.shape[:2], -1), r.reshape(*r.shape[:2], -1))
    return flat.reshape(x.shape)


def features_forward(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Inputs of every module in ``features`` plus the final output: acts[i] = input of i."""
    acts = [x]
    with torch.no_grad():
        for module in model.features:
            acts.append(module(acts[-1].clone()))
    return acts


def grad_cam_components(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    a = features_forward(model, x)[-1].detach().requires_grad_(True)
    logits = model.classifier(torch.flatten(model.avgpool(a), 1))
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    return g.mean(dim=(2, 3), keepdim=True) * a.detach()


def score_cam_components(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    a = features_forward(model, x)[-1]
    n, c = a.shape[:2]
    weights = torch.zeros(n, c)
    with torch.no_grad():
        for i in range(n):
            up = F.interpolate(a[i:i + 1], size=x.shape[2:], mode="bilinear",
                               align_corners=False)[0]
            for k in range(c):
                m = up[k]
                lo, hi = m.min(), m.max()
                rng = hi - lo + (1e-9 if hi == 0 else 0.0)
                constant = a[i, k].max() == a[i, k].min()
                mask = torch.zeros_like(m) if constant else (m - lo) / rng
                weights[i, k] = model(x[i:i + 1] * mask)[0].softmax(0)[target[i]]
    return weights[:, :, None, None] * a


def denoise(e: Tensor, d: int) -> Tensor:
    out = np.zeros(e.shape, dtype=np.float64)
    for i in range(e.shape[0]):
        m = e[i].reshape(e.shape[1], -1).double().numpy()
        m = m - m.mean(axis=1, keepdims=True)
        u, s, vh = np.linalg.svd(m, full_matrices=False)
        out[i] = (u[:, :d] @ np.diag(s[:d]) @ vh[:d]).reshape(e.shape[1:])
    return torch.from_numpy(out).float()


def fg_cam(model: nn.Module, x: Tensor, components: Tensor, stop: int) -> Tensor:
    """Propagate components from the output of features[-1] to the input of features[stop]
    (stop = len(features) returns the components themselves). Returns N x C' x H x W."""
    acts = features_forward(model, x)
    r = components
    for i in range(len(model.features) - 1, stop - 1, -1):
        module, inp = model.features[i], acts[i]
        if isinstance(module, nn.Conv2d):
            r = zbox(module, inp, r) if i == 0 else zplus(module, inp, r)
        elif isinstance(module, nn.MaxPool2d):
            r = winner_take_all(module, inp, r)
        elif isinstance(module, (nn.ReLU, nn.BatchNorm2d, nn.Dropout)):
            pass
        else:
            raise TypeError(type(module))
    return r
