"""Reading a CT perfusion series from every supported input, and writing Slicer volume sequences.

Inputs (:func:`load_ctp` dispatches on what the path is):

- 4D NIfTI (``.nii``/``.nii.gz``, x, y, z, t), read with nibabel after the checks of :mod:`io.nifti`:
  the frame interval is pixdim[4] in the header's time unit (xyzt_units: s, ms or us, converted to
  seconds), frame times start at toffset; NaN and inf stay visible (and are refused).
- Slicer volume sequence (``.seq.nrrd``), read with pynrrd (:mod:`io.nrrd`): frame times from the
  ``axis N index values`` key, their unit from the NRRD ``units`` field of the list axis (or an
  ``axis N index unit`` key); Slicer >= 5.9 writes the list axis last (axis 3), older Slicer first
  (axis 0): both are read. RAS files come out in LPS. :func:`write_series_seq_nrrd` writes the axis-0
  layout, which every Slicer version reads.
- DICOM series folder: see :mod:`io.dicom`.
- ISLES 2018 case folder (``case_N/SMIR.Brain.XX.O.CT_4DPWI.<id>/...nii``): the CT_4DPWI series;
  :func:`io.isles2018.isles2018_case` lists every modality.
- A folder that holds exactly one 4D NIfTI or NRRD file: that file.

Frame times are returned as stored (irregular ones included); they are put on
a uniform grid (:func:`io.time_grid.resample_uniform`). ``dt_s`` given to :func:`load_ctp` replaces the file's frame times by 0, dt, 2 dt ...
"""
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry, make_series
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.isles2018 import isles2018_case, isles_entries
from AIFSelectorLib.io.nifti import is_regular_file
from AIFSelectorLib.io.time_grid import check_plausible_dt, checked_dt, frame_times, seconds_per_unit
from AIFSelectorLib.io.volume_io import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")


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
    dt_s = checked_dt(dt_s)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if path.is_dir():
        return _load_folder(path, dt_s, series_uid)
    from AIFSelectorLib.io.nifti import require_regular_file
    require_regular_file(path)
    if series_uid is not None and not name_is_dicom(path):
        raise InputError(f"--series chooses a DICOM series; {path.name} is not a DICOM file")
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti_series(path, dt_s)
    if name.endswith(NRRD_SUFFIXES):
        return read_nrrd_series(path, dt_s)
    if _dicom().is_dicom_file(path):
        return _dicom().read_dicom_series(path.parent, dt_s, file_hint=path, series_uid=series_uid)
    raise InputError(f"{path.name}: unsupported file type (expected a 4D NIfTI .nii/.nii.gz, a Slicer "
                     f".seq.nrrd, a DICOM series folder or an ISLES 2018 case folder)")


def load_uniform_series(path, dt_s: Optional[float] = None, series_uid: Optional[str] = None):
    """A CTP series from any supported input (see load_ctp), resampled to a uniform grid when its frames are
    irregular: what every front end (command line, web app) loads. Returns (series, note), where note says
    what was resampled, or ''."""
    from AIFSelectorLib.io.time_grid import resample_uniform
    series = load_ctp(path, dt_s=dt_s, series_uid=series_uid)
    if series.is_uniform:
        return series, ""
    uniform = resample_uniform(series)
    return uniform, f"irregular frame times resampled to a uniform {uniform.dt_s:g} s grid"


def _dicom():
    """The DICOM reader, imported on first use (SimpleITK takes 0.3 s to import: NIfTI and NRRD need none)."""
    from AIFSelectorLib.io import dicom
    return dicom


def name_is_dicom(path: Path) -> bool:
    return not path.name.lower().endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES) and _dicom().is_dicom_file(path)


