"""A CT perfusion series from one enhanced multi-frame DICOM file (Enhanced CT/MR Image Storage: every slice
and time point a frame of one object, described by the per-frame functional groups), read with pydicom.

Per frame: the position (Plane Position, Image Position Patient), the orientation (Plane Orientation, per
frame or shared), the pixel spacing (Pixel Measures), the rescale to HU (Pixel Value Transformation, per
frame or shared; else the top-level Rescale Slope/Intercept), and the time: Frame Acquisition DateTime,
else Frame Reference DateTime, else the Temporal Position Index (then ``dt_s`` is needed). Frames are
grouped into time points by that time and sorted along the slice normal. Compressed transfer syntaxes
are decoded by pydicom (RLE natively; JPEG and JPEG 2000 with its optional plugins).
"""
import re
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np

from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry, make_series
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.time_grid import frame_times

ENHANCED_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT", "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
                        "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
                        "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR"}


def dicom_datetime_s(text) -> Optional[float]:
    """Seconds (POSIX, UTC offset ignored) of a DICOM DT value YYYYMMDDHHMMSS.FFFFFF[&ZZXX]; None if unreadable."""
    s = re.split(r"[+-]", str(text or "").strip())[0]
    if len(s) < 14:
        return None
    try:
        whole = datetime.strptime(s[:14], "%Y%m%d%H%M%S")
        fraction = float("0" + s[14:]) if len(s) > 14 and s[14] == "." else 0.0
    except ValueError:
        return None
    return (whole - datetime(1970, 1, 1)).total_seconds() + fraction


def is_enhanced_multiframe(path) -> bool:
    """True for a DICOM file of an enhanced (multi-frame, functional groups) image storage class."""
    try:
        import pydicom
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID", "NumberOfFrames"])
    except Exception:  # noqa: BLE001 - not DICOM, unreadable, or pydicom missing: not ours to read
        return False
    return str(getattr(ds, "SOPClassUID", "")) in ENHANCED_SOP_CLASSES and int(getattr(ds, "NumberOfFrames", 1) or 1) > 1


def _item(groups, name):
    seq = getattr(groups, name, None) if groups is not None else None
    return seq[0] if seq else None


def _per_frame(ds, i, name):
    """Functional group ``name`` of frame i: per-frame if present, else shared."""
    per = ds.PerFrameFunctionalGroupsSequence[i] if "PerFrameFunctionalGroupsSequence" in ds else None
    return _item(per, name) or _item(_item(ds, "SharedFunctionalGroupsSequence"), name)


def _frame_fields(ds, n: int, source: str):
    """Per frame: position (3,), orientation (6,), pixel spacing (2,), time (s or None), temporal position
    index (or None), rescale slope and intercept, from the functional groups."""
    positions, orientations, spacings, times, temporal = [], [], [], [], []
    slopes = np.ones(n)
    intercepts = np.zeros(n)
    for i in range(n):
        plane = _per_frame(ds, i, "PlanePositionSequence")
        orient = _per_frame(ds, i, "PlaneOrientationSequence")
        measures = _per_frame(ds, i, "PixelMeasuresSequence")
        content = _per_frame(ds, i, "FrameContentSequence")
        transform = _per_frame(ds, i, "PixelValueTransformationSequence")
        if plane is None or orient is None or measures is None:
            raise InputError(f"{source}: frame {i + 1} has no plane position, orientation or pixel spacing")
        positions.append([float(v) for v in plane.ImagePositionPatient])
        orientations.append([float(v) for v in orient.ImageOrientationPatient])
        spacings.append([float(v) for v in measures.PixelSpacing])
        when = None
        if content is not None:
            when = dicom_datetime_s(getattr(content, "FrameAcquisitionDateTime", "")) or dicom_datetime_s(
                getattr(content, "FrameReferenceDateTime", ""))
            index = getattr(content, "TemporalPositionIndex", None)
            temporal.append(None if index is None else int(index))
        else:
            temporal.append(None)
        times.append(when)
        source_transform = transform if transform is not None else ds
        slopes[i] = float(getattr(source_transform, "RescaleSlope", 1.0) or 1.0)
        intercepts[i] = float(getattr(source_transform, "RescaleIntercept", 0.0) or 0.0)
    positions = np.array(positions, dtype=np.float64).reshape(n, 3)
    orientations = np.array(orientations, dtype=np.float64).reshape(n, 6)
    spacings = np.array(spacings, dtype=np.float64).reshape(n, 2)
    return positions, orientations, spacings, times, temporal, slopes, intercepts


