"""Reading a CT perfusion series from every supported input, and writing Slicer volume sequences.

Inputs (:func:`load_ctp` dispatches on what the path is):

- 4D NIfTI (``.nii``/``.nii.gz``, x, y, z, t), read with nibabel after the checks of :mod:`nifti_io`:
  the frame interval is pixdim[4] in the header's time unit (xyzt_units: s, ms or us, converted to
  seconds), frame times start at toffset; NaN and inf stay visible (and are refused).
- Slicer volume sequence (``.seq.nrrd``), read with pynrrd (:mod:`nrrd_io`): frame times from the
  ``axis N index values`` key, their unit from the NRRD ``units`` field of the list axis (or an
  ``axis N index unit`` key); Slicer >= 5.9 writes the list axis last (axis 3), older Slicer first
  (axis 0): both are read. RAS files come out in LPS. :func:`write_series_seq_nrrd` writes the axis-0
  layout, which every Slicer version reads.
- DICOM series folder: see :mod:`ctp_dicom`.
- ISLES 2018 case folder (``case_N/SMIR.Brain.XX.O.CT_4DPWI.<id>/...nii``): the CT_4DPWI series;
  :func:`isles2018_case` lists every modality.
- A folder that holds exactly one 4D NIfTI or NRRD file: that file.

Frame times are returned as stored (irregular ones included); :func:`resample_uniform` puts them on
a uniform grid. ``dt_s`` given to :func:`load_ctp` replaces the file's frame times by 0, dt, 2 dt ...
"""
import re
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .ctp_series import CTPSeries, VolumeGeometry
from .errors import InputError
from .volume_io import atomic_path

PLAUSIBLE_DT_S = (0.05, 60.0)
"""A frame interval (median) outside this range [s] means the file's time unit is wrong or missing."""

MIN_RESAMPLE_DT_S = 0.5
"""resample_uniform's default interval is the smallest one present, but never finer than this [s]."""

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")

_TIME_UNITS_S = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "msec": 1e-3, "msecs": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "us": 1e-6, "usec": 1e-6, "\u00b5s": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "min": 60.0, "minute": 60.0, "minutes": 60.0,
}


# --------------------------------------------------------------------------------------------- entry point

def load_ctp(path, dt_s: Optional[float] = None, series_uid: Optional[str] = None) -> CTPSeries:
    """A CTP series from a 4D NIfTI, a Slicer ``.seq.nrrd``, a DICOM series folder (or one of its files),
    an ISLES 2018 case folder, or a folder holding one 4D image file.

    dt_s: frame interval in seconds; replaces the file's frame times (required where the file has none).
    series_uid: the DICOM series to read from a folder that holds several.
    Raises InputError (one line naming the problem and the file) for anything that is not a readable
    CT perfusion series.
    """
    path = Path(path)
    dt_s = _checked_dt(dt_s)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if path.is_dir():
        return _load_folder(path, dt_s, series_uid)
    from .nifti_io import require_regular_file
    require_regular_file(path)
    if series_uid is not None and not name_is_dicom(path):
        raise InputError(f"--series chooses a DICOM series; {path.name} is not a DICOM file")
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti_series(path, dt_s)
    if name.endswith(NRRD_SUFFIXES):
        return read_nrrd_series(path, dt_s)
    from . import ctp_dicom
    if ctp_dicom.is_dicom_file(path):
        return ctp_dicom.read_dicom_series(path.parent, dt_s, file_hint=path, series_uid=series_uid)
    raise InputError(f"{path.name}: unsupported file type (expected a 4D NIfTI .nii/.nii.gz, a Slicer "
                     f".seq.nrrd, a DICOM series folder or an ISLES 2018 case folder)")


def name_is_dicom(path: Path) -> bool:
    from . import ctp_dicom
    return not path.name.lower().endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES) and ctp_dicom.is_dicom_file(path)