def _load_folder(folder: Path, dt_s: Optional[float], series_uid: Optional[str] = None) -> CTPSeries:
    if isles_entries(folder):
        paths = isles2018_case(folder)
        if "CT_4DPWI" not in paths:
            raise InputError(f"{folder.name}: ISLES 2018 case folder without a CT_4DPWI perfusion series "
                             f"(found {', '.join(sorted(paths))})")
        return read_nifti_series(paths["CT_4DPWI"], dt_s)
    dicom_files = _dicom().find_dicom_files(folder)
    if dicom_files:
        return _dicom().read_dicom_series(folder, dt_s, files=dicom_files, series_uid=series_uid)
    if series_uid is not None:
        raise InputError(f"--series chooses a DICOM series; {folder} holds no DICOM files")
    images = sorted(p for p in folder.iterdir() if is_regular_file(p) and not p.name.startswith(".")
                    and p.name.lower().endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES))
    if len(images) == 1:
        return load_ctp(images[0], dt_s)
    found = f"{len(images)} NIfTI/NRRD files, no DICOM" if images else "no DICOM, NIfTI or NRRD files"
    raise InputError(f"{folder}: no CT perfusion series found ({found}; expected a DICOM series, "
                     f"an ISLES 2018 case folder or a single 4D NIfTI/.seq.nrrd)")


# ------------------------------------------------------------------------------------------------- NIfTI

def read_nifti_series(path, dt_s: Optional[float] = None) -> CTPSeries:
    """A 4D NIfTI (x, y, z, t) as a CTPSeries; the file's dtype is kept (scaled files come out float32).
    The file is checked first (:func:`nifti_io.open_nifti`: regular file, header, offset, voxel type,
    spacing, declared size against the file and the memory available).

    Frame interval: ``dt_s`` if given, else pixdim[4] in the header's time unit (xyzt_units: s, ms, us).
    With no time unit in the header, pixdim[4] is taken as seconds when it is a plausible CTP interval;
    a pixdim[4] of 0 means the frame times are missing. Frame times start at toffset."""
    from AIFSelectorLib.io.nifti import open_nifti, read_array, time_unit_s
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
        times = frame_times(n, dt_s)
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
        times = frame_times(n, p4 * scale, toffset * scale)
        check_plausible_dt(times, path.name, what)
    return make_series(data, times, geometry, path.name)


def _unit_name(unit_s: float) -> str:
    return {1.0: "s", 1e-3: "ms", 1e-6: "us"}.get(unit_s, f"x {unit_s:g} s")


# -------------------------------------------------------------------------------------- NRRD / .seq.nrrd

def read_nrrd_series(path, dt_s: Optional[float] = None) -> CTPSeries:
    """A Slicer volume sequence (``.seq.nrrd``: three domain axes and one list axis, first or last), or a
    4D NRRD whose fourth axis is time, as a CTPSeries in LPS (read with pynrrd, :mod:`nrrd_io`)."""
    from AIFSelectorLib.io.nrrd import INDEX_KEY, list_axis, read_nrrd
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
        return make_series(data, frame_times(n, dt_s), geometry, path.name)
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
        scale = seconds_per_unit(unit)
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
    check_plausible_dt(times, path.name, what)
    return make_series(data, times, geometry, path.name)


def write_series_seq_nrrd(path, series: CTPSeries, compress: bool = True, list_axis: int = 0) -> Path:
    """Writes ``series`` atomically as a Slicer volume sequence (``.seq.nrrd``): LPS space, frame times in
    seconds as the ``time`` index, scalar volume frames.

    list_axis: 0 (default) puts the time axis first (``kinds: list domain domain domain``, ``axis 0 index
    values``), the layout every Slicer version reads (Slicer <= 5.8 reads only this one); 3 puts it last,
    as Slicer >= 5.9 writes."""
    from AIFSelectorLib.io.nrrd import write_sequence
    if list_axis not in (0, 3):
        raise ValueError(f"list_axis must be 0 or 3, got {list_axis}")
    with atomic_path(path) as tmp:
        write_sequence(tmp, series.data, series.times_s, series.geometry, compress, list_axis)
    return Path(path)


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
        times_s = frame_times(array.shape[0] if array.ndim else 0, checked_dt(dt_s))
    return make_series(array, times_s, VolumeGeometry(spacing_mm, origin_mm, direction), "array")
