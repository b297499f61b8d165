"""A CT perfusion series from a folder of single-frame DICOM files (one file per slice and time point).

Tags are read with SimpleITK (GDCM) ``ReadImageInformation``; pixel data with ``ImageSeriesReader``, which
applies Rescale Slope/Intercept (values in HU).

Frames: the files of one series (Series Instance UID) are grouped by Acquisition Time (0008,0032), else Content Time (0008,0033), else Temporal Position
Identifier (0020,0100) -- the first key that splits them into frames that each hold every slice position
once. Scanners that stamp every slice with its own time fail that test; their files are then grouped by
slice position and the k-th time point of every position makes frame k. Slices are sorted along the
slice normal (Image Position Patient . (row x column direction)).

Frame times [s, from the first frame]: the mean Acquisition Time of the frame's slices, else Content
Time, else Trigger Time (0018,1060, ms) -- the first present in every file that is not the same in
every frame. Times wrap at midnight (a series shorter than 12 h is unwrapped).

Also read: AcquisitionDateTime (0008,002A) when the time tags are only there; one enhanced multi-frame file
(:mod:`io.dicom_enhanced`); compressed transfer syntaxes that GDCM decodes (JPEG lossless, JPEG 2000, RLE).

Refused with one line: a toggling-table ("shuttle") acquisition, whose table positions alternate with their
own frame times; a folder holding several series, unless one is chosen (``series_uid``, the
command line's ``--series UID``; the error lists each series' UID, description, image count and time
points); images of one series with different orientations or pixel spacings; slice positions with a gap
(a slice missing in every frame).
"""
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from AIFSelectorLib.ctp_series import make_series
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.dicom_enhanced import ENHANCED_SOP_CLASSES, dicom_datetime_s, read_enhanced_series
from AIFSelectorLib.io.nifti import is_regular_file
from AIFSelectorLib.io.time_grid import frame_times
from AIFSelectorLib.io.volume_io import geometry_of

TAG_SERIES_UID = "0020|000e"
TAG_POSITION = "0020|0032"
TAG_ORIENTATION = "0020|0037"
TAG_ACQUISITION_TIME = "0008|0032"
TAG_CONTENT_TIME = "0008|0033"
TAG_TEMPORAL_POSITION = "0020|0100"
TAG_TRIGGER_TIME = "0018|1060"
TAG_INSTANCE_NUMBER = "0020|0013"
TAG_SERIES_DESCRIPTION = "0008|103e"
TAG_ACQUISITION_DATETIME = "0008|002a"
TAG_NUMBER_OF_FRAMES = "0028|0008"
TAG_SOP_CLASS = "0008|0016"
TAG_PIXEL_SPACING = "0028|0030"
TAG_STUDY_DATE = "0008|0020"
TAG_ACQUISITION_DATE = "0008|0022"

_ORIENTATION_TOL = 1e-3  # direction cosines that differ by less are the same orientation
_SPACING_TOL_MM = 1e-3
_SLICE_GAP_FACTOR = 1.5  # a gap between slice positions above this many times the smallest spacing is a hole

_POSITION_DECIMALS = 2  # slice positions equal to 0.01 mm are the same position


