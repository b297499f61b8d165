"""Curve and map agreement measures used by the evaluation tables (AIFNet paper, Tables 2-4)."""
from typing import Dict

import numpy as np


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def enhancement(curve, n_baseline: int) -> np.ndarray:
    c = np.asarray(curve, float)
    return c - c[:max(1, n_baseline)].mean()


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


def tpeak_s(enh, dt_s: float) -> float:
    """Time of the maximum (s), refined by a parabola through the peak and its neighbours."""
    e = np.asarray(enh, float)
    i = int(np.argmax(e))
    if 0 < i < len(e) - 1:
        den = e[i - 1] - 2 * e[i] + e[i + 1]
        off = 0.5 * (e[i - 1] - e[i + 1]) / den if den < 0 else 0.0
        return float((i + np.clip(off, -0.5, 0.5)) * dt_s)
    return float(i * dt_s)


def curve_metrics(pred_hu, true_hu, dt_s: float, n_baseline: int) -> Dict[str, float]:
    """r, |Tpeak error| (s), FWHM error (s), PTB error (HU, predicted - true), MSE (HU^2) of absolute curves."""
    p, t = enhancement(pred_hu, n_baseline), enhancement(true_hu, n_baseline)
    return {"r": pearson(pred_hu, true_hu),
            "tpeak_err_s": abs(tpeak_s(p, dt_s) - tpeak_s(t, dt_s)),
            "fwhm_err_s": fwhm_s(p, dt_s) - fwhm_s(t, dt_s),
            "ptb_err_hu": float(p.max() - t.max()),
            "mse_hu2": float(np.mean((np.asarray(pred_hu, float) - np.asarray(true_hu, float)) ** 2))}


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else 1.0


def summary(values) -> Dict[str, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return {"mean": float("nan"), "sd": float("nan"), "p5": float("nan"), "p95": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95)), "n": int(len(v))}
