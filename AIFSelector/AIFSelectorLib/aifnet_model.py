"""AIFNet (de la Rosa et al., MedIA 2021): the one network definition used by inference and training.

The CTP series enters with its time points as channels, (batch, T, z, y, x). K 3D convolutions with
ReLU (the first 3x3x1 in-plane, the rest 3x3x3) and a one-filter 1x1x1 output convolution give one
logit per voxel; a softmax over all voxels of the volume turns them into the probability volume Pvol
(non-negative, sums to 1), and the predicted curve is the Pvol-weighted sum of the voxel curves:

    y(t) = sum_v Pvol(v) * x(t, v)

Widths: layer k (k = 1..K) has ``min(base_width * 2**(k-1), max_width)`` filters. The paper's network
is ``base_width=16, max_width=None`` (16, 32, 64, 128, 256 filters for K=5: ~1.2 TMAC on a 256x256x16
series, ~40 s on 2 CPU cores). The shipped models use ``base_width=8, max_width=32`` (8, 16, 32, 32, 32),
which keeps full-resolution inference of AIF and VOF on 2 CPU cores within a few seconds (no in-plane
downsampling); see Resources/models/MODEL_CARD_aifnet.md.

Input normalisation (part of the model, so training and inference cannot disagree): every voxel's
pre-contrast level (mean of its first ``n_baseline`` frames) is subtracted and the enhancement divided by
``scale_hu``; the weighted curve itself is always taken on the raw HU the caller passes.

The network sees a fixed number of frames (``n_frames``, the shortest training series); longer or
shorter series are brought to that many frames on the training frame interval by
:func:`network_frames` (linear interpolation, the last frame replicated past the end), while the output
curve is the Pvol-weighted sum over the full-length series.

Ablation variants from the paper: :class:`RegressionAIFNet` (3D then 2D convolutions, z squeezed by
average pooling, two fully connected layers; trained with the Pearson loss) and
:class:`SegmentationAIFNet` (two-class softmax per voxel, weighted cross-entropy; the curve is the mean
of the top-ranked voxels).

Only this module and :mod:`aifnet_inference` import torch.
"""
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .config_json import config_from_dict


@dataclass
class AIFNetConfig:
    """Everything needed to rebuild a network (stored in each checkpoint)."""

    n_frames: int = 40
    """Frames the network sees (time points as input channels)."""
    n_layers: int = 5
    """K: number of 3D convolution layers (5 for the AIF, 2 for the VOF in the paper)."""
    base_width: int = 8
    """Filters of the first layer; layer k has base_width * 2**(k-1) (the paper: 16)."""
    max_width: Optional[int] = 32
    """Cap on the filters of a layer (None: no cap, the paper's growth)."""
    dt_s: float = 1.0
    """Frame interval the network was trained on (s)."""
    n_baseline: int = 2
    """Frames averaged for the per-voxel pre-contrast level removed from the network input."""
    scale_hu: float = 100.0
    """Enhancement is divided by this before entering the network."""
    kind: str = "aif"
    """'aif' or 'vof' (documentation only: both use the same network)."""

    @property
    def widths(self) -> Tuple[int, ...]:
        w = [self.base_width * 2 ** k for k in range(self.n_layers)]
        if self.max_width is not None:
            w = [min(x, self.max_width) for x in w]
        return tuple(w)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AIFNetConfig":
        return config_from_dict(cls, d)


# ----------------------------------------------------------------------------------------------------
# Blocks