def is_dicom_file(path) -> bool:
    """True for a regular file with the DICOM preamble ('DICM' at byte 128) or a .dcm/.ima name (a pipe or
    device is never opened: it could block forever)."""
    path = Path(path)
    if not is_regular_file(path):
        return False
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def find_dicom_files(folder) -> List[Path]:
    """DICOM files in ``folder`` and its subfolders (hidden files and folders skipped), sorted by path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            if not name.startswith(".") and is_dicom_file(p):
                found.append(p)
    return found


def dicom_time_s(text: str) -> Optional[float]:
    """Seconds since midnight from a DICOM TM value (HHMMSS.ffffff, HHMM, HH, or HH:MM:SS); None if empty
    or unreadable."""
    s = text.strip().replace(":", "")
    if not s:
        return None
    try:
        hh = int(s[0:2])
        mm = int(s[2:4]) if len(s) >= 4 else 0
        ss = float(s[4:]) if len(s) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600.0 + mm * 60.0 + ss


class _Slice:
    __slots__ = ("path", "series", "ipp", "iop", "fields", "pos", "description", "pixel_spacing", "date", "enhanced")

    def __init__(self, path: Path, reader: sitk.ImageFileReader):
        def tag(key):
            return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

        self.path = path
        self.series = tag(TAG_SERIES_UID)
        self.ipp = _floats(tag(TAG_POSITION), 3)
        self.iop = _floats(tag(TAG_ORIENTATION), 6)
        self.description = tag(TAG_SERIES_DESCRIPTION)
        self.pixel_spacing = _floats(tag(TAG_PIXEL_SPACING), 2)
        self.date = tag(TAG_ACQUISITION_DATE) or tag(TAG_STUDY_DATE)
        frames = _number(tag(TAG_NUMBER_OF_FRAMES))
        self.enhanced = tag(TAG_SOP_CLASS) in ENHANCED_SOP_CLASSES and frames is not None and frames > 1
        self.fields = {
            "acquisition time": dicom_time_s(tag(TAG_ACQUISITION_TIME)),
            "acquisition datetime": dicom_datetime_s(tag(TAG_ACQUISITION_DATETIME)),
            "content time": dicom_time_s(tag(TAG_CONTENT_TIME)),
            "temporal position": _number(tag(TAG_TEMPORAL_POSITION)),
            "trigger time": _number(tag(TAG_TRIGGER_TIME)),
            "instance number": _number(tag(TAG_INSTANCE_NUMBER)),
        }
        self.pos = 0.0


def _floats(text: str, n: int) -> Optional[np.ndarray]:
    try:
        values = [float(v) for v in text.split("\\")]
    except ValueError:
        return None
    return np.array(values) if len(values) == n else None


def _number(text: str) -> Optional[float]:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _read_headers(files: Sequence[Path]) -> List[_Slice]:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    slices = []
    for p in files:
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue  # not an image (DICOMDIR, structured report ...) or unreadable
        slices.append(_Slice(p, reader))
    return slices


def _unwrap_midnight(slices: List[_Slice], field: str) -> None:
    values = [s.fields[field] for s in slices if s.fields[field] is not None]
    if values and max(values) - min(values) > 43200.0:
        for s in slices:
            if s.fields[field] is not None and s.fields[field] < 43200.0:
                s.fields[field] += 86400.0


def _group(slices: List[_Slice], field: str) -> Dict[float, List[_Slice]]:
    groups: Dict[float, List[_Slice]] = {}
    for s in slices:
        groups.setdefault(round(s.fields[field], 4), []).append(s)
    return groups


def _describe_series(uid: str, slices: List["_Slice"]) -> str:
    positions = {round(float(np.dot(s.ipp, np.cross(s.iop[:3], s.iop[3:]))), _POSITION_DECIMALS)
                 for s in slices if s.ipp is not None and s.iop is not None}
    points = len(slices) // max(len(positions), 1)
    description = slices[0].description or "no description"
    return f"{uid or '(no UID)'} '{description}' ({len(slices)} images, {points} time points)"


def _check_consistent(slices: List["_Slice"], source: str) -> None:
    """One orientation and one pixel spacing for every image of the series."""
    first = slices[0]
    for s in slices[1:]:
        if np.max(np.abs(s.iop - first.iop)) > _ORIENTATION_TOL:
            raise InputError(f"{source}: DICOM image {s.path.name} has another orientation than {first.path.name} "
                             f"(Image Orientation Patient differs): the series mixes orientations")
        if (s.pixel_spacing is None) != (first.pixel_spacing is None) or (
                s.pixel_spacing is not None and np.max(np.abs(s.pixel_spacing - first.pixel_spacing)) > _SPACING_TOL_MM):
            raise InputError(f"{source}: DICOM image {s.path.name} has another pixel spacing than "
                             f"{first.path.name}: the series mixes pixel spacings")


def _refuse_table_toggling(groups: Dict[float, List["_Slice"]], positions: List[float], source: str) -> None:
    """InputError when the time points cover disjoint slabs of several slices each that together make the
    whole series: a toggling-table ("shuttle") acquisition, whose slabs each have their own frame times.
    Refused rather than merged, because one time grid would misplace every other slab's frames."""
    slabs = {frozenset(s.pos for s in g) for g in groups.values()}
    if len(slabs) < 2 or any(len(slab) < 2 for slab in slabs):
        return
    union = set().union(*slabs)
    if sum(len(slab) for slab in slabs) == len(union) and union == set(positions):
        ranges = ", ".join(f"{min(slab):g} to {max(slab):g} mm" for slab in sorted(slabs, key=min))
        raise InputError(f"{source}: a toggling-table (shuttle) acquisition: {len(slabs)} table positions "
                         f"({ranges}) alternate, each with its own frame times; not supported: put each table "
                         f"position's images in a folder of its own and process them separately")