def _load_folder(folder: Path, dt_s: Optional[float], series_uid: Optional[str] = None) -> CTPSeries:
    if _isles_entries(folder):
        paths = isles2018_case(folder)
        if "CT_4DPWI" not in paths:
            raise InputError(f"{folder.name}: ISLES 2018 case folder without a CT_4DPWI perfusion series "
                             f"(found {', '.join(sorted(paths))})")
        return read_nifti_series(paths["CT_4DPWI"], dt_s)
    from . import ctp_dicom
    dicom_files = ctp_dicom.find_dicom_files(folder)
    if dicom_files:
        return ctp_dicom.read_dicom_series(folder, dt_s, files=dicom_files, series_uid=series_uid)
    if series_uid is not None:
        raise InputError(f"--series chooses a DICOM series; {folder} holds no DICOM files")
    images = sorted(p for p in folder.iterdir() if _is_regular(p) and not p.name.startswith(".")
                    and p.name.lower().endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES))
    if len(images) == 1:
        return load_ctp(images[0], dt_s)
    found = f"{len(images)} NIfTI/NRRD files, no DICOM" if images else "no DICOM, NIfTI or NRRD files"
    raise InputError(f"{folder}: no CT perfusion series found ({found}; expected a DICOM series, "
                     f"an ISLES 2018 case folder or a single 4D NIfTI/.seq.nrrd)")


def _is_regular(path: Path) -> bool:
    import stat
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _checked_dt(dt_s) -> Optional[float]:
    if dt_s is None:
        return None
    try:
        dt = float(dt_s)
    except (TypeError, ValueError):
        raise InputError(f"the frame interval --dt must be a number of seconds, got {dt_s!r}") from None
    if not np.isfinite(dt) or dt <= 0:
        raise InputError(f"the frame interval --dt must be a positive number of seconds, got {dt_s!r}")
    return dt


def make_series(data: np.ndarray, times_s, geometry: VolumeGeometry, source: str) -> CTPSeries:
    """CTPSeries(data, times_s, geometry) whose InputErrors name ``source`` (the file or folder)."""
    if data.ndim == 4 and data.shape[0] == 1:
        raise InputError(f"{source} is a 3D volume (one time frame), not a 4D CT perfusion series")
    try:
        return CTPSeries(data, times_s, geometry)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None


def _frame_times(n: int, dt_s: float, t0_s: float = 0.0) -> np.ndarray:
    return t0_s + dt_s * np.arange(n, dtype=np.float64)


def _check_plausible_dt(times_s: np.ndarray, source: str, what: str) -> None:
    if len(times_s) < 2 or not np.all(np.diff(times_s) > 0):
        return  # too short or not increasing: CTPSeries names that problem
    dt = float(np.median(np.diff(times_s)))
    lo, hi = PLAUSIBLE_DT_S
    if not (lo <= dt <= hi):
        raise InputError(f"{source}: frame interval {dt:g} s ({what}) is implausible for CT perfusion "
                         f"(expected {lo:g}-{hi:g} s): pass --dt SECONDS")


# ------------------------------------------------------------------------------------------------- NIfTI

