"""Curve and map agreement measures used by the evaluation tables (AIFNet paper, Tables 2-4)."""
from typing import Dict

import numpy as np

from AIFSelectorLib.input_functions.functions import baseline_removed
from AIFSelectorLib.maps.perfusion_maps import peak_time_s
from training.lesion_data.evaluation_tables import mean_sd


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def fwhm_s(enh, dt_s: float) -> float:
    """Full width at half maximum (s) of the main peak, linear interpolation at the half-level crossings."""
    e = np.asarray(enh, float)
    i = int(np.argmax(e))
    half = e[i] / 2.0
    if half <= 0:
        return float("nan")
    lo = i
    while lo > 0 and e[lo - 1] > half:
        lo -= 1
    hi = i
    while hi < len(e) - 1 and e[hi + 1] > half:
        hi += 1
    left = lo - 1 + (half - e[lo - 1]) / (e[lo] - e[lo - 1]) if lo > 0 else float(lo)
    right = hi + (e[hi] - half) / (e[hi] - e[hi + 1]) if hi < len(e) - 1 else float(hi)
    return float((right - left) * dt_s)


def curve_metrics(pred_hu, true_hu, dt_s: float, n_baseline: int) -> Dict[str, float]:
    """r, |Tpeak error| (s), FWHM error (s), PTB error (HU, predicted - true), MSE (HU^2) of absolute curves."""
    p, t = baseline_removed(pred_hu, n_baseline), baseline_removed(true_hu, n_baseline)
    return {"r": pearson(pred_hu, true_hu),
            "tpeak_err_s": abs(float(peak_time_s(p, dt_s)) - float(peak_time_s(t, dt_s))),
            "fwhm_err_s": fwhm_s(p, dt_s) - fwhm_s(t, dt_s),
            "ptb_err_hu": float(p.max() - t.max()),
            "mse_hu2": float(np.mean((np.asarray(pred_hu, float) - np.asarray(true_hu, float)) ** 2))}


def summary(values) -> Dict[str, float]:
    """mean, sample sd and n of the finite values (evaluation_tables.mean_sd), with their 5th and 95th
    percentiles."""
    mean, sd, n = mean_sd(values)
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    p5, p95 = (float(np.percentile(v, 5)), float(np.percentile(v, 95))) if n else (float("nan"), float("nan"))
    return {"mean": mean, "sd": sd, "p5": p5, "p95": p95, "n": n}
