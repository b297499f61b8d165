"""Stage 1 on a whole series: bolus arrival, baseline and peak images, brain and vessel masks, and the
denoised tissue curves (computed once, kept for every later deconvolution).

Memory stays bounded: every pass over the 4D data goes slab by slab.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from AIFSelectorLib.ctp_series import CTPSeries
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.prepare.denoising import DenoisedCurves, denoise
from AIFSelectorLib.prepare.preprocessing import (AIR_HU, BONE_HU, CSF_HU, VESSEL_PEAK_HU, Bolus, baseline_image,
                                                  brain_mask, detect_bolus, global_curve, on_slabs)


@dataclass
class PreparedSeries:
    """A uniformly sampled series with what every later stage needs.

    baseline_hu, mean_hu, peak_enh_hu: (z, y, x) float32 pre-contrast HU, temporal-mean HU and peak
    enhancement (HU). intracranial, brain, vessels: (z, y, x) bool; brain = parenchyma (CSF, bone, air out);
    tissue = brain without vessels: where maps are computed.
    """

    series: CTPSeries
    bolus: Bolus
    baseline_hu: np.ndarray
    mean_hu: np.ndarray
    peak_enh_hu: np.ndarray
    intracranial: np.ndarray
    brain: np.ndarray
    vessels: np.ndarray
    warnings: List[str] = field(default_factory=list)
    """What a user should know about the preparation (e.g. voxels taken out of a user's brain mask)."""
    _denoised: Dict[float, DenoisedCurves] = field(default_factory=dict, repr=False)

    @property
    def tissue(self) -> np.ndarray:
        return self.brain & ~self.vessels

    def denoised(self, sigma_mm: float) -> DenoisedCurves:
        """The tissue curves denoised at this spatial scale (:mod:`denoising`), computed on first use and kept:
        they do not depend on the AIF, so maps recomputed with a corrected AIF or another method reuse them."""
        key = float(sigma_mm)
        if key not in self._denoised:
            self._denoised[key] = denoise(self.series, self.baseline_hu, self.mean_hu, self.tissue, key)
        return self._denoised[key]


def prepare(series: CTPSeries, brain_override: Optional[np.ndarray] = None) -> PreparedSeries:
    """Bolus arrival, baseline image, peak enhancement, brain and vessel masks of a uniform series.

    brain_override: a user mask (z, y, x) replacing the automatic parenchyma mask (same grid).
    """
    if not series.is_uniform:
        raise InputError("frame times are irregular: resample the series to a uniform grid first")
    bolus = detect_bolus(global_curve(series), series.times_s)
    base = baseline_image(series, bolus.n_baseline)
    peak = np.empty(series.shape_zyx, np.float32)
    mean = np.empty(series.shape_zyx, np.float32)

    def peak_and_mean(zs):
        block = series.data[:, zs]
        peak[zs] = block.max(axis=0) - base[zs]
        mean[zs] = block.mean(axis=0, dtype=np.float32)

    on_slabs(peak_and_mean, series.shape_zyx)
    intracranial, brain = brain_mask(base, mean, series.geometry.spacing_mm)
    warnings = []
    if brain_override is not None:
        brain, warning = checked_user_mask(brain_override, base, mean, series.shape_zyx)
        intracranial = intracranial | brain
        warnings += [warning] if warning else []
    if not brain.any():
        raise InputError("no brain tissue found (HU between CSF and bone): is this a head CT perfusion series?")
    vessels = intracranial & (peak > VESSEL_PEAK_HU)
    return PreparedSeries(series, bolus, base, mean, peak, intracranial, brain, vessels, warnings)


USER_MASK_MAX_AIR_BONE = 0.05
"""A user brain mask with more than this fraction of air (< AIR_HU) or bone (> BONE_HU) voxels is refused:
it is not a brain mask (a head or field-of-view mask; a careful brain mask has almost none)."""


def checked_user_mask(mask, baseline_hu: np.ndarray, mean_hu: np.ndarray, shape_zyx):
    """(mask, warning) for a user's brain mask (z, y, x): refused (InputError) when more than
    USER_MASK_MAX_AIR_BONE of it is air or bone on the pre-contrast image; otherwise its air, bone and CSF
    voxels (temporal mean below CSF_HU) are taken out, which the warning (or '') reports."""
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(shape_zyx):
        raise InputError(f"the mask has shape {mask.shape}, the series {tuple(shape_zyx)}")
    n = int(np.count_nonzero(mask))
    if n == 0:
        raise InputError("the brain mask is empty")
    air_bone = mask & ((baseline_hu < AIR_HU) | (baseline_hu > BONE_HU))
    fraction = np.count_nonzero(air_bone) / n
    if fraction > USER_MASK_MAX_AIR_BONE:
        raise InputError(f"the brain mask takes in {100 * fraction:.0f} % air or bone voxels (pre-contrast "
                         f"HU below {AIR_HU:g} or above {BONE_HU:g}): give a mask of brain tissue only")
    keep = mask & ~air_bone & (mean_hu >= CSF_HU)
    dropped = n - int(np.count_nonzero(keep))
    warning = "" if dropped == 0 else (f"{dropped} voxels ({100 * dropped / n:.1f} %) of the brain mask are air, "
                                       f"bone or CSF and were left out of the maps")
    return keep, warning


