"""Core and penumbra from perfusion maps, island removal and the volumes a stroke team decides on.

core = rCBF < core_rcbf (0.38 by default, 0.30 as RAPID) inside Tmax > tmax_s (6 s);
penumbra = Tmax > tmax_s minus core; connected islands smaller than ``min_island_ml`` are dropped.
Mismatch ratio = (core + penumbra) / core volume; mismatch volume = penumbra volume (ml).
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

from AIFSelectorLib.constants import CORE_RCBF, TMAX_THRESHOLD_S
from AIFSelectorLib.prepare.preprocessing import bounding_box

MIN_ISLAND_ML = 0.2
"""Connected regions smaller than this (ml) are noise, not lesion."""


@dataclass(frozen=True)
class Thresholds:
    core_rcbf: float = CORE_RCBF
    tmax_s: float = TMAX_THRESHOLD_S
    min_island_ml: float = MIN_ISLAND_ML


def core_penumbra(rcbf: np.ndarray, tmax_s: np.ndarray, brain_mask: np.ndarray,
                  core_rcbf: float = CORE_RCBF,
                  tmax_threshold_s: float = TMAX_THRESHOLD_S) -> Tuple[np.ndarray, np.ndarray]:
    """The decision rule: core = rCBF < core_rcbf inside Tmax > threshold; penumbra = Tmax > threshold
    minus core. Both restricted to the brain mask. Returns two boolean arrays."""
    at_risk = np.asarray(brain_mask, bool) & (np.asarray(tmax_s) > tmax_threshold_s)
    core = at_risk & (np.asarray(rcbf) < core_rcbf)
    return core, at_risk & ~core


def remove_islands(mask: np.ndarray, voxel_ml: float, min_volume_ml: float) -> np.ndarray:
    """mask (z, y, x) without its 3D-connected (26-neighbour) components smaller than min_volume_ml."""
    mask = np.asarray(mask, bool)
    if min_volume_ml <= 0 or not mask.any():
        return mask.copy()
    box = bounding_box(mask)  # labelled within the mask's bounding box only
    labels, n = ndimage.label(mask[box], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_ml
    keep = sizes >= min_volume_ml
    keep[0] = False
    out = np.zeros(mask.shape, bool)
    out[box] = keep[labels]
    return out


def decide(rcbf: np.ndarray, tmax_s: np.ndarray, tissue: np.ndarray, voxel_ml: float,
           thresholds: Thresholds = Thresholds()):
    """Core and penumbra masks (z, y, x) bool after island removal; the penumbra keeps what the core's
    islands lost only where Tmax is over threshold."""
    core, penumbra = core_penumbra(rcbf, tmax_s, tissue, thresholds.core_rcbf, thresholds.tmax_s)
    at_risk = remove_islands(core | penumbra, voxel_ml, thresholds.min_island_ml)
    core = remove_islands(core & at_risk, voxel_ml, thresholds.min_island_ml)
    return core, at_risk & ~core


def lesion_volumes(core: np.ndarray, penumbra: np.ndarray, voxel_ml: float) -> Dict[str, Optional[float]]:
    """Volumes in ml and the mismatch (ratio None when there is no core)."""
    core_ml = float(np.count_nonzero(core)) * voxel_ml
    pen_ml = float(np.count_nonzero(penumbra)) * voxel_ml
    return {
        "core_ml": round(core_ml, 2),
        "penumbra_ml": round(pen_ml, 2),
        "hypoperfused_ml": round(core_ml + pen_ml, 2),
        "mismatch_volume_ml": round(pen_ml, 2),
        "mismatch_ratio": round((core_ml + pen_ml) / core_ml, 2) if core_ml > 0 else None,
    }


HIR_TMAX_S = 10.0
"""The hypoperfusion intensity ratio's severe threshold: HIR = volume(Tmax > 10 s) / volume(Tmax > 6 s)
(Olivot et al., Stroke 2014; a HIR above 0.4 marks poor collaterals)."""


def hypoperfusion_intensity_ratio(tmax_s: np.ndarray, at_risk: np.ndarray, voxel_ml: float,
                                  severe_tmax_s: float = HIR_TMAX_S) -> Dict[str, Optional[float]]:
    """{'tmax_severe_ml': volume (ml) of the at-risk tissue (core + penumbra, Tmax over the threshold) with
    Tmax > severe_tmax_s, 'hypoperfusion_intensity_ratio': that over the at-risk volume (None without one)}."""
    at_risk = np.asarray(at_risk, bool)
    severe = at_risk & (np.asarray(tmax_s) > severe_tmax_s)
    n_risk, n_severe = int(np.count_nonzero(at_risk)), int(np.count_nonzero(severe))
    return {"tmax_severe_ml": round(n_severe * voxel_ml, 2),
            "hypoperfusion_intensity_ratio": round(n_severe / n_risk, 3) if n_risk else None}


INTERVAL_Z = 1.96
"""Standard deviations either side of the posterior mean for the volume ranges (a 95 % interval per voxel)."""


def volume_ranges(maps: Dict[str, np.ndarray], tissue: np.ndarray, cbf_control: float, voxel_ml: float,
                  thresholds: Thresholds = Thresholds(), z: float = INTERVAL_Z) -> Dict[str, list]:
    """The volumes [low, high] (ml) of core, hypoperfused tissue (core + penumbra), penumbra and control tissue
    (Tmax below threshold) that the posterior SDs imply. The rule is applied twice: to CBF + z SD and Tmax - z SD
    in every voxel (the least tissue at risk), and to CBF - z SD and Tmax + z SD (the most), with the control CBF
    of the maps held fixed. Core, hypoperfused and control volumes move one way between the two; the penumbra, their
    difference, can shrink either way, so its range is hypoperfused minus core at their opposite ends.
    maps: 'cbf', 'cbf_sd' [ml/100 g/min], 'tmax', 'tmax_sd' [s], (z, y, x)."""
    found = []
    for sign in (1.0, -1.0):
        rcbf = (maps["cbf"] + sign * z * maps["cbf_sd"]) / cbf_control
        tmax = maps["tmax"] - sign * z * maps["tmax_sd"]
        core, penumbra = decide(rcbf, tmax, tissue, voxel_ml, thresholds)
        control = np.asarray(tissue, bool) & (tmax < thresholds.tmax_s)
        found.append([float(np.count_nonzero(m)) * voxel_ml for m in (core, core | penumbra, control)])
    (core_lo, hyp_lo, control_hi), (core_hi, hyp_hi, control_lo) = found
    ranges = {"core_ml": (core_lo, core_hi), "hypoperfused_ml": (hyp_lo, hyp_hi),
              "penumbra_ml": (max(0.0, hyp_lo - core_hi), hyp_hi - core_lo), "control_ml": (control_lo, control_hi)}
    return {k: sorted(round(v, 2) for v in pair) for k, pair in ranges.items()}