def _check_no_gap(positions: List[float], source: str) -> None:
    if len(positions) < 3:
        return
    gaps = np.diff(positions)
    step = float(gaps.min())
    worst = int(np.argmax(gaps))
    if gaps[worst] > _SLICE_GAP_FACTOR * step:
        raise InputError(f"{source}: a slice is missing in every frame between positions {positions[worst]:g} and "
                         f"{positions[worst + 1]:g} mm (gap {gaps[worst]:g} mm, slices {step:g} mm apart)")


def read_dicom_series(folder, dt_s: Optional[float] = None, files: Optional[Sequence[Path]] = None,
                      file_hint: Optional[Path] = None, series_uid: Optional[str] = None):
    """A CTPSeries from the DICOM files in ``folder`` (or ``files``). ``file_hint``: read the series this
    file belongs to; ``series_uid``: read this series of a folder holding several (InputError listing them
    when a folder holds several and neither is given). ``dt_s`` replaces the frame times. The series'
    UID, description and acquisition date are in the result's ``source_info``."""

    folder = Path(folder)
    source = folder.name or str(folder)
    files = list(files) if files is not None else find_dicom_files(folder)
    slices = _read_headers(files)
    if not slices:
        raise InputError(f"{folder}: no readable DICOM images found")
    by_series: Dict[str, List[_Slice]] = {}
    for s in slices:
        by_series.setdefault(s.series, []).append(s)
    if series_uid is not None:
        if series_uid not in by_series:
            listed = "; ".join(_describe_series(u, v) for u, v in sorted(by_series.items()))
            raise InputError(f"{source}: no DICOM series with UID {series_uid} (found: {listed})")
        slices = by_series[series_uid]
    elif file_hint is not None:
        hint = [s for s in slices if s.path.resolve() == Path(file_hint).resolve()]
        if not hint:
            raise InputError(f"cannot read {Path(file_hint).name}: not a DICOM image, or it is corrupted")
        slices = by_series[hint[0].series]
    elif len(by_series) > 1:
        listed = "; ".join(_describe_series(u, v) for u, v in sorted(by_series.items(), key=lambda kv: -len(kv[1])))
        raise InputError(f"{source} holds {len(by_series)} DICOM series: {listed}; choose one with --series UID")
    else:
        slices = next(iter(by_series.values()))
    uid = slices[0].series
    if len(slices) == 1 and slices[0].enhanced:
        return read_enhanced_series(slices[0].path, dt_s)
    if len(slices) == 1:
        raise InputError(f"{source}: a single DICOM image, not a CT perfusion series")
    for s in slices:
        if s.ipp is None or s.iop is None:
            raise InputError(f"{source}: DICOM file {s.path.name} has no Image Position/Orientation (Patient)")
    _check_consistent(slices, source)
    normal = np.cross(slices[0].iop[:3], slices[0].iop[3:])
    for s in slices:
        s.pos = round(float(np.dot(s.ipp, normal)), _POSITION_DECIMALS)
    positions = sorted({s.pos for s in slices})
    _check_no_gap(positions, source)
    for field in ("acquisition time", "content time"):
        _unwrap_midnight(slices, field)

    def present(field):
        return all(s.fields[field] is not None for s in slices)

    frames = None
    first_grouping = None
    for field in ("acquisition time", "content time", "acquisition datetime", "temporal position"):
        if not present(field):
            continue
        groups = _group(slices, field)
        if len(groups) < 2:
            continue
        if all(len(g) == len(positions) and len({s.pos for s in g}) == len(positions) for g in groups.values()):
            frames = [groups[k] for k in sorted(groups)]
            break
        first_grouping = first_grouping or (field, groups)
    if frames is None and first_grouping:  # no field groups whole volumes: slabs with their own times?
        _refuse_table_toggling(first_grouping[1], positions, source)
    if frames is None:  # per-slice time stamps: the k-th time point at every slice position is frame k
        by_pos: Dict[float, List[_Slice]] = {}
        for s in slices:
            by_pos.setdefault(s.pos, []).append(s)
        counts = sorted({len(v) for v in by_pos.values()})
        if counts == [1]:
            raise InputError(f"{source}: the DICOM series has one image per slice position: a 3D volume, "
                             f"not a CT perfusion series")
        if len(counts) > 1:
            if first_grouping:
                field, groups = first_grouping
                sizes = sorted({len(g) for g in groups.values()})
                raise InputError(f"{source}: the DICOM frames have different slice counts "
                                 f"({', '.join(map(str, sizes))} slices per frame, grouped by {field}; "
                                 f"{len(positions)} slice positions)")
            raise InputError(f"{source}: the DICOM frames have different slice counts "
                             f"(slice positions hold {', '.join(map(str, counts))} images)")
        order = next((f for f in ("acquisition time", "content time", "acquisition datetime", "trigger time",
                                  "temporal position", "instance number")
                      if present(f) and len({s.fields[f] for s in slices}) > 1), None)
        if order is None:
            raise InputError(f"{source}: frame times are missing (no acquisition, content or trigger time, "
                             f"temporal position or instance number to order the images)")
        for v in by_pos.values():
            v.sort(key=lambda s: s.fields[order])
        frames = [[by_pos[p][k] for p in positions] for k in range(counts[0])]
    for frame in frames:
        frame.sort(key=lambda s: s.pos)
        if [s.pos for s in frame] != positions:
            raise InputError(f"{source}: the DICOM frames cover different slice positions")

    n = len(frames)
    if dt_s is not None:
        times = frame_times(n, dt_s)
    else:
        times = None
        for field, scale in (("acquisition time", 1.0), ("content time", 1.0), ("acquisition datetime", 1.0),
                             ("trigger time", 1e-3)):
            if not present(field):
                continue
            t = np.array([np.mean([s.fields[field] for s in f]) for f in frames]) * scale
            if len(np.unique(np.round(t, 4))) > 1:
                times = t - t[0]
                break
        if times is None:
            raise InputError(f"{source}: frame times are missing (no acquisition, content or trigger time "
                             f"that differs between frames): pass --dt SECONDS")

    data, geometry = _read_frames(frames, source)
    series = make_series(data, times, geometry, source)
    series.source_info = {"series_instance_uid": uid, "series_description": slices[0].description,
                          "acquisition_date": slices[0].date}
    return series


