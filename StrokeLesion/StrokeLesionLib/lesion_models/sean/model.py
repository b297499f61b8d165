"""SEAN (Liang et al., MICCAI 2021), part 2: the HybridUnet segmenter with symmetry-enhanced attention.

Input: 2T+1 adjacent aligned slices (the centre slice is segmented) of the normalised NCCT
(:func:`sean_alignment.normalise_ncct`) on the segmentation grid (``grid_size`` x ``grid_size`` voxels at
``grid_spacing_mm``), as (B, 1, 2T+1, y, x); output: class logits (B, 2, y, x) (background, infarct).

- Encoder (3D): per level two 3x3x3 convolutions + batch norm + ReLU over the 2T+1 slices (z padded),
  then an in-plane 2x2 max-pool (z kept). A (2T+1)x1x1 convolution per level collapses z into the 2D
  skip (and bottleneck) features.
- Symmetry-enhanced attention (:class:`SymmetryEnhancedAttention`) on the 2D bottleneck: the map is cut
  into P x Q partitions; every position attends (scaled dot product, 1x1-convolution queries, keys and
  values of C/``reduction`` channels) to the positions of its own partition and of the mirrored partition
  (the partition at the left-right mirrored place, read mirrored), which on an aligned image holds the
  contralateral tissue. Output F + gamma * W_o(attention) (gamma learned, starts at 0).
  ``attention='self'``: own partition only (the ablation without symmetry); ``'none'``: no attention.
- Decoder (2D): bilinear up-sampling, 1x1 projection, skip concatenation, two 3x3 conv + BN + ReLU.

Loss (training): generalised Dice + cross-entropy (training.lesion_data.segmentation_losses).
"""
from dataclasses import asdict, dataclass
from typing import Tuple

import torch
from torch import nn
import torch.nn.functional as F

from AIFSelectorLib.models.config_json import config_from_dict
from AIFSelectorLib.models.blocks import ConvBlock, count_parameters
from StrokeLesionLib.lesion_models.sean.alignment import BRAIN_WINDOW_HU

ATTENTION_MODES = ("symmetric", "self", "none")

__all__ = ["SEANConfig", "HybridUNet", "SymmetryEnhancedAttention", "build_model", "count_parameters"]


@dataclass
class SEANConfig:
    """Everything needed to rebuild a segmenter (stored in each checkpoint)."""

    context_slices: int = 1
    """T: the network sees 2T+1 adjacent slices."""
    widths: Tuple[int, ...] = (8, 16, 32, 48)
    """Channels per level (len(widths) - 1 in-plane poolings)."""
    partitions: Tuple[int, int] = (4, 2)
    """(P, Q): partitions of the bottleneck map along y and x (Q even so partitions mirror onto partitions)."""
    attention: str = "symmetric"
    """'symmetric' (SEAN), 'self' (ablation: no mirrored partition) or 'none' (no attention)."""
    attention_reduction: int = 4
    aligned: bool = True
    """False for the ablation without alignment (the segmenter sees the image as acquired)."""
    grid_size: int = 128
    grid_spacing_mm: float = 1.8
    hu_window: Tuple[float, float] = BRAIN_WINDOW_HU

    def __post_init__(self):
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention {self.attention!r} (one of {', '.join(ATTENTION_MODES)})")
        side = self.grid_size // 2 ** (len(self.widths) - 1)
        p, q = self.partitions
        if side * 2 ** (len(self.widths) - 1) != self.grid_size or side % p or side % q or q % 2:
            raise ValueError(f"grid {self.grid_size} with {len(self.widths)} levels gives a {side}x{side} bottleneck "
                             f"that {p}x{q} partitions (Q even) do not tile")

    @property
    def n_slices(self) -> int:
        return 2 * self.context_slices + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SEANConfig":
        return config_from_dict(cls, d)


