"""Infarct segmentation of a non-contrast CT with the shipped SEAN weights.

    mask, extras, info = segment_sean(ncct_hu, spacing_xyz)

ncct_hu: (z, y, x) HU; spacing_xyz: (x, y, z) mm. Steps: normalisation (brain window, z-score in the
head), the alignment network's pose (rotation about the image centre and shift; see
:mod:`sean_alignment` for the convention), every slice resampled onto the segmenter's aligned grid, the
HybridUnet's infarct probability per slice (2T+1 adjacent slices in), the probability mapped back onto the
input grid with the inverse transform, thresholded at 0.5 inside the head. Returns the mask (z, y, x)
bool, extras {'infarct_probability': (z, y, x) float32} and info (versions, sha256, 'rotation_deg',
'shift_mm' (x, y), device, timings in s). Bad input -> InputError; missing or corrupted weights ->
WeightsError.
"""
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from AIFSelectorLib.models.weights import WeightsError, load_checkpoint
from AIFSelectorLib.models.device import resolve_device

from StrokeLesionLib.lesion_models.checks import check_ncct, check_spacing
from StrokeLesionLib.lesion_models.sean.alignment import (AlignmentNet, alignment_grid_slices, build_alignment, head_mask, normalise_ncct,
                             refine_pose, warp_volumes)
from StrokeLesionLib.lesion_models.sean.model import HybridUNet, build_model, slice_stacks

MODEL_NAME = "sean"
ALIGNMENT_NAME = "sean_alignment"
SLICES_PER_BATCH = 4

__all__ = ["segment_sean", "load_models", "estimate_pose", "aligned_probability", "WeightsError"]


def load_models(name: str = MODEL_NAME, alignment_name: str = ALIGNMENT_NAME, folder: Optional[Path] = None):
    """((segmenter, info), (alignment network, info)) of the manifest entries (sha256 checked)."""
    seg = load_checkpoint(name, build_model, folder=folder, label=f"SEAN segmenter ({name})")
    align = load_checkpoint(alignment_name, build_alignment, folder=folder, label=f"SEAN alignment ({alignment_name})")
    return seg, align


@torch.no_grad()
def estimate_pose(net: AlignmentNet, normalised: np.ndarray, background: float, spacing_xy,
                  device: torch.device = torch.device("cpu"), refine_steps: Optional[int] = None) -> np.ndarray:
    """(angle_deg, tx_mm, ty_mm) of a normalised (z, y, x) volume at ``spacing_xy`` mm; the network's pose
    refined by ``refine_steps`` (default: the config's) steps on the alignment loss."""
    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(normalised))[None].to(device)
    bg = torch.tensor([background], dtype=x.dtype, device=device)
    slices = alignment_grid_slices(x, bg, spacing_xy, net.config)
    pose = net(slices, bg)
    if refine_steps is None:
        refine_steps = net.config.refine_steps
    if refine_steps > 0:
        pose = refine_pose(slices, bg, pose, net.config, refine_steps)
    return pose[0].double().cpu().numpy()


@torch.no_grad()
def aligned_probability(net: HybridUNet, aligned: torch.Tensor, batch: int = SLICES_PER_BATCH) -> torch.Tensor:
    """Infarct probability (Z, s, s) of an aligned normalised volume (Z, s, s) on the segmentation grid."""
    net.eval()
    stacks = slice_stacks(aligned, net.config.context_slices)
    probs = [torch.softmax(net(stacks[i:i + batch]).float(), dim=1)[:, 1] for i in range(0, len(stacks), batch)]
    return torch.cat(probs)


def segment_sean(ncct_hu: np.ndarray, spacing_xyz, device: Optional[str] = "auto", folder: Optional[Path] = None,
                 model_name: str = MODEL_NAME, alignment_name: str = ALIGNMENT_NAME
                 ) -> Tuple[np.ndarray, Dict[str, np.ndarray], dict]:
    """(lesion_mask, {'infarct_probability': ...}, info) of one NCCT (see module doc)."""
    ncct = check_ncct(ncct_hu)
    spacing = check_spacing(spacing_xyz, "SEAN")
    (seg, seg_info), (align, align_info) = load_models(model_name, alignment_name, folder)
    cfg = seg.config
    dev = resolve_device(device)
    t0 = time.perf_counter()
    normalised, background = normalise_ncct(ncct, cfg.hu_window)
    t_pre = time.perf_counter() - t0
    t0 = time.perf_counter()
    align.to(dev)
    pose = estimate_pose(align, normalised, background, spacing[:2], dev) if cfg.aligned else np.zeros(3)
    align.to("cpu")
    t_align = time.perf_counter() - t0
    t0 = time.perf_counter()
    seg.to(dev)
    with torch.no_grad():
        x = torch.from_numpy(normalised)[None].to(dev)
        pose_t = torch.from_numpy(pose.astype(np.float32))[None].to(dev)
        grid = (cfg.grid_size, cfg.grid_size)
        seg_spacing = (cfg.grid_spacing_mm, cfg.grid_spacing_mm)
        aligned = warp_volumes(x, pose_t, grid, seg_spacing, spacing[:2], background)[0]
        prob = aligned_probability(seg, aligned)
        back = warp_volumes(prob[None], pose_t, ncct.shape[1:], spacing[:2], seg_spacing, 0.0, inverse=True)[0]
    seg.to("cpu")
    t_net = time.perf_counter() - t0
    prob_in = back.float().cpu().numpy().astype(np.float32)
    mask = (prob_in > 0.5) & head_mask(ncct)
    info = {"model": model_name, "version": seg_info["version"], "sha256": seg_info["sha256"], "file": seg_info["file"],
            "alignment_version": align_info["version"], "alignment_sha256": align_info["sha256"],
            "aligned": bool(cfg.aligned), "rotation_deg": round(float(pose[0]), 3),
            "shift_mm": [round(float(pose[1]), 3), round(float(pose[2]), 3)], "device": str(dev),
            "lesion_ml": float(mask.sum()) * float(np.prod(spacing)) / 1000.0,
            "timings_s": {"preprocessing": round(t_pre, 3), "alignment": round(t_align, 3),
                          "segmentation": round(t_net, 3)}}
    return mask, {"infarct_probability": prob_in}, info
