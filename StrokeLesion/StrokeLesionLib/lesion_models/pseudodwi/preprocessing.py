"""Pseudo-DWI preprocessing (Wang et al., MedIA 2020): perfusion window, temporal MIP, frame resampling
and the network input of one case.

All times are seconds (frame times of the series), never frame indices:

1. q(t): summed intensity (HU) of the brain at each frame; smoothed by a K-frame moving average (K = 5);
2. the perfusion start Ts is the last time before the peak of q where dq/dt <= 0 (the rise begins after
   it), the end Te the first time after the peak where dq/dt >= 0 again (washout over; recirculation or
   the plateau begins). "Zero" is taken with a tolerance of SLOPE_TOLERANCE times the steepest rise, so
   that noise on the baseline does not flip the sign. The moving average makes Ts up to (K//2 + 1) frames
   early (K//2 + 2 when the rise begins between frames), so the crop keeps the last baseline frames;
3. F_l: the temporal maximum intensity projection over frames with Ts <= t <= Te;
4. F_o: the series linearly interpolated at C_e = 6 equally spaced times from Ts to Te.

Normalisation of the network input (:func:`network_input`): the perfusion images are normalised per case
((HU - mean of the brain at Ts) / SD of the brain's MIP, zero outside the brain); the maps with fixed
physical scales (CBF / 60 ml/100g/min, CBV / 5 ml/100g, MTT / 10 s, Tmax / 10 s, clipped to [0, 4]) so that a
small lesion cannot change the scaling. Channel order: cbf, cbv, mtt, tmax, F_o (C_e frames), F_l, brain.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from AIFSelectorLib.errors import InputError

SMOOTHING_FRAMES = 5
"""K: moving-average length (frames) for q(t) before its derivative is taken."""
N_CROPPED_FRAMES = 6
"""C_e: frames of the cropped, resampled perfusion series F_o."""
SLOPE_TOLERANCE = 0.02
"""|dq/dt| below this fraction of the steepest rise counts as zero slope."""
MAP_NAMES = ("cbf", "cbv", "mtt", "tmax")
MAP_SCALES = {"cbf": 60.0, "cbv": 5.0, "mtt": 10.0, "tmax": 10.0}
"""Fixed physical scales: ml/100g/min, ml/100g, s, s."""
MAP_CLIP = 4.0
N_INPUT_CHANNELS = len(MAP_NAMES) + N_CROPPED_FRAMES + 2


@dataclass
class PerfusionWindow:
    """Ts, Te (s, frame times of the series) and the curve they were found on."""

    start_s: float
    end_s: float
    peak_s: float
    q_smoothed: np.ndarray


def summed_intensity(data_tzyx: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """q(t): sum of the HU values of the brain voxels at every frame, (t,) float64."""
    m = np.asarray(brain_mask, bool)
    return np.array([float(np.asarray(frame, np.float64)[m].sum()) for frame in data_tzyx])


def moving_average(q: np.ndarray, k: int = SMOOTHING_FRAMES) -> np.ndarray:
    """K-frame centred moving average, edges padded with the end values."""
    k = max(1, int(k))
    pad = np.pad(np.asarray(q, np.float64), (k // 2, k - 1 - k // 2), mode="edge")
    return np.convolve(pad, np.ones(k) / k, mode="valid")


def perfusion_window(q: np.ndarray, times_s: np.ndarray, k: int = SMOOTHING_FRAMES) -> PerfusionWindow:
    """Ts and Te (s) from the sign of dq/dt of the K-frame-smoothed summed intensity (see module doc)."""
    times = np.asarray(times_s, np.float64)
    qs = moving_average(q, k)
    dq = np.gradient(qs, times)
    peak = int(np.argmax(qs))
    tol = SLOPE_TOLERANCE * max(float(dq[:peak + 1].max()), 0.0)
    before = np.nonzero(dq[:peak] <= tol)[0]
    after = np.nonzero(dq[peak + 1:] >= -tol)[0]
    start = int(before[-1]) if len(before) else 0
    end = peak + 1 + int(after[0]) if len(after) else len(times) - 1
    if end <= start:
        start, end = 0, len(times) - 1
    return PerfusionWindow(float(times[start]), float(times[end]), float(times[peak]), qs)


def temporal_mip(data_tzyx: np.ndarray, times_s: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """F_l: maximum over the frames with start_s <= t <= end_s, (z, y, x) float32."""
    times = np.asarray(times_s, np.float64)
    sel = np.nonzero((times >= start_s - 1e-6) & (times <= end_s + 1e-6))[0]
    if len(sel) == 0:
        sel = np.array([int(np.argmin(np.abs(times - start_s)))])
    return np.asarray(data_tzyx[sel], np.float32).max(axis=0)


def resample_window(data_tzyx: np.ndarray, times_s: np.ndarray, start_s: float, end_s: float,
                    n_frames: int = N_CROPPED_FRAMES) -> np.ndarray:
    """F_o: the series linearly interpolated at ``n_frames`` equally spaced times from start_s to end_s,
    (n_frames, z, y, x) float32."""
    times = np.asarray(times_s, np.float64)
    grid = np.linspace(start_s, end_s, int(n_frames))
    pos = np.interp(grid, times, np.arange(len(times)))
    out = np.empty((len(grid),) + tuple(data_tzyx.shape[1:]), np.float32)
    for i, p in enumerate(pos):
        lo = int(np.floor(p))
        hi = min(lo + 1, len(times) - 1)
        w = float(p - lo)
        out[i] = (1 - w) * np.asarray(data_tzyx[lo], np.float32) + w * np.asarray(data_tzyx[hi], np.float32)
    return out


def check_inputs(data_tzyx: np.ndarray, maps: Dict[str, np.ndarray], brain_mask: np.ndarray) -> None:
    """InputError naming the problem: not 4D, a missing map, or maps / mask on another grid."""
    if np.ndim(data_tzyx) != 4:
        raise InputError(f"pseudo-DWI needs a 4D CTP series (t, z, y, x), got {np.ndim(data_tzyx)}D")
    shape = tuple(np.shape(data_tzyx)[1:])
    if not isinstance(maps, dict):
        raise InputError("pseudo-DWI needs the perfusion maps as a dict with cbf, cbv, mtt and tmax")
    missing = [k for k in MAP_NAMES if k not in maps or maps[k] is None]
    if missing:
        raise InputError(f"pseudo-DWI needs the perfusion maps cbf, cbv, mtt, tmax; missing: {', '.join(missing)}")
    for k in MAP_NAMES:
        if tuple(np.shape(maps[k])) != shape:
            raise InputError(f"map '{k}' has shape {tuple(np.shape(maps[k]))}, the CTP frames {shape}")
        if not np.all(np.isfinite(maps[k])):
            raise InputError(f"map '{k}' contains NaN or infinite values")
    if brain_mask is None or tuple(np.shape(brain_mask)) != shape:
        raise InputError(f"the brain mask has shape {None if brain_mask is None else tuple(np.shape(brain_mask))}, "
                         f"the CTP frames {shape}")
    if not np.asarray(brain_mask, bool).any():
        raise InputError("the brain mask is empty")


def normalised_maps(maps: Dict[str, np.ndarray]) -> np.ndarray:
    """(4, z, y, x) float32: cbf, cbv, mtt, tmax divided by their fixed physical scales, clipped to
    [0, MAP_CLIP]."""
    return np.stack([np.clip(np.asarray(maps[k], np.float32) / MAP_SCALES[k], 0.0, MAP_CLIP)
                     for k in MAP_NAMES]).astype(np.float32)


def network_input(data_tzyx: np.ndarray, times_s: np.ndarray, maps: Dict[str, np.ndarray],
                  brain_mask: np.ndarray) -> Tuple[np.ndarray, PerfusionWindow]:
    """The network input of one case, (N_INPUT_CHANNELS, z, y, x) float32: normalised maps, F_o, F_l and
    the brain mask (channel order in the module doc); and the perfusion window used."""
    check_inputs(data_tzyx, maps, brain_mask)
    brain = np.asarray(brain_mask, bool)
    window = perfusion_window(summed_intensity(data_tzyx, brain), times_s)
    f_l = temporal_mip(data_tzyx, times_s, window.start_s, window.end_s)
    f_o = resample_window(data_tzyx, times_s, window.start_s, window.end_s)
    offset = float(f_o[0][brain].mean())
    scale = max(float(f_l[brain].std()), 1.0)
    images = (np.concatenate([f_o, f_l[None]]) - offset) / scale
    images *= brain[None]
    x = np.concatenate([normalised_maps(maps), images, brain[None].astype(np.float32)])
    return x.astype(np.float32), window


def normalised_dwi(dwi: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """The synthesis target: DWI divided by its brain median (healthy tissue ~1), zero outside the brain,
    (z, y, x) float32."""
    brain = np.asarray(brain_mask, bool)
    scale = max(float(np.median(dwi[brain])), 1e-6)
    return (np.asarray(dwi, np.float32) / scale * brain).astype(np.float32)
