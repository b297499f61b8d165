"""Classic automatic AIF/VOF selection, no network needed (Mouridsen et al., MRM 2006, adapted to CT).

AIF: among intracranial voxels away from bone, keep the strong enhancers (peak above tissue's range),
drop the roughest curves (noise, motion at bone edges), cluster the area-normalised curves with k-means
twice, each time keeping the cluster with the earliest first moment (the arterial shape), and average
the highest-peak voxels of the final cluster.
VOF: among the strongest enhancers whose peak comes clearly after the AIF's, the voxels with the largest
area (the venous sinus, large enough to be free of partial volume).
Both come back as probability volumes (uniform over the chosen voxels, sum 1), as AIFNet's do.
"""
import numpy as np
from scipy import ndimage

from AIFSelectorLib.ctp_series import CTPSeries
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.input_functions.functions import InputFunctions, pvol_from_voxels, weighted_curve
from AIFSelectorLib.prepare.preprocessing import VESSEL_PEAK_HU, curve_features, enhancement


def candidate_curves(series: CTPSeries, intracranial: np.ndarray, baseline_hu: np.ndarray,
                     peak_enh_hu: np.ndarray, min_peak_hu: float = VESSEL_PEAK_HU, min_voxels: int = 100):
    """The strong enhancers among intracranial voxels: indices (n, 3) zyx and enhancement curves (n, t).

    Vessels enhance far more than tissue (~10-40 HU), so candidates are voxels whose peak enhancement
    exceeds ``min_peak_hu``; when fewer than ``min_voxels`` do (a weak bolus), the ``min_voxels``
    strongest. Voxels within 2 voxels of the skull are left out (partial volume with bone, motion).
    peak_enh_hu: (z, y, x) peak enhancement of every voxel.
    """
    away = ndimage.binary_erosion(intracranial, np.ones((1, 5, 5), bool))
    idx = np.argwhere(away)
    if len(idx) == 0:
        raise InputError("no intracranial soft tissue found to select an AIF from: is this a head CT perfusion series?")
    peak = peak_enh_hu[tuple(idx.T)]
    strong = np.flatnonzero(peak > min_peak_hu)
    if len(strong) < min_voxels:
        strong = np.argsort(peak)[::-1][:min_voxels]
    idx = idx[strong]
    z, y, x = idx.T
    curves = enhancement(series.data[:, z, y, x], baseline_hu[z, y, x]).T
    return idx, curves


def _earliest_cluster(shapes: np.ndarray, m1: np.ndarray, k: int, seed: int, min_size: int = 5) -> np.ndarray:
    """Boolean selection of the k-means cluster (on area-normalised curves) with the lowest mean first
    moment among clusters of at least ``min_size`` curves; all True when there are too few to cluster."""
    if len(shapes) < 2 * k * min_size:
        return np.ones(len(shapes), bool)
    from scipy.cluster.vq import kmeans2  # imported here: 0.15 s that commands given an AIF file do not need
    _, labels = kmeans2(shapes.astype(np.float64), k, minit="++", seed=np.random.default_rng(seed))
    sizes = np.bincount(labels, minlength=k)
    means = [m1[labels == c].mean() if sizes[c] >= min_size else np.inf for c in range(k)]
    return labels == int(np.argmin(means))


def select_classic(series: CTPSeries, intracranial: np.ndarray, baseline_hu: np.ndarray,
                   peak_enh_hu: np.ndarray, n_aif: int = 12, n_vof: int = 12, k: int = 5, seed: int = 0) -> InputFunctions:
    """AIF and VOF of a uniformly sampled series (see module doc). intracranial: (z, y, x) bool;
    baseline_hu, peak_enh_hu: (z, y, x) pre-contrast HU and peak enhancement."""
    dt = series.dt_s
    idx, curves = candidate_curves(series, intracranial, baseline_hu, peak_enh_hu)
    f = curve_features(curves, dt)

    smooth_enough = f["roughness"] <= np.quantile(f["roughness"], 0.75)
    positive = f["area"] > 0
    sel = np.flatnonzero(smooth_enough & positive)
    if len(sel) == 0:
        raise InputError("no enhancing voxels: the series shows no contrast bolus")
    shapes = curves[sel] / f["area"][sel, None]
    for round_ in range(2):
        chosen = _earliest_cluster(shapes, f["m1"][sel], k, seed + round_)
        sel, shapes = sel[chosen], shapes[chosen]
    aif_vox = sel[np.argsort(f["peak"][sel])[::-1][:n_aif]]
    aif_pvol = pvol_from_voxels(series.shape_zyx, idx[aif_vox])

    aif_ttp = float(np.median(f["ttp"][aif_vox]))
    late = np.flatnonzero(positive & (f["ttp"] >= aif_ttp + 2.0) & smooth_enough)
    warnings = []
    vof_pvol = None
    if len(late):
        vof_vox = late[np.argsort(f["area"][late])[::-1][:n_vof]]
        vof_pvol = pvol_from_voxels(series.shape_zyx, idx[vof_vox])
    else:
        warnings.append("no venous voxels found: the AIF is not corrected for partial volume")
    return InputFunctions(
        times_s=series.times_s.copy(),
        aif_hu=weighted_curve(series, aif_pvol),
        vof_hu=None if vof_pvol is None else weighted_curve(series, vof_pvol),
        aif_pvol=aif_pvol, vof_pvol=vof_pvol, method="classic", warnings=warnings,
        details={"n_candidates": int(len(idx)), "n_aif_voxels": int(len(aif_vox))})
