"""Stage 4 on a whole series: the perfusion maps of a prepared series with given input functions.

A function of its inputs: the prepared series is not changed (the vessels the maps reveal are returned in
:class:`PerfusionMaps`), so the Slicer Logic and scripts re-run it with a corrected AIF or another method.
Memory stays bounded: every pass over the 4D data goes slab by slab.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np

from AIFSelectorLib.constants import DENOISE_SIGMA_MM, TMAX_THRESHOLD_S
from AIFSelectorLib.deconvolution import MAP_METHODS as METHODS, UNCERTAINTY_NAMES, bayes
from AIFSelectorLib.errors import InputError
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
    if method not in METHODS:
        raise ValueError(f"unknown deconvolution method {method!r}: valid methods are {', '.join(METHODS)}")
    shape = series.shape_zyx
    names = MAP_NAMES + (UNCERTAINTY_NAMES if method == "bayes" else ())
    maps = {k: np.zeros(shape, np.float32) for k in names}
    tissue = prepared.tissue.copy()
    denoised = prepared.denoised(smooth_mm) if smooth_mm > 0 else None
    all_slabs = list(slabs(shape, max_voxels=1 << 18))

    def slab_curves(zs, where, shared=None):
        if denoised is not None:
            return denoised.curves(zs, where, None if shared is None else shared[0])
        return enhancement(series.data[:, zs], prepared.baseline_hu[zs])[:, where].T

    if method == "bayes" and "model" not in deconvolution_options:  # options: prior=, seed= of brain_prior
        unknown = set(deconvolution_options) - {"prior", "seed"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for bayes: valid are model, prior, seed")
        deconvolution_options = {"model": brain_prior(tissue, all_slabs, slab_curves, aif_enh, series.dt_s,
                                                      denoised, **deconvolution_options)}
    for i, zs in enumerate(all_slabs):
        m = tissue[zs]
        if m.any():
            # voxels of a block may share one denoised curve: their maps are computed once
            shared = denoised.shared(zs, m) if denoised is not None else None
            curves = slab_curves(zs, m, shared)
            out = maps_from_curves(curves, aif_enh, series.dt_s, method=method,
                                   physiology=physiology, device=device, **deconvolution_options)
            if shared is not None:
                out = {k: v[shared[1]] for k, v in out.items()}
            for k in names:
                maps[k][zs][m] = out[k]
        if progress is not None:
            progress((i + 1) / len(all_slabs))
    big = tissue & (maps["cbv"] > VESSEL_CBV_ML_100G)
    tissue &= ~big
    for k in names:
        maps[k][~tissue] = 0.0
    control = relative_maps(maps, tissue, tmax_threshold_s)
    for k in ("rcbf", "rcbv"):
        maps[k][~tissue] = 0.0
    flags = aif_quality_flags(aif_enh, series.dt_s, prepared.bolus.arrival_s, has_vof=functions.vof_hu is not None)
    return PerfusionMaps(maps, tissue, aif_enh, scale, control, flags, prepared.vessels | big)


def brain_prior(tissue: np.ndarray, all_slabs, slab_curves: Callable, aif_enh: np.ndarray, dt_s: float,
                denoised=None, prior: bayes.BayesPrior = bayes.BayesPrior(), seed: int = 0) -> bayes.BayesModel:
    """The Bayesian model of this series: its model curves for the AIF, in the subspace of its tissue curves,
    with the empirical prior and noise of a random sample of the whole brain's tissue curves (``seed``: the
    same sample, and so the same maps, on every run)."""
    flat = np.flatnonzero(tissue)
    if flat.size == 0:
        raise InputError("no tissue voxels in the brain mask: nothing to estimate the Bayesian prior from")
    rng = np.random.default_rng(seed)
    chosen = np.zeros(tissue.size, bool)
    chosen[rng.choice(flat, size=min(prior.sample_voxels, flat.size), replace=False)] = True
    chosen = chosen.reshape(tissue.shape)
    sample = [slab_curves(zs, chosen[zs]) for zs in all_slabs if chosen[zs].any()]
    spanning = None if denoised is None else np.vstack([denoised.mean_curve[None], denoised.basis])
    return bayes.fitted_model(np.concatenate(sample), aif_enh, dt_s, spanning, prior, seed)