def _read_frames(frames: List[List[_Slice]], source: str):
    """Pixel data (t, z, y, x) in HU; integer data that fit are stored as int16."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    data = geometry = None
    for k, frame in enumerate(frames):
        reader.SetFileNames([str(s.path) for s in frame])
        try:
            image = reader.Execute()
        except RuntimeError:
            raise InputError(f"{source}: cannot read the DICOM images of frame {k + 1} "
                             f"(corrupted or not image files)") from None
        array = sitk.GetArrayFromImage(image)
        if data is None:
            geometry = geometry_of(image)
            dtype = _storage_dtype(array)
            data = np.empty((len(frames),) + array.shape, dtype=dtype)
        elif array.shape != data.shape[1:]:
            raise InputError(f"{source}: DICOM frame {k + 1} has size {array.shape[::-1]}, "
                             f"frame 1 has {data.shape[1:][::-1]}")
        else:
            wider = np.result_type(data.dtype, _storage_dtype(array))
            if wider != data.dtype:
                data = data.astype(wider)
        data[k] = array
    return data, geometry


def _storage_dtype(array: np.ndarray) -> np.dtype:
    if np.issubdtype(array.dtype, np.integer) and array.size and \
            array.min() >= np.iinfo(np.int16).min and array.max() <= np.iinfo(np.int16).max:
        return np.dtype(np.int16)
    return array.dtype