class ConvReLU3d(nn.Sequential):
    """Conv3d (same padding) followed by ReLU. kernel is (kz, ky, kx)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (3, 3, 3)):
        pad = tuple(k // 2 for k in kernel)
        super().__init__(nn.Conv3d(in_channels, out_channels, tuple(kernel), padding=pad), nn.ReLU(inplace=True))


class EnhancementInput(nn.Module):
    """Raw HU frames (B, T, z, y, x) -> per-voxel enhancement / scale_hu (baseline = mean of first frames)."""

    def __init__(self, n_baseline: int = 2, scale_hu: float = 100.0):
        super().__init__()
        self.n_baseline = int(n_baseline)
        self.scale_hu = float(scale_hu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = x[:, :max(1, self.n_baseline)].mean(dim=1, keepdim=True)
        return (x - base) / self.scale_hu


def volume_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over every voxel of each volume: (B, 1, z, y, x) or (B, z, y, x) -> (B, z, y, x), sums to 1."""
    if logits.dim() == 5:
        logits = logits[:, 0]
    b = logits.shape[0]
    return torch.softmax(logits.reshape(b, -1).float(), dim=1).reshape(logits.shape)


def weighted_sum(pvol: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y(t) = sum_v Pvol(v) x(t, v): pvol (B, z, y, x), x (B, T, z, y, x) -> (B, T)."""
    b, t = x.shape[:2]
    return torch.bmm(x.reshape(b, t, -1).to(pvol.dtype), pvol.reshape(b, -1, 1))[..., 0]


# ----------------------------------------------------------------------------------------------------
# AIFNet


def feature_stack(config: "AIFNetConfig") -> nn.Sequential:
    """The K conv + ReLU layers over time-as-channels input: widths ``config.widths``, the first kernel
    1x3x3 (z, y, x), the others 3x3x3."""
    layers, c = [], config.n_frames
    for k, w in enumerate(config.widths):
        layers.append(ConvReLU3d(c, w, (1, 3, 3) if k == 0 else (3, 3, 3)))
        c = w
    return nn.Sequential(*layers)


class AIFNet(nn.Module):
    """The AIFNet probability-volume network (see module doc)."""

    def __init__(self, config: AIFNetConfig = AIFNetConfig()):
        super().__init__()
        self.config = config
        self.input_norm = EnhancementInput(config.n_baseline, config.scale_hu)
        self.features = feature_stack(config)
        self.out = nn.Conv3d(config.widths[-1], 1, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_frames, z, y, x) raw HU -> (B, 1, z, y, x) voxel logits."""
        if x.shape[1] != self.config.n_frames:
            raise ValueError(f"the network takes {self.config.n_frames} frames, got {x.shape[1]} "
                             "(use network_frames to bring a series to the network's frames)")
        return self.out(self.features(self.input_norm(x)))

    def forward(self, x: torch.Tensor, curves: Optional[torch.Tensor] = None):
        """x: (B, n_frames, z, y, x) raw HU. curves: (B, T', z, y, x) the full-length series the curve is
        taken from (default: x). Returns (curve (B, T'), pvol (B, z, y, x))."""
        pvol = volume_softmax(self.logits(x))
        return weighted_sum(pvol, x if curves is None else curves), pvol


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def macs_per_voxel(config: AIFNetConfig) -> int:
    """Multiply-accumulates per voxel of one forward pass (to cost a series: times the voxel count)."""
    total, c = 0, config.n_frames
    for k, w in enumerate(config.widths):
        total += (9 if k == 0 else 27) * c * w
        c = w
    return total + c


# ----------------------------------------------------------------------------------------------------
# Frames the network sees


def network_frames(data_tzyx: np.ndarray, times_s: np.ndarray, n_frames: int, dt_s: float) -> np.ndarray:
    """The series on the network's time grid: ``n_frames`` frames every ``dt_s`` seconds from the first
    frame, linearly interpolated, the last frame replicated past the end of the series.
    data_tzyx: (t, z, y, x); returns float32 (n_frames, z, y, x)."""
    times = np.asarray(times_s, dtype=np.float64) - float(times_s[0])
    grid = dt_s * np.arange(n_frames)
    if len(times) == n_frames and np.allclose(times, grid, atol=1e-3 * dt_s):
        return np.asarray(data_tzyx, dtype=np.float32)
    out = np.empty((n_frames,) + tuple(data_tzyx.shape[1:]), dtype=np.float32)
    pos = np.interp(grid, times, np.arange(len(times)))
    for i, p in enumerate(pos):
        lo = int(np.floor(p))
        hi = min(lo + 1, len(times) - 1)
        w = float(p - lo)
        if w < 1e-6 or hi == lo:
            out[i] = data_tzyx[lo]
        else:
            out[i] = (1 - w) * data_tzyx[lo].astype(np.float32) + w * data_tzyx[hi].astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------------
# Ablation variants


class RegressionAIFNet(nn.Module):
    """Regression AIFNet (ablation): 3D convolutions, z squeezed by average pooling, 2D convolutions with
    in-plane pooling, global pooling and two fully connected layers that output the curve directly
    (B, n_frames) in units of the normalised input (enhancement / scale_hu). Train with the Pearson loss."""

    def __init__(self, config: AIFNetConfig = AIFNetConfig(n_layers=2), n_2d: int = 3, hidden: int = 64):
        super().__init__()
        self.config = config
        self.input_norm = EnhancementInput(config.n_baseline, config.scale_hu)
        layers, c = [], config.n_frames
        for k, w in enumerate(config.widths):
            layers.append(ConvReLU3d(c, w, (1, 3, 3) if k == 0 else (3, 3, 3)))
            c = w
        self.conv3d = nn.Sequential(*layers)
        convs = []
        for _ in range(n_2d):
            convs += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
        self.conv2d = nn.Sequential(*convs)
        self.fc = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, config.n_frames))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv3d(self.input_norm(x)).mean(dim=2)  # z squeezed by average pooling
        h = self.conv2d(h)
        h = torch.amax(h, dim=(2, 3))
        return self.fc(h)


