"""Arterial and venous input functions as every selector returns them (classic, AIFNet, manual, file):
the curves and the probability volumes Pvol that weight the voxels they come from.

AIF(t) = sum over voxels of Pvol * CTP(t); Pvol is non-negative and sums to 1.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from AIFSelectorLib.ctp_series import CTPSeries
from AIFSelectorLib.prepare.preprocessing import slabs


@dataclass
class InputFunctions:
    """AIF and VOF of one series.

    times_s: (t,) seconds. aif_hu, vof_hu: (t,) absolute HU (baseline included), Pvol-weighted.
    aif_pvol, vof_pvol: (z, y, x) float32 probability volumes (None when the curve came from a file).
    method: 'classic', 'aifnet', 'manual' or 'file'. warnings: human-readable notes for the report.
    """

    times_s: np.ndarray
    aif_hu: np.ndarray
    vof_hu: Optional[np.ndarray] = None
    aif_pvol: Optional[np.ndarray] = None
    vof_pvol: Optional[np.ndarray] = None
    method: str = "classic"
    warnings: List[str] = field(default_factory=list)
    details: Dict[str, object] = field(default_factory=dict)


def weighted_curve(series: CTPSeries, pvol: np.ndarray) -> np.ndarray:
    """sum_v Pvol(v) * CTP(t, v): the (t,) curve in HU that a probability volume (z, y, x) selects."""
    out = np.zeros(series.n_frames)
    for zs in slabs(series.shape_zyx):
        w = pvol[zs]
        nz = w > 0
        if nz.any():
            out += series.data[:, zs][:, nz].astype(np.float64) @ w[nz].astype(np.float64)
    return out


def pvol_from_voxels(shape_zyx, voxels_zyx: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """A probability volume (z, y, x) float32 over the given voxel indices (n, 3), uniform unless
    non-negative ``weights`` are given; sums to 1."""
    voxels_zyx = np.asarray(voxels_zyx, dtype=int).reshape(-1, 3)
    if len(voxels_zyx) == 0:
        raise ValueError("no voxels to build an input function from")
    w = np.ones(len(voxels_zyx)) if weights is None else np.clip(np.asarray(weights, float), 0, None)
    if w.sum() <= 0:
        w = np.ones(len(voxels_zyx))
    pvol = np.zeros(shape_zyx, dtype=np.float64)
    np.add.at(pvol, tuple(voxels_zyx.T), w)
    return (pvol / pvol.sum()).astype(np.float32)


def neighbourhood(shape_zyx, centres_zyx: Sequence[Sequence[int]], radius_vox: int = 0) -> np.ndarray:
    """Voxel indices (n, 3) of in-plane squares of half-width ``radius_vox`` around each centre, clipped
    to the volume (for manual picking of a vessel and its neighbours)."""
    out = []
    r = range(-radius_vox, radius_vox + 1)
    for z, y, x in np.asarray(centres_zyx, dtype=int).reshape(-1, 3):
        for dy in r:
            for dx in r:
                yy, xx = y + dy, x + dx
                if 0 <= z < shape_zyx[0] and 0 <= yy < shape_zyx[1] and 0 <= xx < shape_zyx[2]:
                    out.append((z, yy, xx))
    if not out:
        raise ValueError("every picked point lies outside the volume")
    return np.unique(np.asarray(out), axis=0)


def manual_input_functions(series: CTPSeries, artery_zyx, vein_zyx=None, radius_vox: int = 0) -> InputFunctions:
    """AIF (and VOF) from voxels a user picked: uniform Pvol over each point's neighbourhood."""
    aif_pvol = pvol_from_voxels(series.shape_zyx, neighbourhood(series.shape_zyx, artery_zyx, radius_vox))
    vof_pvol = None
    if vein_zyx is not None and len(np.asarray(vein_zyx).reshape(-1)):
        vof_pvol = pvol_from_voxels(series.shape_zyx, neighbourhood(series.shape_zyx, vein_zyx, radius_vox))
    return InputFunctions(
        times_s=series.times_s.copy(),
        aif_hu=weighted_curve(series, aif_pvol),
        vof_hu=None if vof_pvol is None else weighted_curve(series, vof_pvol),
        aif_pvol=aif_pvol, vof_pvol=vof_pvol, method="manual")


def baseline_removed(curve_hu: np.ndarray, n_baseline: int) -> np.ndarray:
    """Enhancement (t,) HU: the curve minus the mean of its first n_baseline frames."""
    curve_hu = np.asarray(curve_hu, dtype=np.float64)
    return curve_hu - curve_hu[:max(1, n_baseline)].mean()


def vof_scale(aif_enh: np.ndarray, vof_enh: Optional[np.ndarray]) -> float:
    """Partial-volume correction factor for the AIF: area(VOF)/area(AIF), at least 1.

    Arterial voxels are partial-volume mixtures, the large venous sinus is not, and tracer conservation
    gives both true curves the same area; a VOF smaller than the AIF (a truncated or partial-volume
    VOF) gives no correction (1.0) rather than shrinking the AIF.
    """
    if vof_enh is None:
        return 1.0
    a = float(np.sum(np.clip(aif_enh, 0, None)))
    v = float(np.sum(np.clip(vof_enh, 0, None)))
    if a <= 0:
        return 1.0
    return max(1.0, v / a)
