"""Quality flags on a chosen AIF (enhancement curve, HU, on uniform frames of dt_s seconds).

Each flag names a failure a radiologist would want to see before trusting the maps:
- truncated_bolus: the curve has not come down to half its peak by the last frame, or peaks in the
  last 15 % of the acquisition: the bolus is cut off and CBV/CBF are biased.
- late_arrival: contrast arrives after ``late_arrival_s`` (default 15 s): poor injection or cardiac output;
  also set when there is less than one baseline frame before arrival.
- low_peak: peak enhancement below ``low_peak_hu`` (default 100 HU): partial volume or a poor bolus;
  the curve is noisy and CBF unreliable.
- saturation: the peak forms a plateau (at or above 98 % of the peak for ``plateau_s`` seconds, default
  3 s) as when the detector or reconstruction clips the arterial signal.
- outlier_samples: a sample differs from the median of itself and its two neighbours by more than
  ``outlier_hu`` (default 100 HU) and by more than half the curve's (median-filtered) peak: a spike a
  bolus cannot make (a corrupted frame, a typo in an AIF file).
- vof_missing: no venous output function: the AIF was not scaled to the VOF's area (no partial-volume
  correction), so absolute CBF and CBV may be biased (relative maps, core and penumbra are not).
"""
from typing import Dict

import numpy as np


def aif_quality_flags(aif_enh: np.ndarray, dt_s: float, arrival_s: float,
                      late_arrival_s: float = 15.0, low_peak_hu: float = 100.0,
                      plateau_s: float = 3.0, outlier_hu: float = 100.0, has_vof: bool = True) -> Dict[str, bool]:
    """Flags for an AIF enhancement curve (t,); see the module doc for their meaning."""
    aif = np.asarray(aif_enh, dtype=np.float64)
    padded = np.concatenate([aif[:1], aif, aif[-1:]])
    median3 = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    spike = np.abs(aif - median3)
    outliers = bool(np.any((spike > outlier_hu) & (spike > 0.5 * max(float(median3.max()), 0.0))))
    n = len(aif)
    i_peak = int(np.argmax(aif))
    peak = float(aif[i_peak])
    plateau_frames = int(np.sum(aif >= 0.98 * peak)) if peak > 0 else 0
    return {
        "truncated_bolus": bool(aif[-1] > 0.5 * peak or i_peak >= 0.85 * (n - 1)),
        "late_arrival": bool(arrival_s > late_arrival_s or arrival_s < dt_s),
        "low_peak": bool(peak < low_peak_hu),
        "saturation": bool(peak > 0 and plateau_frames * dt_s >= plateau_s),
        "outlier_samples": outliers,
        "vof_missing": not has_vof,
    }
