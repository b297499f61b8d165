"""Chronic stroke lesion segmentation of a T1-weighted MRI with the shipped X-Net weights, and the slice
preprocessing that training shares.

    mask, extras, info = segment_xnet(t1, spacing_xyz)

t1: (z, y, x) scanner units (any scale: the phantom's look-alike, an ATLAS MNI image, ...); spacing_xyz:
(x, y, z) mm. Steps:

1. head mask (:func:`head_mask`): voxels above half-way from the air level (1st percentile) to the volume's
   Otsu threshold (invariant to the scanner's gain and offset), closed (2 voxels) and
   hole-filled slice by slice (the scalp encloses the dark skull, CSF and lesion cavities), the largest 3D
   connected component (the phantom's noisy air and the zero background of MNI images alike);
2. intensity normalisation (:func:`normalise_t1`): head intensities clipped to the config's percentiles,
   then z-scored with the head's mean and SD (dimensionless); the air outside the head is set to the
   value of the lowest clipped intensity;
3. every slice resampled (bilinear, Gaussian anti-aliasing when shrinking) onto the network grid: ``grid_size``
   x ``grid_size`` voxels of ``grid_spacing_mm`` mm, centred on the head's in-plane centroid
   (:func:`slice_grid`, :func:`to_network_grid`);
4. X-Net's lesion probability per slice, mapped back onto the input grid (bilinear,
   :func:`from_network_grid`), thresholded at the config's threshold inside the head.

Returns the mask (z, y, x) bool, extras {'lesion_probability': (z, y, x) float32} and info (model,
version, sha256, file, device, grid centre, timings in s). Bad input (not 3D, NaN, a CT in HU, a bad
spacing) -> InputError; missing or corrupted weights -> WeightsError.
"""
import time
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch
from scipy import ndimage

from AIFSelectorLib.models.weights import WeightsError, load_checkpoint
from AIFSelectorLib.models.device import resolve_device

from StrokeLesionLib.lesion_models.checks import check_spacing, check_t1
from StrokeLesionLib.lesion_models.xnet.model import XNet, XNetConfig, build_model

MODEL_NAME = "xnet"
SLICES_PER_BATCH = 16
HEAD_THRESHOLD_FRACTION = 0.5
"""The head is what lies above this fraction of the way from the air level (the volume's 1st percentile) to
its Otsu threshold (air / tissue), closed and filled."""

__all__ = ["segment_xnet", "load_model", "head_mask", "normalise_t1", "slice_grid", "to_network_grid",
           "from_network_grid", "network_input", "predict_probability", "segment_with_model", "WeightsError"]


class SliceGrid(NamedTuple):
    """Where the network grid lies on the input slices: ``centre_yx`` (input voxels, fractional),
    ``spacing_yx`` of the input (mm), ``size`` and ``spacing_mm`` of the (square) network grid."""

    centre_yx: Tuple[float, float]
    spacing_yx: Tuple[float, float]
    size: int
    spacing_mm: float


# ------------------------------------------------------------------------------------------ preprocessing