def read_nifti_series(path, dt_s: Optional[float] = None) -> CTPSeries:
    """A 4D NIfTI (x, y, z, t) as a CTPSeries; the file's dtype is kept (scaled files come out float32).
    The file is checked first (:func:`nifti_io.open_nifti`: regular file, header, offset, voxel type,
    spacing, declared size against the file and the memory available).

    Frame interval: ``dt_s`` if given, else pixdim[4] in the header's time unit (xyzt_units: s, ms, us).
    With no time unit in the header, pixdim[4] is taken as seconds when it is a plausible CTP interval;
    a pixdim[4] of 0 means the frame times are missing. Frame times start at toffset."""
    from .nifti_io import open_nifti, read_array, time_unit_s
    path = Path(path)
    img, geometry = open_nifti(path, ctp=True)
    header = img.header
    dims = tuple(int(d) for d in header.get_data_shape())
    while len(dims) > 4 and dims[-1] == 1:
        dims = dims[:-1]
    if len(dims) < 4 or dims[3] == 1:
        raise InputError(f"{path.name} is a 3D volume, not a 4D CT perfusion series (x, y, z, t); "
                         f"its size is {' x '.join(str(d) for d in dims)}")
    if len(dims) > 4:
        raise InputError(f"{path.name} is a {len(dims)}D image; a CT perfusion series is 4D (x, y, z, t)")
    data = read_array(img).reshape(dims).T  # (t, z, y, x), a view
    data = np.ascontiguousarray(data)
    n = data.shape[0]
    if dt_s is not None:
        times = _frame_times(n, dt_s)
    else:
        unit = time_unit_s(header)
        p4 = float(header["pixdim"][4])
        if not np.isfinite(p4) or p4 <= 0:
            raise InputError(f"{path.name}: frame times are missing (pixdim[4] is {p4:g}): pass --dt SECONDS")
        what = (f"pixdim[4] = {p4:g} {_unit_name(unit)}" if unit is not None
                else f"pixdim[4] = {p4:g} with no time unit, read as seconds")
        toffset = float(header["toffset"])
        toffset = toffset if np.isfinite(toffset) else 0.0
        scale = 1.0 if unit is None else unit
        times = _frame_times(n, p4 * scale, toffset * scale)
        _check_plausible_dt(times, path.name, what)
    return make_series(data, times, geometry, path.name)


def _unit_name(unit_s: float) -> str:
    return {1.0: "s", 1e-3: "ms", 1e-6: "us"}.get(unit_s, f"x {unit_s:g} s")


# -------------------------------------------------------------------------------------- NRRD / .seq.nrrd

def read_nrrd_series(path, dt_s: Optional[float] = None) -> CTPSeries:
    """A Slicer volume sequence (``.seq.nrrd``: three domain axes and one list axis, first or last), or a
    4D NRRD whose fourth axis is time, as a CTPSeries in LPS (read with pynrrd, :mod:`nrrd_io`)."""
    from .nrrd_io import INDEX_KEY, list_axis, read_nrrd
    path = Path(path)
    data, geometry, header = read_nrrd(path)
    if data.ndim < 4:
        raise InputError(f"{path.name} is a {data.ndim}D volume, not a 4D CT perfusion series (a volume sequence)")
    if data.ndim > 4:
        raise InputError(f"{path.name}: expected a volume sequence of scalar volumes, got a {data.ndim}D image")
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    axis = list_axis(header)
    if axis is None:
        axis = 3
    if axis not in (0, 3):
        raise InputError(f"{path.name}: the frame axis of a volume sequence must be first or last, it is axis {axis}")
    if len(kinds) == 4 and kinds[axis] not in ("list", "time", "domain", "none", "???", "sequence"):
        raise InputError(f"{path.name}: a {kinds[axis]} image, not a volume sequence (its non-spatial axis "
                         f"must be a list of frames)")
    data = np.ascontiguousarray(np.moveaxis(data, -1, 0)) if axis == 0 else data  # (t, z, y, x)
    n = data.shape[0]
    if dt_s is not None:
        return make_series(data, _frame_times(n, dt_s), geometry, path.name)
    labels = list(header.get("labels", [""] * 4)) + [""] * 4
    units = list(header.get("units", [""] * 4)) + [""] * 4
    label, unit = str(labels[axis]), str(units[axis])
    values = None
    for key, text in header.items():
        m = INDEX_KEY.fullmatch(str(key))
        if m:
            values = str(text).split()
            index = m.group(1)
            if str(header.get(f"axis {index} index type", "numeric")).strip().lower() == "text":
                raise InputError(f"{path.name}: the sequence index is text, not frame times: pass --dt SECONDS")
            unit = str(header.get(f"axis {index} index unit", unit))
    if values is None:
        raise InputError(f"{path.name}: frame times are missing (no 'axis N index values' key): "
                         f"pass --dt SECONDS")
    if len(values) != n:
        raise InputError(f"{path.name}: {len(values)} index values for {n} frames")
    try:
        times = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        raise InputError(f"{path.name}: the sequence index values are not numbers: pass --dt SECONDS") from None
    unit = unit.strip().strip('"').strip()
    if unit:
        scale = _TIME_UNITS_S.get(unit.lower())
        if scale is None:
            raise InputError(f"{path.name}: the sequence index unit {unit!r} is not a time unit: "
                             f"pass --dt SECONDS")
        what = f"index unit {unit}"
    elif "time" in label.lower():
        scale, what = 1.0, "index without a unit, read as seconds"
    else:
        raise InputError(f"{path.name}: frame times are missing (the sequence index "
                         f"{label or 'frame'!r} has no time unit): pass --dt SECONDS")
    times = times * scale
    _check_plausible_dt(times, path.name, what)
    return make_series(data, times, geometry, path.name)


