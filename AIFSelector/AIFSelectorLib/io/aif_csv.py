"""The AIF file: CSV with columns ``time_s,aif_hu`` and optionally ``vof_hu``.

Values are absolute HU (baseline included), one row per frame, times in seconds, strictly increasing.
Blank lines and lines starting with ``#`` are ignored; column order is free.
"""
import csv
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from AIFSelectorLib.errors import InputError

CT_RANGE_HU = (-1100.0, 4100.0)
"""AIF/VOF values outside this range [HU] cannot come from a CT (air is -1000 HU, 12-bit CT saturates near
3071 HU, and some scanners extend the range a little)."""
from AIFSelectorLib.io.volume_io import atomic_path

REQUIRED_COLUMNS = ("time_s", "aif_hu")
OPTIONAL_COLUMNS = ("vof_hu",)

TIME_TOLERANCE_FRACTION = 0.05
"""CSV times match the series when every one is within this fraction of the series' frame interval."""


def read_aif_csv(path, times_s=None) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(times_s, aif_hu, vof_hu or None) from an AIF CSV file, as float64 arrays.

    times_s: the series' frame times; when given, the file must have one row per frame at those times
    (within 5 % of the frame interval), and those exact times are returned. InputError (one line, naming the file) for a missing file,
    wrong or missing columns, non-numeric or NaN values, non-increasing times, or a mismatch."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise InputError(f"AIF file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i, r) for i, r in enumerate(csv.reader(f), start=1)
                    if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {name}: not a CSV text file ({type(e).__name__})") from None
    if not rows:
        raise InputError(f"{name} is empty: expected a header 'time_s,aif_hu[,vof_hu]' and one row per frame")
    columns = [c.strip().lower() for c in rows[0][1]]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    duplicate = sorted({c for c in columns if columns.count(c) > 1})
    if missing or unknown or duplicate:
        problems = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + \
                   ([f"unexpected column(s) {', '.join(repr(c) for c in unknown)}"] if unknown else []) + \
                   ([f"duplicate column(s) {', '.join(duplicate)}"] if duplicate else [])
        raise InputError(f"{name}: {'; '.join(problems)} (expected columns time_s,aif_hu and optional vof_hu, "
                         f"got {','.join(columns)})")
    body = rows[1:]
    if len(body) < 2:
        raise InputError(f"{name}: needs at least 2 rows of values, got {len(body)}")
    values = np.empty((len(body), len(columns)), dtype=np.float64)
    for r, (line, row) in enumerate(body):
        if len(row) != len(columns):
            raise InputError(f"{name} line {line}: {len(row)} values for {len(columns)} columns")
        for c, cell in enumerate(row):
            try:
                values[r, c] = float(cell)
            except ValueError:
                raise InputError(f"{name} line {line}: {columns[c]} value {cell.strip()!r} is not a number") from None
            if not np.isfinite(values[r, c]):
                raise InputError(f"{name} line {line}: {columns[c]} is {cell.strip()} (NaN or infinite)")
            lo, hi = CT_RANGE_HU
            if columns[c] != "time_s" and not lo <= values[r, c] <= hi:
                raise InputError(f"{name} line {line}: {columns[c]} is {cell.strip()}, outside the CT range "
                                 f"{lo:g} to {hi:g} HU")
    times = values[:, columns.index("time_s")]
    aif = values[:, columns.index("aif_hu")]
    vof = values[:, columns.index("vof_hu")] if "vof_hu" in columns else None
    bad = np.flatnonzero(np.diff(times) <= 0)
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{name}: time_s must be strictly increasing (line {body[i + 1][0]}: "
                         f"{times[i + 1]:g} s after {times[i]:g} s)")
    if times_s is not None:
        series_times = np.asarray(times_s, dtype=np.float64).ravel()
        if len(series_times) != len(times):
            raise InputError(f"{name} has {len(times)} time points but the CTP series has {len(series_times)} "
                             f"frames")
        tol = TIME_TOLERANCE_FRACTION * float(np.median(np.diff(series_times))) if len(series_times) > 1 else 1e-3
        worst = int(np.argmax(np.abs(times - series_times)))
        if abs(times[worst] - series_times[worst]) > tol:
            raise InputError(f"{name}: time grid does not match the CTP series (row {worst + 1}: "
                             f"{times[worst]:g} s in the file, {series_times[worst]:g} s in the series)")
        times = series_times.copy()
    return times, aif, vof


def write_aif_csv(path, times_s, aif_hu, vof_hu=None) -> Path:
    """Writes ``time_s,aif_hu[,vof_hu]`` atomically (values to 10 significant digits)."""
    columns = [np.asarray(times_s, dtype=np.float64).ravel(), np.asarray(aif_hu, dtype=np.float64).ravel()]
    names = ["time_s", "aif_hu"]
    if vof_hu is not None:
        columns.append(np.asarray(vof_hu, dtype=np.float64).ravel())
        names.append("vof_hu")
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise ValueError(f"times, AIF and VOF must have the same length, got {[len(c) for c in columns]}")
    if not all(np.all(np.isfinite(c)) for c in columns):
        raise ValueError("AIF/VOF curves and times must be finite")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(",".join(names) + "\n")
            for row in zip(*columns):
                f.write(",".join(format(float(v), ".10g") for v in row) + "\n")
    return Path(path)