def read_enhanced_series(path, dt_s: Optional[float] = None) -> CTPSeries:
    """The CTP series of one enhanced multi-frame DICOM file (see the module doc); InputError (one line) for
    a file that is not one, frames without positions or times, mixed orientations or spacings, or time
    points that do not cover the same slices."""
    import pydicom
    path = Path(path)
    source = path.name
    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - corrupt file, unsupported compression
        raise InputError(f"cannot read {source}: {type(e).__name__}: {e}".splitlines()[0]) from None
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise InputError(f"{source}: {ds.SamplesPerPixel} samples per pixel (colour), not a CT or MR image")
    if per_frame is None or len(per_frame) != n:
        raise InputError(f"{source}: {n} frames but {0 if per_frame is None else len(per_frame)} per-frame "
                         f"functional groups: the file is corrupted")
    pixels = np.asarray(pixels).reshape((n,) + tuple(pixels.shape[-2:]))
    try:
        positions, orientations, spacings, times, temporal, slopes, intercepts = _frame_fields(ds, n, source)
    except (AttributeError, ValueError, TypeError, IndexError, KeyError) as e:
        raise InputError(f"{source}: unreadable per-frame functional groups ({type(e).__name__})") from None
    if np.max(np.abs(orientations - orientations[0])) > 1e-3:
        raise InputError(f"{source}: the frames have different orientations: the series mixes orientations")
    if np.max(np.abs(spacings - spacings[0])) > 1e-3:
        raise InputError(f"{source}: the frames have different pixel spacings")
    row, col = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, col)
    pos = np.round(np.array(positions) @ normal, 2)
    nz = len(np.unique(pos))
    by_index = all(t is not None for t in temporal)
    if all(t is not None for t in times) and (
            len(np.unique(np.round(np.array(times, dtype=np.float64), 3))) * nz == n or not by_index):
        keys = np.round(np.array(times, dtype=np.float64), 3)
    elif by_index and all(t is not None for t in times):  # per-slice times: frames by their temporal index,
        keys = np.array(temporal, dtype=np.float64)        # each time point at its slices' mean time
        index_times = {k: np.mean([t for t, i in zip(times, temporal) if i == k]) for k in set(temporal)}
        times = [index_times[i] for i in temporal]
    elif by_index:
        keys = np.array(temporal, dtype=np.float64)
        if dt_s is None:
            raise InputError(f"{source}: frame times are missing (only temporal position indices): pass --dt SECONDS")
    else:
        raise InputError(f"{source}: frame times are missing (no frame acquisition or reference datetime, no "
                         f"temporal position index): pass --dt SECONDS")
    slice_positions = np.unique(pos)
    time_points = np.unique(keys)
    key_times = {k: np.mean([t for t, kk in zip(times, keys) if kk == k]) if all(t is not None for t in times)
                 else None for k in time_points}
    if len(time_points) < 2:
        raise InputError(f"{source}: all frames have one time: a 3D volume, not a CT perfusion series")
    if len(time_points) * nz != n:
        raise InputError(f"{source}: {n} frames do not make {len(time_points)} time points of {nz} slices "
                         f"(a time point misses slices, or several table positions alternate)")
    data = np.empty((len(time_points), nz) + pixels.shape[1:], dtype=np.float32)
    filled = np.zeros((len(time_points), nz), bool)
    t_index = np.searchsorted(time_points, keys)
    z_index = np.searchsorted(slice_positions, pos)
    for i in range(n):
        if filled[t_index[i], z_index[i]]:
            raise InputError(f"{source}: two frames at one slice position and time")
        data[t_index[i], z_index[i]] = pixels[i] * slopes[i] + intercepts[i]
        filled[t_index[i], z_index[i]] = True
    first = int(np.argmin(pos))
    step = float(np.median(np.diff(slice_positions))) if nz > 1 else float(getattr(ds, "SliceThickness", 1.0) or 1.0)
    # pixel spacing is (row spacing, column spacing) = (dy, dx)
    geometry = VolumeGeometry((spacings[0][1], spacings[0][0], step), tuple(positions[first]),
                              np.column_stack([row, col, normal]))
    if dt_s is not None or any(key_times[k] is None for k in time_points):
        seconds = frame_times(len(time_points), dt_s)
    else:
        seconds = np.array([key_times[k] for k in time_points]) - key_times[time_points[0]]
    if np.all(data == np.round(data)) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    series = make_series(data, seconds, geometry, source)
    series.source_info = {"series_instance_uid": str(getattr(ds, "SeriesInstanceUID", "")),
                          "series_description": str(getattr(ds, "SeriesDescription", "")),
                          "acquisition_date": str(getattr(ds, "AcquisitionDate", "") or getattr(ds, "StudyDate", ""))}
    return series
