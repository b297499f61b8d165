"""Losses of the pseudo-DWI framework (Wang et al., MedIA 2020).

- distance weight map A (per 2D slice): A = w inside the lesion, A = 1 + (w - 1) * max(0, 1 - d / D) outside,
  d the in-plane distance (mm) to the nearest lesion voxel; A = 1 on slices without lesion (w = 1.5, D = 50 mm);
- synthesis loss: mean(A * (P - G)^2) + gamma * mean |Phi_c(P) - Phi_c(G)| (gamma = 1.2), P the synthesised
  and G the real DWI, Phi_c the context encoder (frozen while the synthesis is trained);
- segmentation loss L_s: class-weighted cross-entropy + hardness-aware generalised Dice
  (:mod:`training.lesion_data.segmentation_losses`);
- end-to-end L = L_s + alpha * L_g + beta * L_e (alpha = beta = 1): L_g the generator's synthesis loss,
  L_e the extractor's (channel 0 of F_h against the DWI).
"""
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from training.lesion_data.segmentation_losses import (hardness_aware_generalised_dice_loss, one_hot,
                                                      weighted_cross_entropy)


@dataclass
class LossWeights:
    w: float = 1.5
    """A inside the lesion."""
    distance_mm: float = 50.0
    """D: distance (mm) over which A falls from w to 1."""
    gamma: float = 1.2
    """Weight of the context (L1 of Phi_c features) term in the synthesis loss."""
    alpha: float = 1.0
    """Weight of the generator's synthesis loss L_g."""
    beta: float = 1.0
    """Weight of the extractor's synthesis loss L_e."""
    lesion_class_weight: float = 3.0
    """Cross-entropy weight of the lesion class (background 1)."""
    hardness: float = 0.6
    """lam of the hardness-aware generalised Dice."""

    def to_dict(self) -> dict:
        return asdict(self)


def distance_weight_map(lesion_zyx: np.ndarray, spacing_yx_mm: Sequence[float], w: float = 1.5,
                        distance_mm: float = 50.0) -> np.ndarray:
    """A (z, y, x) float32 for each 2D slice of a lesion mask (see module doc); spacing (y, x) in mm."""
    lesion = np.asarray(lesion_zyx, bool)
    out = np.ones(lesion.shape, np.float32)
    for z in range(lesion.shape[0]):
        if lesion[z].any():
            d = ndimage.distance_transform_edt(~lesion[z], sampling=tuple(float(s) for s in spacing_yx_mm))
            out[z] = 1.0 + (w - 1.0) * np.clip(1.0 - d / distance_mm, 0.0, 1.0)
    return out


def synthesis_loss(pred: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor,
                   context: Optional[torch.nn.Module], gamma: float = 1.2) -> torch.Tensor:
    """Lesion-weighted L2 + gamma * L1 context loss; pred, target, weight_map (B, 1, y, x)."""
    loss = (weight_map * (pred - target) ** 2).mean()
    if context is not None and gamma > 0:
        loss = loss + gamma * (context(pred) - context(target)).abs().mean()
    return loss


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """L_s: weighted cross-entropy + hardness-aware generalised Dice; logits (B, 2, y, x), target (B, y, x)."""
    probs = torch.softmax(logits, dim=1)
    return (weighted_cross_entropy(logits, target, (1.0, weights.lesion_class_weight))
            + hardness_aware_generalised_dice_loss(probs, one_hot(target, 2), weights.hardness))


def total_loss(out: Dict[str, torch.Tensor], dwi: torch.Tensor, lesion: torch.Tensor, weight_map: torch.Tensor,
               context: Optional[torch.nn.Module], weights: LossWeights, stage: str = "end_to_end"
               ) -> Dict[str, torch.Tensor]:
    """The loss terms of one batch: 'seg' (L_s), 'gen' (L_g), 'ext' (L_e) where present, and 'total'.

    stage: 'end_to_end' (L_s + alpha L_g + beta L_e), or for sequential training 'extractor' (L_e),
    'generator' (L_g), 'segmenter' (L_s). dwi, weight_map (B, 1, y, x); lesion (B, y, x) long."""
    terms: Dict[str, torch.Tensor] = {}
    if "features" in out:
        terms["ext"] = synthesis_loss(out["features"][:, :1], dwi, weight_map, context, weights.gamma)
    if "pseudo_dwi" in out:
        terms["gen"] = synthesis_loss(out["pseudo_dwi"], dwi, weight_map, context, weights.gamma)
    terms["seg"] = segmentation_loss(out["logits"], lesion, weights)
    zero = out["logits"].new_zeros(())
    if stage == "end_to_end":
        total = terms["seg"] + weights.alpha * terms.get("gen", zero) + weights.beta * terms.get("ext", zero)
    else:
        total = terms[{"extractor": "ext", "generator": "gen", "segmenter": "seg"}[stage]]
    terms["total"] = total
    return terms