class SegmentationAIFNet(nn.Module):
    """Segmentation AIFNet (ablation): the AIFNet trunk with a two-class output (background, vessel)
    and a per-voxel softmax; trained with weighted cross-entropy on a vessel mask; the curve is the mean
    of the ``top_k`` voxels with the highest vessel probability."""

    def __init__(self, config: AIFNetConfig = AIFNetConfig(), top_k: int = 12):
        super().__init__()
        self.config = config
        self.top_k = int(top_k)
        self.input_norm = EnhancementInput(config.n_baseline, config.scale_hu)
        self.features = feature_stack(config)
        self.out = nn.Conv3d(config.widths[-1], 2, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_frames, z, y, x) -> (B, 2, z, y, x) class logits."""
        return self.out(self.features(self.input_norm(x)))

    def forward(self, x: torch.Tensor, curves: Optional[torch.Tensor] = None):
        """Returns (curve (B, T'), pvol (B, z, y, x)): pvol is uniform over the top-ranked voxels."""
        prob = torch.softmax(self.logits(x), dim=1)[:, 1]
        b = prob.shape[0]
        flat = prob.reshape(b, -1)
        k = min(self.top_k, flat.shape[1])
        top = torch.topk(flat, k, dim=1).indices
        pvol = torch.zeros_like(flat).scatter_(1, top, 1.0 / k).reshape(prob.shape)
        return weighted_sum(pvol, x if curves is None else curves), pvol


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, vessel_weight: Optional[float] = None) -> torch.Tensor:
    """Weighted cross-entropy for SegmentationAIFNet: mask (B, z, y, x) bool; the vessel class is weighted
    by the background/vessel voxel ratio unless ``vessel_weight`` is given."""
    target = mask.long()
    if vessel_weight is None:
        n_pos = float(target.sum())
        vessel_weight = (target.numel() - n_pos) / max(n_pos, 1.0)
    w = torch.tensor([1.0, float(vessel_weight)], dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, target, weight=w)


def build_model(config: AIFNetConfig, variant: str = "pvol") -> nn.Module:
    """'pvol' (AIFNet), 'regression' or 'segmentation'."""
    if variant == "pvol":
        return AIFNet(config)
    if variant == "regression":
        return RegressionAIFNet(config)
    if variant == "segmentation":
        return SegmentationAIFNet(config)
    raise ValueError(f"unknown AIFNet variant {variant!r}")
