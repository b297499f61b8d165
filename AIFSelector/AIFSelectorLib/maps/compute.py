"""Stage 4 on a whole series: the perfusion maps of a prepared series with given input functions.

A function of its inputs: the prepared series is not changed (the vessels the maps reveal are returned in
:class:`PerfusionMaps`), so the Slicer Logic and scripts re-run it with a corrected AIF or another method.
Memory stays bounded: every pass over the 4D data goes slab by slab.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np

from AIFSelectorLib.constants import DENOISE_SIGMA_MM, TMAX_THRESHOLD_S
from AIFSelectorLib.input_functions.functions import InputFunctions, baseline_removed, vof_scale
from AIFSelectorLib.input_functions.quality import aif_quality_flags
from AIFSelectorLib.maps.perfusion_maps import Physiology, maps_from_curves, relative_maps
from AIFSelectorLib.prepare.prepared import PreparedSeries
from AIFSelectorLib.prepare.preprocessing import enhancement, slabs

MAP_NAMES = ("cbf", "cbv", "mtt", "tmax", "ttp")
MAPS_REVISION = 3
"""Raised whenever the maps of a series change (2: edge-preserving denoising, CSF on the temporal mean; 3: matrices
finer than the filter grid denoised on its blocks), so that caches of maps (training data) are not reused across
versions."""
VESSEL_CBV_ML_100G = 8.0
"""Voxels with CBV above this are vessels, not tissue (parenchymal CBV stays below ~6 ml/100 g)."""


@dataclass
class PerfusionMaps:
    """Maps (z, y, x) float32 named cbf, cbv, mtt, tmax, ttp, rcbf, rcbv (zero outside tissue), the AIF
    actually deconvolved (enhancement, HU, after partial-volume scaling) and the reference values."""

    maps: Dict[str, np.ndarray]
    tissue: np.ndarray
    """(z, y, x) bool: where the maps hold values: the prepared tissue less the vessels the maps revealed."""
    aif_enh_hu: np.ndarray
    aif_scale: float
    control: Dict[str, float]
    quality_flags: Dict[str, bool] = field(default_factory=dict)
    vessels: Optional[np.ndarray] = None
    """(z, y, x) bool: the prepared vessels and those the maps revealed (CBV > VESSEL_CBV_ML_100G)."""


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
    Vessels the maps reveal (CBV > VESSEL_CBV_ML_100G) leave the tissue and join PerfusionMaps.vessels;
    ``prepared`` is not changed.
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
            shared = None
            if denoised is not None:  # voxels of a block may share one denoised curve: its maps computed once
                shared = denoised.shared(zs, m)
                curves = denoised.curves(zs, m, None if shared is None else shared[0])
            else:
                curves = enhancement(series.data[:, zs], prepared.baseline_hu[zs])[:, m].T
            out = maps_from_curves(curves, aif_enh, series.dt_s, method=method,
                                   physiology=physiology, device=device, **deconvolution_options)
            if shared is not None:
                out = {k: v[shared[1]] for k, v in out.items()}
            for k in MAP_NAMES:
                maps[k][zs][m] = out[k]
        if progress is not None:
            progress((i + 1) / len(all_slabs))
    big = tissue & (maps["cbv"] > VESSEL_CBV_ML_100G)
    tissue &= ~big
    for k in MAP_NAMES:
        maps[k][~tissue] = 0.0
    control = relative_maps(maps, tissue, tmax_threshold_s)
    for k in ("rcbf", "rcbv"):
        maps[k][~tissue] = 0.0
    flags = aif_quality_flags(aif_enh, series.dt_s, prepared.bolus.arrival_s, has_vof=functions.vof_hu is not None)
    return PerfusionMaps(maps, tissue, aif_enh, scale, control, flags, prepared.vessels | big)