def partition_tokens(x: torch.Tensor, p: int, q: int) -> torch.Tensor:
    """(B, C, y, x) -> (B * p * q, (y/p) * (x/q), C): the positions of every partition as tokens."""
    b, c, h, w = x.shape
    t = x.reshape(b, c, p, h // p, q, w // q).permute(0, 2, 4, 3, 5, 1)
    return t.reshape(b * p * q, (h // p) * (w // q), c)


def merge_partitions(t: torch.Tensor, b: int, c: int, h: int, w: int, p: int, q: int) -> torch.Tensor:
    """Inverse of :func:`partition_tokens`."""
    x = t.reshape(b, p, q, h // p, w // q, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h, w)


class SymmetryEnhancedAttention(nn.Module):
    """Attention within P x Q partitions of (B, C, y, x), with the mirrored partition's positions as
    extra keys and values when ``mirrored`` (see module doc). The mirrored partition of (i, j) is
    partition (i, j) of the left-right flipped map."""

    def __init__(self, channels: int, partitions: Tuple[int, int] = (4, 2), reduction: int = 4,
                 mirrored: bool = True):
        super().__init__()
        inner = max(1, channels // int(reduction))
        self.partitions = tuple(int(v) for v in partitions)
        self.mirrored = bool(mirrored)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.scale = inner ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p, q = self.partitions
        qry = partition_tokens(self.query(x), p, q)
        key = partition_tokens(self.key(x), p, q)
        val = partition_tokens(self.value(x), p, q)
        if self.mirrored:
            xm = x.flip(-1)
            key = torch.cat([key, partition_tokens(self.key(xm), p, q)], dim=1)
            val = torch.cat([val, partition_tokens(self.value(xm), p, q)], dim=1)
        attn = torch.softmax(qry @ key.transpose(1, 2) * self.scale, dim=-1)
        out = merge_partitions(attn @ val, b, val.shape[-1], h, w, p, q)
        return x + self.gamma * self.out(out)


class HybridUNet(nn.Module):
    """SEAN's segmenter: (B, 1, 2T+1, y, x) normalised aligned slices -> (B, 2, y, x) logits."""

    def __init__(self, config: SEANConfig = SEANConfig()):
        super().__init__()
        self.config = config
        widths = [int(w) for w in config.widths]
        n = config.n_slices
        self.encoder = nn.ModuleList()
        self.collapse = nn.ModuleList()
        c = 1
        for w in widths:
            self.encoder.append(ConvBlock(c, w, spatial_dims=3))  # z padded: the slice count is kept
            self.collapse.append(nn.Conv3d(w, w, (n, 1, 1)))
            c = w
        if config.attention == "none":
            self.attention = nn.Identity()
        else:
            self.attention = SymmetryEnhancedAttention(c, config.partitions, config.attention_reduction,
                                                       mirrored=config.attention == "symmetric")
        self.up_proj = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up_proj.append(nn.Conv2d(c, w, 1))
            self.decoder.append(ConvBlock(2 * w, w, norm="batch"))
            c = w
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1 or x.shape[2] != self.config.n_slices:
            raise ValueError(f"HybridUNet takes (B, 1, {self.config.n_slices}, y, x), got {tuple(x.shape)}")
        skips = []
        for i, (block, collapse) in enumerate(zip(self.encoder, self.collapse)):
            if i > 0:
                x = F.max_pool3d(x, (1, 2, 2))
            x = block(x)
            skips.append(collapse(x)[:, :, 0])
        y = self.attention(skips[-1])
        for proj, block, skip in zip(self.up_proj, self.decoder, reversed(skips[:-1])):
            y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([proj(y), skip], dim=1))
        return self.head(y)


def build_model(config_dict: dict) -> HybridUNet:
    return HybridUNet(SEANConfig.from_dict(config_dict))


def slice_stacks(volume: torch.Tensor, context_slices: int) -> torch.Tensor:
    """(Z, y, x) -> (Z, 1, 2T+1, y, x): every slice with its T neighbours on each side (edge slices
    repeated past the ends)."""
    z = volume.shape[0]
    idx = torch.arange(z)[:, None] + torch.arange(-context_slices, context_slices + 1)[None, :]
    return volume[idx.clamp(0, z - 1)][:, None]
