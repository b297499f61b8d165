"""The AIFSelector stages on a whole series: prepare (bolus, baseline, masks), input functions, maps.

Each stage is a function, so the Slicer Logic can re-run one (a corrected AIF → new maps) without the
others. Memory stays bounded: every pass over the 4D data goes slab by slab.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from .aif_quality import aif_quality_flags
from .constants import DENOISE_SIGMA_MM, TMAX_THRESHOLD_S
from .ctp_series import CTPSeries
from .denoising import DenoisedCurves, denoise
from .errors import InputError
from .input_functions import InputFunctions, baseline_removed, vof_scale
from .perfusion_maps import Physiology, maps_from_curves, relative_maps
from .preprocessing import (AIR_HU, BONE_HU, CSF_HU, VESSEL_PEAK_HU, Bolus, baseline_image, brain_mask,
                            detect_bolus, enhancement, global_curve, slabs)

MAP_NAMES = ("cbf", "cbv", "mtt", "tmax", "ttp")
MAPS_REVISION = 2
"""Raised whenever the maps of a series change (2: edge-preserving denoising, CSF on the temporal mean), so that
caches of maps (training data) are not reused across versions."""
VESSEL_CBV_ML_100G = 8.0
"""Voxels with CBV above this are vessels, not tissue (parenchymal CBV stays below ~6 ml/100 g)."""


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
    for zs in slabs(series.shape_zyx):
        block = series.data[:, zs].astype(np.float32)
        peak[zs] = block.max(axis=0) - base[zs]
        mean[zs] = block.mean(axis=0)
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


@dataclass
class PerfusionMaps:
    """Maps (z, y, x) float32 named cbf, cbv, mtt, tmax, ttp, rcbf, rcbv (zero outside tissue), the AIF
    actually deconvolved (enhancement, HU, after partial-volume scaling) and the reference values."""

    maps: Dict[str, np.ndarray]
    tissue: np.ndarray
    aif_enh_hu: np.ndarray
    aif_scale: float
    control: Dict[str, float]
    quality_flags: Dict[str, bool] = field(default_factory=dict)


def deconvolution_aif(prepared: PreparedSeries, functions: InputFunctions):
    """The AIF to deconvolve with: baseline removed and scaled to the VOF's area. Returns (aif_enh, scale)."""
    n0 = prepared.bolus.n_baseline
    aif = baseline_removed(functions.aif_hu, n0)
    vof = None if functions.vof_hu is None else baseline_removed(functions.vof_hu, n0)
    scale = vof_scale(aif, vof)
    return (aif * scale).astype(np.float32), scale


def compute_maps(prepared: PreparedSeries, functions: InputFunctions, method: str = "osvd",
                 smooth_mm: float = DENOISE_SIGMA_MM, physiology: Physiology = Physiology(),
                 tmax_threshold_s: float = TMAX_THRESHOLD_S, device: Optional[str] = None,
                 progress: Optional[Callable] = None, **deconvolution_options) -> PerfusionMaps:
    """Perfusion maps of the prepared series with the given input functions.

    smooth_mm: in-plane spatial SD (mm) of the edge-preserving denoising of the tissue curves before
    deconvolution (:mod:`denoising`; 0: raw curves). progress: optional callable(fraction_done) per slab.
    Vessels the maps reveal (CBV > VESSEL_CBV_ML_100G) join the vessel mask and leave the tissue.
    """
    series = prepared.series
    aif_enh, scale = deconvolution_aif(prepared, functions)
    shape = series.shape_zyx
    maps = {k: np.zeros(shape, np.float32) for k in MAP_NAMES}
    tissue = prepared.tissue.copy()
    denoised = prepared.denoised(smooth_mm) if smooth_mm > 0 else None
    all_slabs = list(slabs(shape, max_voxels=1 << 18))
    for i, zs in enumerate(all_slabs):
        m = tissue[zs]
        if m.any():
            if denoised is not None:
                curves = denoised.curves(zs, m)
            else:
                curves = enhancement(series.data[:, zs], prepared.baseline_hu[zs])[:, m].T
            out = maps_from_curves(curves, aif_enh, series.dt_s, method=method,
                                   physiology=physiology, device=device, **deconvolution_options)
            for k in MAP_NAMES:
                maps[k][zs][m] = out[k]
        if progress is not None:
            progress((i + 1) / len(all_slabs))
    big = tissue & (maps["cbv"] > VESSEL_CBV_ML_100G)
    prepared.vessels |= big
    tissue &= ~big
    for k in MAP_NAMES:
        maps[k][~tissue] = 0.0
    control = relative_maps(maps, tissue, tmax_threshold_s)
    for k in ("rcbf", "rcbv"):
        maps[k][~tissue] = 0.0
    flags = aif_quality_flags(aif_enh, series.dt_s, prepared.bolus.arrival_s, has_vof=functions.vof_hu is not None)
    return PerfusionMaps(maps, tissue, aif_enh, scale, control, flags)