def write_series_seq_nrrd(path, series: CTPSeries, compress: bool = True, list_axis: int = 0) -> Path:
    """Writes ``series`` atomically as a Slicer volume sequence (``.seq.nrrd``): LPS space, frame times in
    seconds as the ``time`` index, scalar volume frames.

    list_axis: 0 (default) puts the time axis first (``kinds: list domain domain domain``, ``axis 0 index
    values``), the layout every Slicer version reads (Slicer <= 5.8 reads only this one); 3 puts it last,
    as Slicer >= 5.9 writes."""
    from .nrrd_io import write_sequence
    if list_axis not in (0, 3):
        raise ValueError(f"list_axis must be 0 or 3, got {list_axis}")
    with atomic_path(path) as tmp:
        write_sequence(tmp, series.data, series.times_s, series.geometry, compress, list_axis)
    return Path(path)


# -------------------------------------------------------------------------------------------- ISLES 2018

ISLES2018_MODALITIES = ("CT", "CT_4DPWI", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "OT")
_ISLES_NAME = re.compile(r"^SMIR\.Brain\.[^.]+\.[^.]+\.(?P<mod>[A-Za-z0-9_]+)\.(?P<id>\d+)(?P<ext>\.nii(\.gz)?)?$",
                         re.IGNORECASE)
_ISLES_CANONICAL = {m.upper(): m for m in ISLES2018_MODALITIES}


def _isles_entries(folder: Path):
    """(modality, entry) for every ``SMIR.Brain.*.<modality>.<id>`` folder (or .nii file) in ``folder``."""
    entries = []
    for entry in sorted(folder.iterdir()):
        m = _ISLES_NAME.match(entry.name)
        if not m or (entry.is_file() and not m.group("ext")) or (entry.is_dir() and m.group("ext")):
            continue
        modality = _ISLES_CANONICAL.get(m.group("mod").upper())
        if modality:
            entries.append((modality, entry))
    return entries


