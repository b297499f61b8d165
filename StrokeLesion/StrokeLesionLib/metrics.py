"""Segmentation and image-synthesis metrics, defined once for every lesion model and its evaluation.

Arrays are indexed (z, y, x) (or (y, x) for a single slice); voxel spacing is given as (x, y, z) mm, as
everywhere in the project (``VolumeGeometry.spacing_mm``), and is reversed here to match the array axes.

Overlap (masks: any array, non-zero = lesion):
- ``dice`` = 2 |A n B| / (|A| + |B|); two empty masks agree perfectly: 1.0.
- ``precision`` = TP / |pred|, ``recall`` = TP / |truth|; both empty: 1.0; otherwise a ratio 0 / 0
  (nothing predicted, or no lesion to find) is undefined: nan (tables average with ``nanmean``).
- ``relative_volume_error`` = (|pred| - |truth|) / |truth| (signed, 0 = same volume); empty truth: 0.0
  when pred is empty too, else nan.

Surface distances (mm): the surface of a mask is its voxels with a face-neighbour outside it (a mask
touching the array border has its border voxels on the surface). For every surface voxel of A the
Euclidean distance to the nearest surface voxel of B is read from scipy's exact distance transform
computed with the voxel spacing, and vice versa.
- ``hausdorff_mm(a, b, spacing, percentile)`` = max(P(d(A->B)), P(d(B->A))): the classical Hausdorff
  distance for percentile 100, the usual HD95 for 95 (the percentile of each directed set, then the larger).
- ``assd_mm`` = mean of all distances of both directed sets (Heimann et al. 2009: sum of both / number of
  surface voxels of both).
Either mask empty: the distances are undefined: nan.

Image similarity (synthesised image ``a`` against the reference ``b``, e.g. pseudo DWI vs real DWI):
- ``ssim``: Wang et al. 2004, Gaussian window (sigma 1.5 voxels, truncated at 3.5 sigma), K1 = 0.01,
  K2 = 0.03, computed slice by slice in the (y, x) plane (the papers work on 2D slices); the SSIM map is
  averaged over the whole image, or over ``mask`` (lesion-local SSIM: the windows still see the
  neighbourhood of each masked voxel). Identical images: 1.
- ``psnr`` = 10 log10(L^2 / MSE) dB, MSE over the image or over ``mask``; identical images: inf.
The data range L is ``b.max() - b.min()`` over the whole reference image unless given, so global and
lesion-local values use the same scale. ``lesion_box`` gives the lesion's bounding box (with a margin)
as a mask, for the "local" region of the pseudo-DWI paper.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from AIFSelectorLib.errors import InputError

SSIM_SIGMA_VOX = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# ------------------------------------------------------------------------------------------------ overlap

def _masks(pred, truth) -> Tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(pred) != 0, np.asarray(truth) != 0
    if a.shape != b.shape:
        raise InputError(f"the masks differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _ratio(num: int, den: int, both_empty: bool) -> float:
    if both_empty:
        return 1.0
    return float(num) / float(den) if den else float("nan")


def dice(a, b) -> float:
    """Dice coefficient 2 |A n B| / (|A| + |B|) of two masks of one shape; 1.0 when both are empty."""
    a, b = _masks(a, b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def precision(pred, truth) -> float:
    """TP / |pred| (positive predictive value); 1.0 when both are empty, nan when only pred is empty."""
    p, t = _masks(pred, truth)
    n_p = int(p.sum())
    return _ratio(int(np.count_nonzero(p & t)), n_p, n_p == 0 and not t.any())


def recall(pred, truth) -> float:
    """TP / |truth| (sensitivity); 1.0 when both are empty, nan when only truth is empty."""
    p, t = _masks(pred, truth)
    n_t = int(t.sum())
    return _ratio(int(np.count_nonzero(p & t)), n_t, n_t == 0 and not p.any())


def relative_volume_error(pred, truth) -> float:
    """(|pred| - |truth|) / |truth|, signed (voxel counts, so the spacing cancels); 0.0 when both are
    empty, nan when only truth is empty."""
    p, t = _masks(pred, truth)
    n_p, n_t = int(p.sum()), int(t.sum())
    if n_t == 0:
        return 0.0 if n_p == 0 else float("nan")
    return (n_p - n_t) / n_t


# --------------------------------------------------------------------------------------- surface distance

def _sampling_zyx(spacing_xyz, ndim: int) -> Tuple[float, ...]:
    spacing = tuple(float(s) for s in np.ravel(spacing_xyz))
    if len(spacing) != ndim or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(f"the voxel spacing must be {ndim} positive numbers (x, y[, z]) mm for a {ndim}D "
                         f"mask, got {spacing_xyz}")
    return tuple(reversed(spacing))


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of a boolean mask with at least one face-neighbour outside it (border voxels included)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances_mm(a, b, spacing_xyz) -> Tuple[np.ndarray, np.ndarray]:
    """(d(A->B), d(B->A)): for every surface voxel of A the distance (mm) to the nearest surface voxel of
    B, and the other way round. Both masks must be non-empty."""
    a, b = _masks(a, b)
    if not a.any() or not b.any():
        raise InputError("surface distances need two non-empty masks")
    sampling = _sampling_zyx(spacing_xyz, a.ndim)
    sa, sb = surface(a), surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~sa, sampling=sampling)
    return to_b[sa], to_a[sb]


def hausdorff_mm(a, b, spacing_xyz, percentile: float = 100.0) -> float:
    """Symmetric Hausdorff distance in mm: max of the ``percentile`` (100: maximum, 95: HD95) of the two
    directed surface-distance sets; nan when either mask is empty."""
    if not 0.0 <= percentile <= 100.0:
        raise InputError(f"the Hausdorff percentile must lie in [0, 100], got {percentile}")
    a, b = _masks(a, b)
    if not a.any() or not b.any():
        return float("nan")
    d_ab, d_ba = surface_distances_mm(a, b, spacing_xyz)
    return _hausdorff(d_ab, d_ba, percentile)


def _hausdorff(d_ab: np.ndarray, d_ba: np.ndarray, percentile: float) -> float:
    return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))


def assd_mm(a, b, spacing_xyz) -> float:
    """Average symmetric surface distance in mm (mean over the surface voxels of both masks); nan when
    either mask is empty."""
    a, b = _masks(a, b)
    if not a.any() or not b.any():
        return float("nan")
    d_ab, d_ba = surface_distances_mm(a, b, spacing_xyz)
    return float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))


def segmentation_metrics(pred, truth, spacing_xyz) -> Dict[str, float]:
    """Every segmentation metric of one case: dice, precision, recall, hausdorff_mm, hausdorff95_mm,
    assd_mm, relative_volume_error, pred_ml, truth_ml (volumes in ml). pred, truth: (z, y, x) masks;
    spacing_xyz: (x, y, z) mm. Empty-mask conventions as in the module docstring."""
    p, t = _masks(pred, truth)
    voxel_ml = float(np.prod(_sampling_zyx(spacing_xyz, p.ndim))) / 1000.0
    out = {"dice": dice(p, t), "precision": precision(p, t), "recall": recall(p, t)}
    if p.any() and t.any():
        d_pt, d_tp = surface_distances_mm(p, t, spacing_xyz)
        out["hausdorff_mm"] = _hausdorff(d_pt, d_tp, 100.0)
        out["hausdorff95_mm"] = _hausdorff(d_pt, d_tp, 95.0)
        out["assd_mm"] = float((d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size))
    else:
        out.update(hausdorff_mm=float("nan"), hausdorff95_mm=float("nan"), assd_mm=float("nan"))
    out["relative_volume_error"] = relative_volume_error(p, t)
    out["pred_ml"] = float(p.sum()) * voxel_ml
    out["truth_ml"] = float(t.sum()) * voxel_ml
    return out


# ------------------------------------------------------------------------------------- image similarity

def _images(a, b, mask) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"the images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise InputError(f"SSIM/PSNR need 2D (y, x) or 3D (z, y, x) images, got shape {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("the images contain NaN or infinite values")
    if mask is not None:
        mask = np.asarray(mask) != 0
        if mask.shape != a.shape:
            raise InputError(f"the mask has shape {mask.shape}, the images {a.shape}")
        if not mask.any():
            raise InputError("the region mask for a local SSIM/PSNR is empty")
    return a, b, mask


def _data_range(b: np.ndarray, data_range: Optional[float]) -> float:
    if data_range is None:
        data_range = float(b.max() - b.min())
    if not data_range > 0:
        raise InputError("the data range of the reference image must be positive (a constant reference "
                         "image has none: pass data_range)")
    return float(data_range)


def ssim_map(a, b, data_range: Optional[float] = None) -> np.ndarray:
    """The SSIM of every voxel (its Gaussian window in the (y, x) plane), same shape as the images."""
    a, b, _ = _images(a, b, None)
    L = _data_range(b, data_range)
    sigma = (0.0,) * (a.ndim - 2) + (SSIM_SIGMA_VOX, SSIM_SIGMA_VOX)

    def blur(x):
        return ndimage.gaussian_filter(x, sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * L) ** 2, (SSIM_K2 * L) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim(a, b, mask=None, data_range: Optional[float] = None) -> float:
    """Mean SSIM of image ``a`` against the reference ``b`` (same shape, (z, y, x) or (y, x)), over the
    whole image or over ``mask`` (lesion-local SSIM); data range of ``b`` unless given."""
    a, b, mask = _images(a, b, mask)
    s = ssim_map(a, b, data_range)
    return float(s.mean() if mask is None else s[mask].mean())


def psnr(a, b, mask=None, data_range: Optional[float] = None) -> float:
    """Peak signal-to-noise ratio (dB) of ``a`` against the reference ``b``: 10 log10(L^2 / MSE), MSE over
    the image or over ``mask``; inf for identical images; L = data range of ``b`` unless given."""
    a, b, mask = _images(a, b, mask)
    L = _data_range(b, data_range)
    diff = (a - b) if mask is None else (a - b)[mask]
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(L * L / mse))


def lesion_box(lesion, margin_vox: Sequence[int] = (0, 8, 8)) -> np.ndarray:
    """A mask of the bounding box of ``lesion`` ((z, y, x), non-zero = lesion) grown by ``margin_vox``
    voxels per axis (z, y, x; the last two for a (y, x) slice) and clipped to the array: the "local"
    region around a lesion."""
    lesion = np.asarray(lesion) != 0
    if not lesion.any():
        raise InputError("the lesion mask is empty: there is no lesion region")
    margin = np.ravel(margin_vox).astype(int)
    margin = np.broadcast_to(margin, (lesion.ndim,)) if margin.size == 1 else margin[-lesion.ndim:]
    box = np.zeros(lesion.shape, dtype=bool)
    idx = np.nonzero(lesion)
    box[tuple(slice(max(int(i.min()) - m, 0), int(i.max()) + m + 1) for i, m in zip(idx, margin))] = True
    return box


def synthesis_metrics(synth, reference, lesion=None, data_range: Optional[float] = None) -> Dict[str, float]:
    """Global SSIM and PSNR of a synthesised image against its reference, and, when a non-empty
    ``lesion`` mask is given, the lesion-local ones (over the lesion's bounding box, ``lesion_box``):
    keys ssim, psnr_db, ssim_lesion, psnr_lesion_db."""
    out = {"ssim": ssim(synth, reference, data_range=data_range),
           "psnr_db": psnr(synth, reference, data_range=data_range)}
    if lesion is not None and np.any(lesion):
        box = lesion_box(lesion)
        out["ssim_lesion"] = ssim(synth, reference, box, data_range)
        out["psnr_lesion_db"] = psnr(synth, reference, box, data_range)
    return out
