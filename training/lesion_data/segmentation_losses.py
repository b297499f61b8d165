"""Segmentation losses shared by the lesion models (SLNet, SEAN, X-Net).

Shapes: ``probs`` and ``onehot`` are (B, C, ...) float tensors (softmax probabilities and the one-hot
truth, any number of spatial dimensions); ``logits`` (B, C, ...); ``target`` (B, ...) long class indices.
Every loss returns a scalar tensor to be minimised.

- soft Dice (Milletari 2016) of the foreground classes;
- generalised Dice (Sudre et al. 2017): class weights 1 / (sum of the class's truth)^2, so a small lesion
  counts as much as the background (a class absent from the batch gets weight 0: cross-entropy covers it);
- hardness-aware generalised Dice (Wang et al., MedIA 2020, SLNet): each voxel's contribution is weighted by
  its hardness h = lam * |p - g| + (1 - lam), so voxels the network still gets wrong weigh more
  (lam = 0 gives back the generalised Dice); the hardness weight is not differentiated through;
- class-weighted cross-entropy, and Dice + cross-entropy (X-Net).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

EPS = 1e-6


def _sum_spatial(x: torch.Tensor) -> torch.Tensor:
    """Sums (B, C, ...) over the batch and the spatial axes -> (C,)."""
    dims = [0] + list(range(2, x.dim()))
    return x.sum(dim=dims)


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, include_background: bool = False) -> torch.Tensor:
    """1 - mean soft Dice over classes (background class 0 left out unless asked for)."""
    if not include_background and probs.shape[1] > 1:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    inter = _sum_spatial(probs * onehot)
    denom = _sum_spatial(probs) + _sum_spatial(onehot)
    return 1.0 - ((2.0 * inter + EPS) / (denom + EPS)).mean()


def generalised_dice_loss(probs: torch.Tensor, onehot: torch.Tensor,
                          voxel_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Generalised Dice loss (Sudre 2017) over all classes; ``voxel_weight`` (B, 1 or C, ...) optionally
    weights each voxel's terms (used by the hardness-aware variant)."""
    volume = _sum_spatial(onehot)
    w_class = torch.where(volume > 0, 1.0 / (volume * volume).clamp_min(EPS), torch.zeros_like(volume))
    pg, s = probs * onehot, probs + onehot
    if voxel_weight is not None:
        pg, s = pg * voxel_weight, s * voxel_weight
    num = (w_class * _sum_spatial(pg)).sum()
    den = (w_class * _sum_spatial(s)).sum()
    return 1.0 - (2.0 * num + EPS) / (den + EPS)


def hardness_aware_generalised_dice_loss(probs: torch.Tensor, onehot: torch.Tensor,
                                         lam: float = 0.6) -> torch.Tensor:
    """Generalised Dice with voxel hardness weights h = lam * |p - g| + (1 - lam) (SLNet, Wang 2020);
    0 <= lam <= 1."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"hardness lam must lie in [0, 1], got {lam}")
    hardness = (lam * (probs - onehot).abs() + (1.0 - lam)).detach()
    return generalised_dice_loss(probs, onehot, voxel_weight=hardness)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Cross-entropy with per-class weights (e.g. a larger weight on the rare lesion class)."""
    w = None
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, target, weight=w)


def one_hot(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, ...) long -> (B, C, ...) float one-hot."""
    return F.one_hot(target, n_classes).movedim(-1, 1).to(torch.float32)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor,
                 class_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Soft Dice of the foreground classes + (weighted) cross-entropy, from logits (X-Net, SEAN)."""
    probs = torch.softmax(logits, dim=1)
    return soft_dice_loss(probs, one_hot(target, logits.shape[1])) + weighted_cross_entropy(logits, target,
                                                                                             class_weights)
