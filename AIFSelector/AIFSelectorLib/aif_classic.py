"""Classic automatic AIF/VOF selection, no network needed (Mouridsen et al., MRM 2006, adapted to CT).

AIF: among intracranial voxels away from bone, keep the strongest enhancers (top fraction by peak),
drop the roughest curves (noise, motion at bone edges), cluster the area-normalised curves with k-means
twice, each time keeping the cluster with the earliest first moment (the arterial shape), and average
the highest-peak voxels of the final cluster.
VOF: among the strongest enhancers whose peak comes clearly after the AIF's, the voxels with the largest
area (the venous sinus, large enough to be free of partial volume).
Both come back as probability volumes (uniform over the chosen voxels, sum 1), as AIFNet's do.
"""
import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from .ctp_series import CTPSeries
from .errors import InputError
from .input_functions import InputFunctions, pvol_from_voxels, weighted_curve
from .preprocessing import curve_features, enhancement


def candidate_curves(series: CTPSeries, intracranial: np.ndarray, baseline_hu: np.ndarray,
                     peak_enh_hu: np.ndarray, top_fraction: float = 0.02, min_voxels: int = 200):
    """The strongest-enhancing intracranial voxels: indices (n, 3) zyx and enhancement curves (n, t).
    peak_enh_hu: (z, y, x) peak enhancement of every voxel.

    Voxels within 2 voxels of the skull are left out (partial volume with bone, motion at its edge).
    """
    away = ndimage.binary_erosion(intracranial, np.ones((1, 5, 5), bool))
    idx = np.argwhere(away)
    if len(idx) == 0:
        raise InputError("no intracranial soft tissue found to select an AIF from: is this a head CT perfusion series?")
    peak = peak_enh_hu[tuple(idx.T)]
    n_keep = int(min(len(idx), max(min_voxels, top_fraction * len(idx))))
    keep = np.argsort(peak)[::-1][:n_keep]
    idx = idx[keep]
    z, y, x = idx.T
    curves = enhancement(series.data[:, z, y, x], baseline_hu[z, y, x]).T
    return idx, curves


def _earliest_cluster(shapes: np.ndarray, m1: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Boolean selection of the k-means cluster (on area-normalised curves) with the lowest mean first
    moment; all True when there are too few curves to cluster."""
    if len(shapes) < 2 * k:
        return np.ones(len(shapes), bool)
    _, labels = kmeans2(shapes.astype(np.float64), k, minit="++", seed=np.random.default_rng(seed))
    means = [m1[labels == c].mean() if np.any(labels == c) else np.inf for c in range(k)]
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
