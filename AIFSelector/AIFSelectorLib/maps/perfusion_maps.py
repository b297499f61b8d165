"""Perfusion maps from tissue and arterial enhancement curves, and relative maps (the core/penumbra rule is
in thresholds.decision).

Conventions: curves are enhancement in HU (baseline removed), shaped (n_voxels, n_frames) for tissue and
(n_frames,) for the AIF, on a uniform time grid of ``dt_s`` seconds.

CBF [ml/100 g/min] = kH/rho * max_t(F.R(t)) * 6000, with F.R [1/s] from deconvolution
CBV [ml/100 g]     = kH/rho * int C_t dt / int AIF dt * 100
MTT [s]            = CBV / CBF * 60   (central volume theorem)
Tmax [s]           = time of the maximum of F.R(t)
TTP [s]            = time of the tissue curve maximum, from the first frame
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from AIFSelectorLib.constants import K_H, TISSUE_DENSITY_G_PER_ML, TMAX_THRESHOLD_S
from AIFSelectorLib.errors import InputError


@dataclass(frozen=True)
class Physiology:
    """Constants that scale the maps (defaults in :mod:`constants`)."""

    k_h: float = K_H
    density_g_per_ml: float = TISSUE_DENSITY_G_PER_ML

    @property
    def scale(self) -> float:
        """kH / rho [ml/g]."""
        return self.k_h / self.density_g_per_ml


def cbf_ml_100g_min(flow_per_s: np.ndarray, physiology: Physiology = Physiology()) -> np.ndarray:
    """CBF [ml/100 g/min] from max(F.R) [1/s]."""
    return (physiology.scale * 6000.0 * np.asarray(flow_per_s, dtype=np.float64)).astype(np.float32)


def cbv_ml_100g(tissue_area: np.ndarray, aif_area: float,
                physiology: Physiology = Physiology()) -> np.ndarray:
    """CBV [ml/100 g] from the areas under the tissue curves and the AIF (same units, HU.s)."""
    if not aif_area > 0:
        raise InputError(f"the AIF has no positive area ({aif_area:.3g} HU.s): it cannot scale CBV")
    return (physiology.scale * 100.0 * np.asarray(tissue_area, dtype=np.float64) / aif_area).astype(np.float32)


def mtt_s(cbv: np.ndarray, cbf: np.ndarray) -> np.ndarray:
    """MTT [s] = CBV/CBF * 60 (central volume theorem); 0 where CBF is not positive."""
    cbf = np.asarray(cbf, dtype=np.float64)
    out = np.zeros(cbf.shape, dtype=np.float32)
    ok = cbf > 1e-6
    out[ok] = 60.0 * np.asarray(cbv, dtype=np.float64)[ok] / cbf[ok]
    return out


def peak_time_s(curves: np.ndarray, dt_s: float) -> np.ndarray:
    """Time [s] of each curve's maximum along the last axis, refined by a parabola through the peak
    and its neighbours (sub-frame precision, never outside the neighbouring frames). float64 curves are
    computed in float64, others in float32 (the maps)."""
    curves = np.asarray(curves)
    dtype = np.float64 if curves.dtype == np.float64 else np.float32
    curves = curves.astype(dtype, copy=False)
    n = curves.shape[-1]
    i = np.argmax(curves, axis=-1)
    lo = np.clip(i - 1, 0, n - 1)
    hi = np.clip(i + 1, 0, n - 1)
    take = lambda idx: np.take_along_axis(curves, idx[..., None], axis=-1)[..., 0]
    ym, y0, yp = take(lo), take(i), take(hi)
    denom = ym - 2.0 * y0 + yp
    inner = (i > 0) & (i < n - 1) & (denom < 0)
    shift = np.zeros(i.shape, dtype=dtype)
    shift[inner] = 0.5 * (ym[inner] - yp[inner]) / denom[inner]
    return ((i + np.clip(shift, -0.5, 0.5)) * dt_s).astype(dtype)


def relative_map(values: np.ndarray, control: np.ndarray) -> Tuple[np.ndarray, float]:
    """values / mean(values over control tissue). Returns the relative map and the reference value.

    control: boolean mask (same shape) of normal tissue, e.g. brain with Tmax below 6 s, vessels out.
    """
    values = np.asarray(values, dtype=np.float32)
    ref = float(np.mean(values[control])) if np.any(control) else float("nan")
    if not np.isfinite(ref) or ref <= 0:
        raise InputError("no control tissue (Tmax below threshold) with positive values to normalise to")
    return (values / ref).astype(np.float32), ref


def control_tissue(tmax_s: np.ndarray, tissue_mask: np.ndarray,
                   tmax_threshold_s: float = TMAX_THRESHOLD_S) -> np.ndarray:
    """Normal tissue for relative maps: tissue voxels (vessels and CSF already out) with Tmax below the
    threshold."""
    return np.asarray(tissue_mask, bool) & (np.asarray(tmax_s) < tmax_threshold_s)


def relative_maps(maps: Dict[str, np.ndarray], tissue_mask: np.ndarray,
                  tmax_threshold_s: float = TMAX_THRESHOLD_S) -> Dict[str, float]:
    """Adds ``rcbf`` and ``rcbv`` to ``maps`` (which holds ``cbf``, ``cbv``, ``tmax``), normalised to control
    tissue; returns the reference values {'cbf_control': .., 'cbv_control': ..}."""
    control = control_tissue(maps["tmax"], tissue_mask, tmax_threshold_s)
    maps["rcbf"], cbf_ref = relative_map(maps["cbf"], control)
    maps["rcbv"], cbv_ref = relative_map(maps["cbv"], control)
    return {"cbf_control": cbf_ref, "cbv_control": cbv_ref}


def area_under(curves: np.ndarray, dt_s: float) -> np.ndarray:
    """Trapezoidal area [HU.s] along the last axis of uniformly sampled curves."""
    curves = np.asarray(curves, dtype=np.float32)
    return (dt_s * (curves.sum(axis=-1) - 0.5 * (curves[..., 0] + curves[..., -1]))).astype(np.float64)


def maps_from_curves(tissue: np.ndarray, aif: np.ndarray, dt_s: float, method: str = "osvd",
                     physiology: Physiology = Physiology(), device: Optional[str] = None,
                     **deconvolution_options) -> Dict[str, np.ndarray]:
    """CBF, CBV, MTT, Tmax, TTP for tissue curves (n_voxels, n_frames) against one AIF (n_frames,),
    both enhancement in HU on a uniform grid of dt_s seconds. Returns 1D float32 arrays (n_voxels,).

    method 'bayes' takes the series' fitted model (``model=``, :func:`maps.compute.brain_prior`) and adds the
    posterior SDs 'cbf_sd' [ml/100 g/min] and 'tmax_sd' [s]; CBF and Tmax are then posterior means."""
    aif = np.asarray(aif, dtype=np.float32)
    extra = {}
    if method == "bayes":
        from AIFSelectorLib.deconvolution.bayes import posterior

        if set(deconvolution_options) != {"model"}:
            raise ValueError("method 'bayes' takes only model= (the series' model: maps.compute.brain_prior), "
                             f"got {sorted(deconvolution_options)}")
        result = posterior(tissue, deconvolution_options["model"], device=device)
        extra = {"cbf_sd": cbf_ml_100g_min(result.flow_sd_per_s, physiology), "tmax_sd": result.tmax_sd_s}
    else:
        from AIFSelectorLib.deconvolution.methods import deconvolve

        result = deconvolve(tissue, aif, dt_s, method=method, device=device, **deconvolution_options)
    cbf = cbf_ml_100g_min(result.flow_per_s, physiology)
    cbv = cbv_ml_100g(area_under(tissue, dt_s), float(area_under(aif, dt_s)), physiology)
    return {
        "cbf": cbf,
        "cbv": cbv,
        "mtt": mtt_s(cbv, cbf),
        "tmax": np.asarray(result.tmax_s, dtype=np.float32),
        "ttp": peak_time_s(tissue, dt_s),
        **extra,
    }
