"""Frame times, in one place: time units, frame-time grids, their plausibility, and the one linear
interpolation in time that every stage uses (resampling irregular series, the AIFNet input grid, the finer
grid of oSVD).

Times are in seconds everywhere; a unit named in a file is converted by :func:`seconds_per_unit`.
"""
from typing import Optional, Tuple

import numpy as np

from AIFSelectorLib.ctp_series import CTPSeries
from AIFSelectorLib.errors import InputError

PLAUSIBLE_DT_S = (0.05, 60.0)
"""A frame interval (median) outside this range [s] means the file's time unit is wrong or missing."""

MIN_RESAMPLE_DT_S = 0.5
"""resample_uniform's default interval is the smallest one present, but never finer than this [s]."""

TIME_UNITS_S = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "msec": 1e-3, "msecs": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "us": 1e-6, "usec": 1e-6, "\u00b5s": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "min": 60.0, "minute": 60.0, "minutes": 60.0,
}
"""Seconds per unit of every time unit a file may name (NRRD/Slicer sequences, MultiVolume, DICOM)."""


def seconds_per_unit(unit: str, default_s: Optional[float] = None) -> Optional[float]:
    """Seconds per ``unit`` (case, quotes and spaces ignored); ``default_s`` for an empty unit; None for a
    unit that is not a time unit."""
    key = str(unit or "").strip().strip('"').strip().lower()
    if not key:
        return default_s
    return TIME_UNITS_S.get(key)


def frame_times(n: int, dt_s: float, t0_s: float = 0.0) -> np.ndarray:
    """(n,) float64 frame times t0, t0 + dt, ... [s]."""
    return t0_s + dt_s * np.arange(n, dtype=np.float64)


def checked_dt(dt_s) -> Optional[float]:
    """A frame interval given by a user [s] as a positive float (None stays None); InputError otherwise."""
    if dt_s is None:
        return None
    try:
        dt = float(dt_s)
    except (TypeError, ValueError):
        raise InputError(f"the frame interval --dt must be a number of seconds, got {dt_s!r}") from None
    if not np.isfinite(dt) or dt <= 0:
        raise InputError(f"the frame interval --dt must be a positive number of seconds, got {dt_s!r}")
    return dt


def check_plausible_dt(times_s: np.ndarray, source: str, what: str) -> None:
    """InputError when the median frame interval lies outside PLAUSIBLE_DT_S (a wrong or missing unit)."""
    if len(times_s) < 2 or not np.all(np.diff(times_s) > 0):
        return  # too short or not increasing: CTPSeries names that problem
    dt = float(np.median(np.diff(times_s)))
    lo, hi = PLAUSIBLE_DT_S
    if not (lo <= dt <= hi):
        raise InputError(f"{source}: frame interval {dt:g} s ({what}) is implausible for CT perfusion "
                         f"(expected {lo:g}-{hi:g} s): pass --dt SECONDS")


def interpolation_weights(times_s, grid_s) -> Tuple[np.ndarray, np.ndarray]:
    """The one linear interpolation in time: for each grid time, the index ``lo`` of the sample at or before
    it and the weight ``w`` of the next sample, so that value = (1 - w) x[lo] + w x[lo + 1] (w = 0 at a
    sample). Grid times before the first or after the last sample take that sample (w clamped to 0 or 1).
    Returns (lo int64 (m,), w float64 (m,)), lo <= n - 2 (n >= 2 samples)."""
    t = np.asarray(times_s, dtype=np.float64)
    g = np.asarray(grid_s, dtype=np.float64)
    lo = np.clip(np.searchsorted(t, g, side="right") - 1, 0, len(t) - 2)
    w = np.clip((g - t[lo]) / (t[lo + 1] - t[lo]), 0.0, 1.0)
    w[np.abs(w) <= 1e-9] = 0.0
    w[np.abs(1.0 - w) <= 1e-9] = 1.0
    return lo, w


def interpolate_frames(data, times_s, grid_s, dtype=np.float32) -> np.ndarray:
    """(len(grid), ...) frames of ``data`` (t, ...) linearly interpolated in time onto ``grid_s``, one output
    frame at a time (memory: the output plus one frame); frames on a sample are copied exactly."""
    lo, w = interpolation_weights(times_s, grid_s)
    dtype = np.dtype(dtype)
    out = np.empty((len(lo),) + tuple(np.shape(data)[1:]), dtype=dtype)
    for k, (i, wk) in enumerate(zip(lo, w)):
        if wk == 0.0:
            out[k] = data[i]
        elif wk == 1.0:
            out[k] = data[i + 1]
        else:
            frame = data[i].astype(dtype)
            frame *= dtype.type(1.0 - wk)
            frame += dtype.type(wk) * data[i + 1].astype(dtype, copy=False)
            out[k] = frame
    return out


def uniform_grid(times_s, dt_s: Optional[float] = None) -> np.ndarray:
    """The uniform time grid resample_uniform puts a series on: from the first frame time, every ``dt_s``
    seconds up to (not past) the last one. Default interval: the smallest one present, rounded to 1 ms,
    but not finer than MIN_RESAMPLE_DT_S (0.5 s), so no sample of the densely sampled bolus phase is
    lost while near-duplicate frames cannot blow up the frame count."""
    times = np.asarray(times_s, dtype=np.float64)
    if dt_s is None:
        dt_s = max(round(float(np.min(np.diff(times))), 3), MIN_RESAMPLE_DT_S)
    dt_s = checked_dt(dt_s)
    n = int(np.floor((times[-1] - times[0]) / dt_s + 1e-6)) + 1
    if n < 2:
        raise InputError(f"cannot resample to a {dt_s:g} s grid: the series lasts only {times[-1] - times[0]:g} s")
    return times[0] + dt_s * np.arange(n, dtype=np.float64)


def resample_uniform(series: CTPSeries, dt_s: Optional[float] = None) -> CTPSeries:
    """The series on a uniform time grid (:func:`uniform_grid`), by linear interpolation in time
    (:func:`interpolate_frames`).

    A series that is already uniform (CTPSeries.is_uniform) and is not asked for another interval is
    returned unchanged (the same object). Integer data come out float32, float data keep their dtype."""
    if series.is_uniform and (dt_s is None or abs(float(dt_s) - series.dt_s) <= 1e-6 * max(1.0, series.dt_s)):
        return series
    grid = uniform_grid(series.times_s, dt_s)
    src = series.data
    out_dtype = src.dtype if np.issubdtype(src.dtype, np.floating) else np.dtype(np.float32)
    out = interpolate_frames(src, series.times_s, grid, out_dtype)
    try:
        return CTPSeries(out, grid, series.geometry, dict(series.source_info))
    except InputError as e:
        raise InputError(f"resampled to a uniform {grid[1] - grid[0]:g} s grid: {e}") from None
