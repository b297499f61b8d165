"""Small 2D network blocks for the pseudo-DWI framework (Wang et al., MedIA 2020): switchable
normalisation, squeeze-and-excitation, convolution blocks and a configurable UNet.

Tensors are (B, C, y, x) image slices. Every block is a plain ``nn.Module`` so that the networks of
:mod:`pseudo_dwi_model` are compositions of them (MONAI style).

- :class:`SwitchableNorm2d` (Luo et al., ICLR 2019): the normalisation statistics are a learned softmax
  mixture of instance, layer and batch statistics (running batch statistics at evaluation time).
- :class:`SqueezeExcitation2d` (Hu et al., CVPR 2018): channel attention from globally pooled features.
- :class:`UNet2d`: encoder levels of two 3x3 convolution + normalisation + ReLU units (optionally followed by
  squeeze-and-excitation), max-pool down, bilinear up + 1x1 convolution, skip concatenation, 1x1 output.
"""
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

NORMS = ("switchable", "batch", "instance", "none")


class SwitchableNorm2d(nn.Module):
    """Switchable normalisation of (B, C, y, x): mean and variance are softmax-weighted mixtures of the
    instance (per slice and channel), layer (per slice) and batch (per channel) statistics, followed by a
    per-channel affine transform. Evaluation uses the running batch statistics."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = nn.Parameter(torch.ones(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(1, channels, 1))
        self.register_buffer("running_var", torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        mean_in = flat.mean(-1, keepdim=True)
        var_in = flat.var(-1, keepdim=True, unbiased=False)
        second = var_in + mean_in ** 2
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = second.mean(1, keepdim=True) - mean_ln ** 2
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = second.mean(0, keepdim=True) - mean_bn ** 2
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean_bn)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var_bn)
        else:
            mean_bn, var_bn = self.running_mean, self.running_var
        wm = torch.softmax(self.mean_weight, 0)
        wv = torch.softmax(self.var_weight, 0)
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        out = (flat - mean) / torch.sqrt(var.clamp_min(0) + self.eps)
        return (out * self.weight + self.bias).reshape(x.shape)


def make_norm(kind: str, channels: int, spatial_dims: int = 2) -> nn.Module:
    """'switchable' (2D), 'batch', 'instance' (affine) or 'none' (identity), for 2D or 3D feature maps."""
    if kind == "switchable" and spatial_dims == 2:
        return SwitchableNorm2d(channels)
    if kind == "batch":
        return (nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims - 2](channels)
    if kind == "instance":
        return (nn.InstanceNorm2d, nn.InstanceNorm3d)[spatial_dims - 2](channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r} for {spatial_dims}D (one of {', '.join(NORMS)})")


def conv_norm_act(spatial_dims: int, in_channels: int, out_channels: int, kernel=3, norm: str = "batch",
                  act: str = "relu", groups: int = 1) -> list:
    """The one convolution unit of every network here, as a list of layers [conv, norm, activation]:
    a 2D or 3D convolution with same padding (``kernel`` an int or one size per axis; ``groups=in_channels``
    makes it depthwise), bias only without normalisation, then ``make_norm(norm)`` and ReLU (act 'relu') or
    nothing ('none'). A list, so that blocks of several units stay one flat nn.Sequential."""
    kernel = (kernel,) * spatial_dims if isinstance(kernel, int) else tuple(kernel)
    conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2](in_channels, out_channels, kernel,
                                                    padding=tuple(k // 2 for k in kernel), groups=groups,
                                                    bias=norm == "none")
    acts = {"relu": lambda: nn.ReLU(inplace=True), "none": nn.Identity}
    return [conv, make_norm(norm, out_channels, spatial_dims), acts[act]()]


class ConvNormAct(nn.Sequential):
    """One :func:`conv_norm_act` unit (MONAI's Convolution block in spirit: dimensions, norm and
    activation are parameters)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel=3, norm: str = "batch",
                 act: str = "relu", groups: int = 1):
        super().__init__(*conv_norm_act(spatial_dims, in_channels, out_channels, kernel, norm, act, groups))


class SqueezeExcitation2d(nn.Module):
    """Channel attention: x * sigmoid(W2 relu(W1 mean_yx(x))), hidden width channels // reduction."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // int(reduction))
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class ConvBlock(nn.Sequential):
    """Two 3x3 (x3) :func:`conv_norm_act` units in one flat sequence, then squeeze-and-excitation when ``se``
    (2D only)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", se: bool = False,
                 se_reduction: int = 4, spatial_dims: int = 2):
        layers = []
        for c_in in (in_channels, out_channels):
            layers += conv_norm_act(spatial_dims, c_in, out_channels, 3, norm)
        if se:
            layers.append(SqueezeExcitation2d(out_channels, se_reduction))
        super().__init__(*layers)


class UNet2d(nn.Module):
    """UNet on (B, in_channels, y, x) -> (B, out_channels, y, x); y and x need not be powers of two.

    widths: channels per level (len(widths) - 1 poolings), e.g. (16, 32, 64)."""

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int] = (16, 32, 64),
                 norm: str = "batch", se: bool = False, se_reduction: int = 4):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError("a UNet needs at least two levels")
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(ConvBlock(c, w, norm, se, se_reduction))
            c = w
        self.up_proj = nn.ModuleList()
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up_proj.append(nn.Conv2d(c, w, 1))
            self.up.append(ConvBlock(2 * w, w, norm, se, se_reduction))
            c = w
        self.out = nn.Conv2d(c, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        for proj, block, skip in zip(self.up_proj, self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([proj(x), skip], dim=1))
        return self.out(x)


class ContextEncoder(nn.Module):
    """Phi_c: five 3x3 convolutions with ReLU and two adaptive average pools, (B, C, y, x) -> (B, dim).

    conv(s2) conv(s2) pool->16x16 conv(s2) conv conv(->dim) pool->1x1."""

    def __init__(self, in_channels: int = 1, width: int = 8, dim: int = 16):
        super().__init__()
        w = int(width)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(16),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, dim, 3, padding=1),
            nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