def isles2018_case(folder) -> Dict[str, Path]:
    """The image file of every modality in an ISLES 2018 case folder, keyed by modality name
    (CT, CT_4DPWI, CT_CBF, CT_CBV, CT_MTT, CT_Tmax and, in training cases, OT, the lesion mask).

    Layout: ``case_N/SMIR.Brain.XX.O.<modality>.<id>/SMIR.Brain.XX.O.<modality>.<id>.nii``
    (``.nii.gz`` and files lying directly in the case folder are accepted too)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"ISLES 2018 case folder not found: {folder}")
    found: Dict[str, Path] = {}
    for modality, entry in _isles_entries(folder):
        if entry.is_dir():
            images = sorted(p for p in entry.iterdir() if p.is_file()
                            and p.name.lower().endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
            named = [p for p in images if p.name.split(".nii")[0] == entry.name]
            images = named or images
            if len(images) != 1:
                raise InputError(f"{folder.name}/{entry.name}: expected one .nii image, found {len(images)}")
            image = images[0]
        else:
            image = entry
        if modality in found:
            raise InputError(f"{folder.name}: two {modality} images ({found[modality].name}, {image.name})")
        found[modality] = image
    if not found:
        raise InputError(f"{folder}: not an ISLES 2018 case folder (no SMIR.Brain.*.<modality>.<id> entries)")
    return found


# ------------------------------------------------------------------------------------ numpy and resampling

def series_from_array(array_tzyx, dt_s: Optional[float] = None, times_s: Optional[Sequence[float]] = None,
                      spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0),
                      direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)) -> CTPSeries:
    """A CTPSeries from a (t, z, y, x) array (kept as is, no copy), with frame times given either as an
    interval ``dt_s`` (times 0, dt, 2 dt ...) or as ``times_s``; geometry in LPS as SimpleITK's."""
    array = np.asarray(array_tzyx)
    if dt_s is not None and times_s is not None:
        raise InputError("give the frame interval dt_s or the frame times times_s, not both")
    if times_s is None:
        if dt_s is None:
            raise InputError("frame times are missing: give the frame interval (dt_s) or the frame times")
        times_s = _frame_times(array.shape[0] if array.ndim else 0, _checked_dt(dt_s))
    return make_series(array, times_s, VolumeGeometry(spacing_mm, origin_mm, direction), "array")


def uniform_grid(times_s, dt_s: Optional[float] = None) -> np.ndarray:
    """The uniform time grid resample_uniform puts a series on: from the first frame time, every ``dt_s``
    seconds up to (not past) the last one. Default interval: the smallest one present, rounded to 1 ms,
    but not finer than MIN_RESAMPLE_DT_S (0.5 s), so no sample of the densely sampled bolus phase is
    lost while near-duplicate frames cannot blow up the frame count."""
    times = np.asarray(times_s, dtype=np.float64)
    if dt_s is None:
        dt_s = max(round(float(np.min(np.diff(times))), 3), MIN_RESAMPLE_DT_S)
    dt_s = _checked_dt(dt_s)
    n = int(np.floor((times[-1] - times[0]) / dt_s + 1e-6)) + 1
    if n < 2:
        raise InputError(f"cannot resample to a {dt_s:g} s grid: the series lasts only {times[-1] - times[0]:g} s")
    return times[0] + dt_s * np.arange(n, dtype=np.float64)


def resample_uniform(series: CTPSeries, dt_s: Optional[float] = None) -> CTPSeries:
    """The series on a uniform time grid (:func:`uniform_grid`), by linear interpolation in time.

    A series that is already uniform (CTPSeries.is_uniform) and is not asked for another interval is
    returned unchanged (the same object). Otherwise each output frame is interpolated from its two
    neighbouring input frames, one frame at a time, so memory stays at the output plus one frame;
    integer data come out float32, float data keep their dtype."""
    if series.is_uniform and (dt_s is None or abs(float(dt_s) - series.dt_s) <= 1e-6 * max(1.0, series.dt_s)):
        return series
    t = series.times_s
    grid = uniform_grid(t, dt_s)
    src = series.data
    out_dtype = src.dtype if np.issubdtype(src.dtype, np.floating) else np.dtype(np.float32)
    out = np.empty((len(grid),) + src.shape[1:], dtype=out_dtype)
    right = np.clip(np.searchsorted(t, grid, side="right"), 1, len(t) - 1)
    for k, tau in enumerate(grid):
        i = right[k] - 1
        w = (tau - t[i]) / (t[i + 1] - t[i])
        if w <= 1e-9:
            out[k] = src[i]
        elif w >= 1.0 - 1e-9:
            out[k] = src[i + 1]
        else:
            frame = src[i].astype(out_dtype)
            frame *= out_dtype.type(1.0 - w)
            frame += out_dtype.type(w) * src[i + 1].astype(out_dtype, copy=False)
            out[k] = frame
    try:
        return CTPSeries(out, grid, series.geometry, dict(series.source_info))
    except InputError as e:
        raise InputError(f"resampled to a uniform {grid[1] - grid[0]:g} s grid: {e}") from None
