"""X-Net (Qi et al., MICCAI 2019): chronic stroke lesion segmentation of 2D T1-weighted MRI slices; the one
network definition used by inference and training.

Tensors are (B, C, y, x) slices. The network is a UNet-like encoder-decoder of X-blocks:

- :class:`XBlock`: three depthwise-separable 3x3 convolutions (depthwise 3x3 + norm + ReLU, pointwise 1x1 +
  norm + ReLU) plus a 1x1 convolution (+ norm + ReLU) residual path, summed;
- encoder level k: 2x2 max-pool (k > 0), then a block of ``widths[k]`` channels; the deepest level is the
  bottleneck, followed by the Feature Similarity Module when ``use_fsm``;
- decoder level k: 2x upsampling, 3x3 convolution + norm + ReLU to ``widths[k]``, concatenation with the
  encoder's skip, a block of ``widths[k]`` channels; a 1x1 convolution gives ``n_classes`` logits.

:class:`FeatureSimilarityModule` (FSM): a non-local operation over every position of the bottleneck.
A 3x3 convolution reduces C0 channels to C = C0 / ``fsm_reduction`` (8 in the paper); 1x1 embeddings
query, key and value of C channels; the similarity of positions i, j is the dot product q_i . k_j divided
by the number of positions N (as in the authors' public code; no softmax), each position's output the
similarity-weighted sum of the values, projected back (1x1) and added to the reduced features; a 3x3
convolution restores C0 channels and the module input is added (residual).

Switches for the paper's comparison: ``use_fsm=False`` is "X-Net w/o FSM"; ``block='plain'`` replaces
every X-block by two 3x3 convolutions (+ norm + ReLU), the plain UNet of the same depth and widths (with
``use_fsm=False``: the UNet baseline, for the parameter count). The paper: widths 64..1024 (5 levels),
BatchNorm, 224 x 192 slices; the shipped weights use narrower widths (see MODEL_CARD_xnet.md).

The network grid (``grid_size`` x ``grid_size`` voxels of ``grid_spacing_mm``) and the intensity
normalisation are stored in the config so training and inference resample slices identically (see
:mod:`xnet_inference`).
"""
from dataclasses import asdict, dataclass
from typing import Tuple

import torch
from torch import nn
import torch.nn.functional as F

from AIFSelectorLib.models.config_json import config_from_dict

from AIFSelectorLib.models.blocks import ConvBlock, ConvNormAct

BLOCKS = ("x", "plain")


@dataclass
class XNetConfig:
    """Everything needed to rebuild a network and its input grid (stored in each checkpoint)."""

    widths: Tuple[int, ...] = (16, 32, 64, 128, 256)
    """Channels per level, shallow to deep (len(widths) - 1 poolings); the paper: 64, 128, 256, 512, 1024."""
    block: str = "x"
    """'x' (X-block) or 'plain' (two 3x3 convolutions: the plain UNet)."""
    use_fsm: bool = True
    """Feature Similarity Module at the bottleneck (False: the paper's "X-Net w/o FSM" ablation)."""
    fsm_reduction: int = 8
    """C = C0 / fsm_reduction channels inside the FSM (8 in the paper)."""
    in_channels: int = 1
    n_classes: int = 2
    """Background and lesion (softmax over classes)."""
    grid_size: int = 128
    """In-plane size (y = x voxels) of the network grid; divisible by 2**(len(widths) - 1)."""
    grid_spacing_mm: float = 1.8
    """In-plane voxel size of the network grid (mm)."""
    clip_percentiles: Tuple[float, float] = (0.5, 99.5)
    """Head intensities are clipped to these percentiles before the z-score (robust to outliers)."""
    threshold: float = 0.5
    """Lesion where the lesion probability exceeds this."""

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.clip_percentiles = tuple(float(p) for p in self.clip_percentiles)
        if len(self.widths) < 2:
            raise ValueError("X-Net needs at least two levels (widths)")
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r} (one of {', '.join(BLOCKS)})")
        if self.grid_size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"grid_size {self.grid_size} is not divisible by 2**{len(self.widths) - 1}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["clip_percentiles"] = list(self.widths), list(self.clip_percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "XNetConfig":
        return config_from_dict(cls, d)


# ----------------------------------------------------------------------------------------------------
# Blocks


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3, groups: int = 1) -> ConvNormAct:
    """Conv2d (same padding, no bias) + BatchNorm + ReLU; ``groups=in_channels`` makes it depthwise."""
    return ConvNormAct(2, in_channels, out_channels, kernel, norm="batch", groups=groups)


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3x3 convolution + norm + ReLU, then pointwise 1x1 convolution + norm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(conv_bn_relu(in_channels, in_channels, 3, groups=in_channels),
                         conv_bn_relu(in_channels, out_channels, 1))


