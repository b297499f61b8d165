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

The paper's ablation variants (regression and segmentation AIFNet) are training's: training/aifnet/ablation.py.

Only this package (model, inference) imports torch, and only when AIFNet is used.
"""
from typing import Optional

import torch
from torch import nn

from AIFSelectorLib.input_functions.aifnet.config import AIFNetConfig
from AIFSelectorLib.models.blocks import ConvNormAct


# ----------------------------------------------------------------------------------------------------
# Blocks


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
        layers.append(ConvNormAct(3, c, w, (1, 3, 3) if k == 0 else (3, 3, 3), norm="none"))
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
        return self.normalised_logits(self.input_norm(x))

    def normalised_logits(self, enhancement: torch.Tensor) -> torch.Tensor:
        """(B, n_frames, z, y, x) enhancement already through ``input_norm`` -> (B, 1, z, y, x) voxel logits
        (networks with the same input normalisation share it on one series)."""
        return self.out(self.features(enhancement))

    def forward(self, x: torch.Tensor, curves: Optional[torch.Tensor] = None):
        """x: (B, n_frames, z, y, x) raw HU. curves: (B, T', z, y, x) the full-length series the curve is
        taken from (default: x). Returns (curve (B, T'), pvol (B, z, y, x))."""
        pvol = volume_softmax(self.logits(x))
        return weighted_sum(pvol, x if curves is None else curves), pvol


def macs_per_voxel(config: AIFNetConfig) -> int:
    """Multiply-accumulates per voxel of one forward pass (to cost a series: times the voxel count)."""
    total, c = 0, config.n_frames
    for k, w in enumerate(config.widths):
        total += (9 if k == 0 else 27) * c * w
        c = w
    return total + c