def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D value sample (maximum between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def head_mask(t1: np.ndarray) -> np.ndarray:
    """(z, y, x) bool head mask of a T1 image (see module doc); never empty for a non-constant image."""
    t1 = np.asarray(t1, dtype=np.float32)
    floor = float(np.percentile(t1, 1.0))
    mask = t1 > floor + HEAD_THRESHOLD_FRACTION * (_otsu_threshold(t1.ravel()) - floor)
    for z in range(mask.shape[0]):
        mask[z] = ndimage.binary_fill_holes(ndimage.binary_closing(mask[z], iterations=2))
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return mask


def normalise_t1(t1: np.ndarray, head: np.ndarray, clip_percentiles=(0.5, 99.5)) -> np.ndarray:
    """(z, y, x) float32 z-score of the T1 inside ``head`` after clipping to the head's percentiles; the
    outside of the head gets the lowest clipped value (see module doc)."""
    t1 = np.asarray(t1, dtype=np.float32)
    values = t1[head] if head.any() else t1.ravel()
    lo, hi = np.percentile(values, clip_percentiles)
    clipped = np.clip(values, lo, hi)
    mean, sd = float(clipped.mean()), float(clipped.std())
    sd = sd if sd > 0 else 1.0
    out = (np.clip(t1, lo, hi) - mean) / sd
    out[~head] = (lo - mean) / sd
    return out.astype(np.float32)


def slice_grid(head: np.ndarray, spacing_xyz, config: XNetConfig) -> SliceGrid:
    """The network grid of a volume: centred on the in-plane centroid of the head mask (z, y, x)."""
    yx = np.argwhere(head)[:, 1:] if head.any() else np.argwhere(np.ones(head.shape[1:], bool))
    centre = yx.mean(axis=0)
    return SliceGrid((float(centre[0]), float(centre[1])), (float(spacing_xyz[1]), float(spacing_xyz[0])),
                     int(config.grid_size), float(config.grid_spacing_mm))


def _grid_coordinates(grid: SliceGrid) -> Tuple[np.ndarray, np.ndarray]:
    """Input-voxel (y, x) coordinates of every network-grid voxel, each (size, size)."""
    offset_mm = (np.arange(grid.size) - (grid.size - 1) / 2.0) * grid.spacing_mm
    yy = grid.centre_yx[0] + offset_mm / grid.spacing_yx[0]
    xx = grid.centre_yx[1] + offset_mm / grid.spacing_yx[1]
    return np.meshgrid(yy, xx, indexing="ij")


def to_network_grid(volume: np.ndarray, grid: SliceGrid, fill: float) -> np.ndarray:
    """Every slice of a (z, y, x) volume resampled onto the network grid -> (z, size, size) float32: bilinear,
    after a Gaussian anti-aliasing blur (SD 0.5 (grid / input spacing - 1) input voxels) where the grid is
    coarser than the input; voxels outside the input get ``fill``. A mask is resampled as 0/1 floats."""
    yy, xx = _grid_coordinates(grid)
    coords = np.stack([yy, xx])
    sigma = [0.5 * max(grid.spacing_mm / s - 1.0, 0.0) for s in grid.spacing_yx]
    out = np.empty((volume.shape[0], grid.size, grid.size), dtype=np.float32)
    for z in range(volume.shape[0]):
        img = np.asarray(volume[z], dtype=np.float32)
        if max(sigma) > 0:
            img = ndimage.gaussian_filter(img, sigma)
        out[z] = ndimage.map_coordinates(img, coords, order=1, mode="constant", cval=fill)
    return out


def from_network_grid(volume: np.ndarray, grid: SliceGrid, shape_yx) -> np.ndarray:
    """(z, size, size) network-grid slices mapped back onto the input grid (bilinear) -> (z, y, x) float32;
    input voxels outside the network grid get 0."""
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    half = (grid.size - 1) / 2.0
    gy = half + (np.arange(ny) - grid.centre_yx[0]) * grid.spacing_yx[0] / grid.spacing_mm
    gx = half + (np.arange(nx) - grid.centre_yx[1]) * grid.spacing_yx[1] / grid.spacing_mm
    coords = np.stack(np.meshgrid(gy, gx, indexing="ij"))
    return np.stack([ndimage.map_coordinates(np.asarray(v, np.float32), coords, order=1, mode="constant", cval=0.0)
                     for v in volume]).astype(np.float32)


def network_input(t1: np.ndarray, spacing_xyz, config: XNetConfig) -> Tuple[np.ndarray, SliceGrid, np.ndarray]:
    """(normalised slices on the network grid (z, size, size) float32, the grid, the head mask (z, y, x))."""
    head = head_mask(t1)
    normalised = normalise_t1(t1, head, config.clip_percentiles)
    grid = slice_grid(head, spacing_xyz, config)
    fill = float(normalised[~head].min()) if (~head).any() else float(normalised.min())
    return to_network_grid(normalised, grid, fill), grid, head


# ---------------------------------------------------------------------------------------------- network

def load_model(name: str = MODEL_NAME, folder: Optional[Path] = None) -> Tuple[XNet, dict]:
    """The network of manifest entry ``name`` (sha256 checked) and its info dict; WeightsError otherwise."""
    return load_checkpoint(name, build_model, folder=folder, label=f"X-Net ({name})")


@torch.no_grad()
def predict_probability(model: XNet, slices: np.ndarray, device: torch.device = torch.device("cpu"),
                        batch: int = SLICES_PER_BATCH) -> np.ndarray:
    """Lesion probability (z, size, size) float32 of normalised network-grid slices (z, size, size)."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    probs = [model.probabilities(x[i:i + batch].to(device))[:, 1].cpu() for i in range(0, x.shape[0], batch)]
    return torch.cat(probs).numpy().astype(np.float32)


def segment_with_model(model: XNet, t1: np.ndarray, spacing_xyz, device: torch.device = torch.device("cpu")
                       ) -> Tuple[np.ndarray, np.ndarray, dict]:
    """(lesion mask (z, y, x) bool, lesion probability (z, y, x) float32, info) of a checked T1 volume by a
    loaded network (steps 1-4 of the module doc); only slices holding head go through the network."""
    cfg = model.config
    t0 = time.perf_counter()
    slices, grid, head = network_input(t1, spacing_xyz, cfg)
    t_pre = time.perf_counter() - t0
    t0 = time.perf_counter()
    in_head = np.flatnonzero(head.any(axis=(1, 2)))
    prob_grid = np.zeros(slices.shape, dtype=np.float32)
    if in_head.size:
        model.to(device)
        prob_grid[in_head] = predict_probability(model, slices[in_head], device)
        model.to("cpu")
    t_net = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob = from_network_grid(prob_grid, grid, t1.shape[1:])
    mask = (prob > cfg.threshold) & head
    t_post = time.perf_counter() - t0
    info = {"device": str(device), "grid_centre_yx_voxels": [round(c, 2) for c in grid.centre_yx],
            "grid": {"size": grid.size, "spacing_mm": grid.spacing_mm},
            "timings_s": {"preprocessing": round(t_pre, 3), "network": round(t_net, 3),
                          "postprocessing": round(t_post, 3)}}
    return mask, prob, info


def segment_xnet(t1: np.ndarray, spacing_xyz, device: Optional[str] = "auto", folder: Optional[Path] = None,
                 model_name: str = MODEL_NAME) -> Tuple[np.ndarray, Dict[str, np.ndarray], dict]:
    """(lesion_mask, {'lesion_probability': ...}, info) of one T1 volume (see module doc)."""
    image = check_t1(t1)
    spacing = check_spacing(spacing_xyz, "X-Net")
    model, model_info = load_model(model_name, folder)
    mask, prob, run_info = segment_with_model(model, image, spacing, resolve_device(device))
    info = {"model": model_name, "version": model_info["version"], "sha256": model_info["sha256"],
            "file": model_info["file"], **run_info,
            "lesion_ml": float(mask.sum()) * float(np.prod(spacing)) / 1000.0}
    return mask, {"lesion_probability": prob}, info