class XBlock(nn.Module):
    """Three depthwise-separable 3x3 convolutions + a 1x1 convolution residual path (summed)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.residual = conv_bn_relu(in_channels, out_channels, 1)
        self.body = nn.Sequential(DepthwiseSeparableConv(in_channels, out_channels),
                                  DepthwiseSeparableConv(out_channels, out_channels),
                                  DepthwiseSeparableConv(out_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.residual(x)


def make_block(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """'x' (XBlock) or 'plain' (the plain UNet block: two 3x3 convolutions, each + batch norm + ReLU, the
    ConvBlock of :mod:`network_blocks`)."""
    if kind == "x":
        return XBlock(in_channels, out_channels)
    if kind == "plain":
        return ConvBlock(in_channels, out_channels, norm="batch")
    raise ValueError(f"unknown block {kind!r} (one of {', '.join(BLOCKS)})")


class FeatureSimilarityModule(nn.Module):
    """The FSM non-local block on (B, C0, y, x) -> (B, C0, y, x) (see module doc)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        c = max(1, channels // int(reduction))
        self.reduce = conv_bn_relu(channels, c, 3)
        self.query = nn.Conv2d(c, c, 1, bias=False)
        self.key = nn.Conv2d(c, c, 1, bias=False)
        self.value = nn.Conv2d(c, c, 1, bias=False)
        self.project = nn.Conv2d(c, c, 1, bias=False)
        self.restore = conv_bn_relu(c, channels, 3)

    def similarity(self, h: torch.Tensor) -> torch.Tensor:
        """(B, N, N) position similarity q_i . k_j / N of reduced features h (B, C, y, x), N = y * x."""
        q = self.query(h).flatten(2)
        k = self.key(h).flatten(2)
        return torch.bmm(q.transpose(1, 2), k) / q.shape[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.reduce(x)
        v = self.value(h).flatten(2)
        y = torch.bmm(v, self.similarity(h).transpose(1, 2)).reshape(h.shape)
        return self.restore(h + self.project(y)) + x


class UpBlock(nn.Module):
    """Decoder level: 2x upsampling, 3x3 conv + norm + ReLU to ``out_channels``, concatenation with the skip
    (``out_channels`` channels), then a block."""

    def __init__(self, in_channels: int, out_channels: int, block: str):
        super().__init__()
        self.up_conv = conv_bn_relu(in_channels, out_channels, 3)
        self.block = make_block(block, 2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up_conv(F.interpolate(x, size=skip.shape[2:], mode="nearest"))
        return self.block(torch.cat([skip, x], dim=1))


# ----------------------------------------------------------------------------------------------------
# X-Net


class XNet(nn.Module):
    """X-Net (or the plain UNet / the w/o-FSM ablation, see :class:`XNetConfig`):
    (B, in_channels, y, x) normalised slices -> (B, n_classes, y, x) logits; y and x divisible by
    2**(len(widths) - 1)."""

    def __init__(self, config: XNetConfig = XNetConfig()):
        super().__init__()
        self.config = config
        w = config.widths
        self.encoder = nn.ModuleList([make_block(config.block, config.in_channels if k == 0 else w[k - 1], w[k])
                                      for k in range(len(w))])
        self.fsm = FeatureSimilarityModule(w[-1], config.fsm_reduction) if config.use_fsm else nn.Identity()
        self.decoder = nn.ModuleList([UpBlock(w[k + 1], w[k], config.block) for k in reversed(range(len(w) - 1))])
        self.out = nn.Conv2d(w[0], config.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.encoder):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.fsm(x)
        for up, skip in zip(self.decoder, reversed(skips[:-1])):
            x = up(x, skip)
        return self.out(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_classes, y, x) class probabilities (softmax over classes)."""
        return torch.softmax(self(x).float(), dim=1)


def build_model(config) -> XNet:
    """The untrained network of an :class:`XNetConfig` or its dict (checkpoint ``config``)."""
    return XNet(config if isinstance(config, XNetConfig) else XNetConfig.from_dict(config))


def variant_config(config: XNetConfig, variant: str) -> XNetConfig:
    """The config of a variant of the paper's table with the same depth and widths: 'xnet', 'xnet_no_fsm'
    (X-Net w/o FSM) or 'unet' (plain UNet, no FSM)."""
    d = config.to_dict()
    if variant == "xnet":
        d.update(block="x", use_fsm=True)
    elif variant == "xnet_no_fsm":
        d.update(block="x", use_fsm=False)
    elif variant == "unet":
        d.update(block="plain", use_fsm=False)
    else:
        raise ValueError(f"unknown X-Net variant {variant!r} (xnet, xnet_no_fsm, unet)")
    return XNetConfig.from_dict(d)
