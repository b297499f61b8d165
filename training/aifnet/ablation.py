"""The AIFNet ablation variants of the paper (de la Rosa et al., MedIA 2021, Table 5), trained and evaluated
by training/aifnet only: RegressionAIFNet (the curve regressed directly), SegmentationAIFNet (a two-class
vessel segmentation) and its loss. The shipped network (AIFNet) is AIFSelectorLib's, one definition."""
from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F

from AIFSelectorLib.input_functions.aifnet.model import (AIFNet, AIFNetConfig, EnhancementInput, feature_stack,
                                                        weighted_sum)
from AIFSelectorLib.models.blocks import ConvNormAct



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
            layers.append(ConvNormAct(3, c, w, (1, 3, 3) if k == 0 else (3, 3, 3), norm="none"))
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
