"""Losses for AIFNet training."""
import torch


def pearson_r(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation along the last axis: (..., T) x (..., T) -> (...)."""
    p = pred - pred.mean(dim=-1, keepdim=True)
    t = target - target.mean(dim=-1, keepdim=True)
    return (p * t).sum(-1) / torch.sqrt((p * p).sum(-1) * (t * t).sum(-1) + eps)


def pearson_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - r, averaged over the batch (the AIFNet paper's loss): 0 for a perfect shape match, scale and
    baseline free, so partial-volume-reduced arterial voxels are not penalised for their amplitude."""
    return (1.0 - pearson_r(pred, target)).mean()
