"""Reading a CT perfusion series from every supported input, and writing Slicer volume sequences.

Inputs (:func:`load_ctp` dispatches on what the path is):

- 4D NIfTI (``.nii``/``.nii.gz``, x, y, z, t): the frame interval is pixdim[4] in the header's time unit
  (xyzt_units: s, ms or us, converted to seconds), frame times start at toffset. The header is parsed
  here because SimpleITK reports a pixdim[4] of 0 as a spacing of 1 (and already converts ms to s);
  float voxels are read here too, because NIfTI's C library inside SimpleITK turns NaN/inf into 0.
- Slicer volume sequence (``.seq.nrrd``): frame times from the ``axis N index values`` key, their unit
  from the NRRD ``units`` field of the list axis (or an ``axis N index unit`` key); Slicer >= 5.9 writes
  the list axis last (axis 3), older Slicer first (axis 0): both are read (SimpleITK turns the list axis
  into the pixel vector wherever it is). RAS files come out in LPS. :func:`write_series_seq_nrrd` writes
  the axis-0 layout, which every Slicer version reads.
- DICOM series folder: see :mod:`ctp_dicom`.
- ISLES 2018 case folder (``case_N/SMIR.Brain.XX.O.CT_4DPWI.<id>/...nii``): the CT_4DPWI series;
  :func:`isles2018_case` lists every modality.
- A folder that holds exactly one 4D NIfTI or NRRD file: that file.

Frame times are returned as stored (irregular ones included); :func:`resample_uniform` puts them on
a uniform grid. ``dt_s`` given to :func:`load_ctp` replaces the file's frame times by 0, dt, 2 dt ...
"""
import gzip
import re
import struct
import zlib
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .ctp_series import CTPSeries, VolumeGeometry
from .errors import InputError
from .volume_io import atomic_path, geometry_of, read_image

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
_NIFTI_TIME_UNITS_S = {8: 1.0, 16: 1e-3, 24: 1e-6}  # NIFTI_UNITS_SEC, _MSEC, _USEC (xyzt_units & 0x38)


# --------------------------------------------------------------------------------------------- entry point

def load_ctp(path, dt_s: Optional[float] = None) -> CTPSeries:
    """A CTP series from a 4D NIfTI, a Slicer ``.seq.nrrd``, a DICOM series folder (or one of its files),
    an ISLES 2018 case folder, or a folder holding one 4D image file.

    dt_s: frame interval in seconds; replaces the file's frame times (required where the file has none).
    Raises InputError (one line naming the problem and the file) for anything that is not a readable
    CT perfusion series.
    """
    path = Path(path)
    dt_s = _checked_dt(dt_s)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if path.is_dir():
        return _load_folder(path, dt_s)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti_series(path, dt_s)
    if name.endswith(NRRD_SUFFIXES):
        return read_nrrd_series(path, dt_s)
    from . import ctp_dicom
    if ctp_dicom.is_dicom_file(path):
        return ctp_dicom.read_dicom_series(path.parent, dt_s, file_hint=path)
    raise InputError(f"{path.name}: unsupported file type (expected a 4D NIfTI .nii/.nii.gz, a Slicer "
                     f".seq.nrrd, a DICOM series folder or an ISLES 2018 case folder)")


def _load_folder(folder: Path, dt_s: Optional[float]) -> CTPSeries:
    if _isles_entries(folder):
        paths = isles2018_case(folder)
        if "CT_4DPWI" not in paths:
            raise InputError(f"{folder.name}: ISLES 2018 case folder without a CT_4DPWI perfusion series "
                             f"(found {', '.join(sorted(paths))})")
        return read_nifti_series(paths["CT_4DPWI"], dt_s)
    from . import ctp_dicom
    dicom_files = ctp_dicom.find_dicom_files(folder)
    if dicom_files:
        return ctp_dicom.read_dicom_series(folder, dt_s, files=dicom_files)
    images = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.name.lower().endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES))
    if len(images) == 1:
        return load_ctp(images[0], dt_s)
    found = f"{len(images)} NIfTI/NRRD files, no DICOM" if images else "no DICOM, NIfTI or NRRD files"
    raise InputError(f"{folder}: no CT perfusion series found ({found}; expected a DICOM series, "
                     f"an ISLES 2018 case folder or a single 4D NIfTI/.seq.nrrd)")


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

def nifti_header(path) -> dict:
    """The fields of a NIfTI-1 or NIfTI-2 header that matter here: ``version``, ``dim`` (the used
    dimensions, x first), ``pixdim`` (matching), ``pixdim4``, ``xyzt_units``, ``time_unit_s`` (seconds
    per unit, None when unknown), ``toffset``, ``vox_offset``, ``bitpix``, ``datatype``, ``scl_slope``,
    ``scl_inter``, ``endian`` ('<' or '>'), ``compressed``, ``single_file``.
    InputError for anything that is not a NIfTI file."""
    path = Path(path)
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    try:
        if compressed:
            with gzip.open(path, "rb") as f:
                raw = f.read(540)
        else:
            with open(path, "rb") as f:
                raw = f.read(540)
    except (OSError, EOFError, zlib.error):
        raw = b""
    bad = f"cannot read {path.name}: not a NIfTI image, or it is truncated or corrupted"
    if len(raw) < 348:
        raise InputError(bad)
    for endian in "<>":
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size in (348, 540):
            break
    else:
        raise InputError(bad)
    if size == 348:
        magic = raw[344:348]
        dim = struct.unpack(endian + "8h", raw[40:56])
        pixdim = struct.unpack(endian + "8f", raw[76:108])
        datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
        vox_offset = struct.unpack(endian + "f", raw[108:112])[0]
        scl_slope, scl_inter = struct.unpack(endian + "2f", raw[112:120])
        xyzt_units = raw[123]
        toffset = struct.unpack(endian + "f", raw[136:140])[0]
        version = 1
    else:
        if len(raw) < 540:
            raise InputError(bad)
        magic = raw[4:8]
        dim = struct.unpack(endian + "8q", raw[16:80])
        pixdim = struct.unpack(endian + "8d", raw[104:168])
        datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
        vox_offset = struct.unpack(endian + "q", raw[168:176])[0]
        scl_slope, scl_inter = struct.unpack(endian + "2d", raw[176:192])
        toffset = struct.unpack(endian + "d", raw[216:224])[0]
        xyzt_units = struct.unpack(endian + "i", raw[500:504])[0]
        version = 2
    if magic[:3] not in (b"n+1", b"ni1", b"n+2", b"ni2"):
        raise InputError(bad)
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1:ndim + 1]):
        raise InputError(f"cannot read {path.name}: corrupted NIfTI header (dim = {list(dim)})")
    return {
        "version": version, "dim": tuple(int(d) for d in dim[1:ndim + 1]),
        "pixdim": tuple(float(p) for p in pixdim[1:ndim + 1]),
        "pixdim4": float(pixdim[4]) if ndim >= 4 else 0.0,
        "xyzt_units": int(xyzt_units), "time_unit_s": _NIFTI_TIME_UNITS_S.get(int(xyzt_units) & 0x38),
        "toffset": float(toffset), "vox_offset": int(vox_offset), "bitpix": int(bitpix),
        "datatype": int(datatype), "scl_slope": float(scl_slope), "scl_inter": float(scl_inter),
        "endian": endian, "compressed": compressed, "single_file": magic[:3] in (b"n+1", b"n+2"),
    }


_NIFTI_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8,
                 512: np.uint16, 768: np.uint32, 1024: np.int64, 1280: np.uint64}


def _check_nifti_complete(path: Path, header: dict) -> None:
    """InputError when the file holds fewer image bytes than its header promises (SimpleITK reads a
    truncated file without complaint and fills the rest with zeros)."""
    expected = header["vox_offset"] + int(np.prod(header["dim"], dtype=np.int64)) * header["bitpix"] // 8
    if not header["compressed"]:
        got = path.stat().st_size
    else:
        with open(path, "rb") as f:  # gzip trailer: uncompressed size mod 2^32 (of the last member)
            f.seek(-4, 2)
            isize = struct.unpack("<I", f.read(4))[0]
        if isize == expected % (1 << 32):
            return
        got = 0
        try:  # slow path, only when the trailer disagrees (truncated, or a multi-member gzip)
            with gzip.open(path, "rb") as f:
                while got < expected:
                    block = f.read(1 << 24)
                    if not block:
                        break
                    got += len(block)
        except (OSError, EOFError, zlib.error):
            raise InputError(f"cannot read {path.name}: the file is truncated or corrupted "
                             f"(compressed data end after {got} of {expected} bytes)") from None
    if got < expected:
        raise InputError(f"cannot read {path.name}: the file is truncated or corrupted "
                         f"({got} of {expected} bytes)")


def _read_nifti_voxels(path: Path, header: dict, shape_xyzt) -> np.ndarray:
    """The voxels of a single-file NIfTI as a (t, z, y, x) array in the file's dtype (native byte order),
    scaled by scl_slope/scl_inter when the header asks for it (then float32).

    Used for floating-point files, because NIfTI's C library (inside SimpleITK) silently replaces NaN and
    inf by 0; reports truncated files (SimpleITK fills them up with zeros). Python's zlib is about 3x
    slower than SimpleITK's, so integer files, which cannot hold NaN, are read by SimpleITK."""
    dtype = _NIFTI_DTYPES.get(header["datatype"])
    if dtype is None:
        raise InputError(f"{path.name}: unsupported NIfTI data type code {header['datatype']} "
                         f"(a CT perfusion series holds real numbers)")
    if not header["single_file"]:
        raise InputError(f"{path.name}: a NIfTI header without its image data (.hdr/.img pairs are not supported)")
    dtype = np.dtype(dtype).newbyteorder(header["endian"])
    shape = tuple(int(d) for d in reversed(shape_xyzt))
    data = np.empty(shape, dtype=dtype)
    buffer = memoryview(data.reshape(-1).view(np.uint8))
    expected = buffer.nbytes
    got = 0
    try:
        opener = gzip.open if header["compressed"] else open
        with opener(path, "rb") as f:
            f.seek(header["vox_offset"])
            while got < expected:
                n = f.readinto(buffer[got:got + (1 << 26)])
                if not n:
                    break
                got += n
    except (OSError, EOFError, zlib.error):
        raise InputError(f"cannot read {path.name}: the file is truncated or corrupted "
                         f"(image data end after {got} of {expected} bytes)") from None
    if got < expected:
        raise InputError(f"cannot read {path.name}: the file is truncated or corrupted "
                         f"({got} of {expected} bytes of image data)")
    if not dtype.isnative:
        data = data.byteswap().view(dtype.newbyteorder("="))
    slope, inter = header["scl_slope"], header["scl_inter"]
    if np.isfinite(slope) and slope != 0 and (slope != 1 or (np.isfinite(inter) and inter != 0)):
        scaled = data.astype(np.float32) if data.dtype != np.float64 else data
        scaled *= slope
        scaled += inter if np.isfinite(inter) else 0.0
        data = scaled
    return data


def read_nifti_series(path, dt_s: Optional[float] = None) -> CTPSeries:
    """A 4D NIfTI (x, y, z, t) as a CTPSeries; the file's dtype is kept (scaled files come out float).

    Frame interval: ``dt_s`` if given, else pixdim[4] in the header's time unit. With no time unit in
    the header, pixdim[4] is taken as seconds when it is a plausible CTP interval; a pixdim[4] of 0
    means the frame times are missing."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    header = nifti_header(path)
    dims = header["dim"]
    while len(dims) > 4 and dims[-1] == 1:
        dims = dims[:-1]
    if len(dims) < 4 or dims[3] == 1:
        raise InputError(f"{path.name} is a 3D volume, not a 4D CT perfusion series (x, y, z, t); "
                         f"its size is {' x '.join(str(d) for d in dims)}")
    if len(dims) > 4:
        raise InputError(f"{path.name} is a {len(dims)}D image; a CT perfusion series is 4D (x, y, z, t)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"cannot read {path.name}: not a NIfTI image, or it is truncated or corrupted") from None
    ndim = reader.GetDimension()
    if ndim < 4:
        raise InputError(f"{path.name}: expected a 4D image, SimpleITK reads a {ndim}D image")
    d = np.asarray(reader.GetDirection()).reshape(ndim, ndim)[:3, :3]
    geometry = VolumeGeometry(reader.GetSpacing()[:3], reader.GetOrigin()[:3], d)
    if header["datatype"] in (16, 64):  # float32, float64: keep NaN/inf visible
        data = _read_nifti_voxels(path, header, dims)
    else:
        _check_nifti_complete(path, header)
        try:
            data = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        except RuntimeError:
            raise InputError(f"cannot read {path.name}: not a NIfTI image, or it is corrupted") from None
        data = data.reshape(tuple(reversed(dims)))
    n = data.shape[0]
    if dt_s is not None:
        times = _frame_times(n, dt_s)
    else:
        unit = header["time_unit_s"]
        p4 = header["pixdim4"]
        if not np.isfinite(p4) or p4 <= 0:
            raise InputError(f"{path.name}: frame times are missing (pixdim[4] is {p4:g}): pass --dt SECONDS")
        what = (f"pixdim[4] = {p4:g} {_unit_name(unit)}" if unit is not None
                else f"pixdim[4] = {p4:g} with no time unit, read as seconds")
        toffset = header["toffset"] if np.isfinite(header["toffset"]) else 0.0
        scale = 1.0 if unit is None else unit
        times = _frame_times(n, p4 * scale, toffset * scale)
        _check_plausible_dt(times, path.name, what)
    return make_series(data, times, geometry, path.name)


def _unit_name(unit_s: float) -> str:
    return {1.0: "s", 1e-3: "ms", 1e-6: "us"}.get(unit_s, f"x {unit_s:g} s")


# -------------------------------------------------------------------------------------- NRRD / .seq.nrrd

def read_nrrd_series(path, dt_s: Optional[float] = None) -> CTPSeries:
    """A Slicer volume sequence (``.seq.nrrd``: three domain axes and one list axis, in either order),
    or a 4D scalar NRRD, as a CTPSeries in LPS."""
    path = Path(path)
    image = read_image(path, "a NRRD image")
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    ncomp = image.GetNumberOfComponentsPerPixel()
    dim = image.GetDimension()
    kind = meta.get("NRRD_kinds[pixel]", "list").strip().lower()
    if dim == 3 and ncomp > 1 and kind not in ("list", "vector", "none", "???", ""):
        raise InputError(f"{path.name}: a {kind} image, not a volume sequence (its non-spatial axis must be a "
                         f"list of frames)")
    if dim == 3 and ncomp > 1:  # the list axis became the pixel vector (any position in the file)
        geometry = geometry_of(image)
        view = sitk.GetArrayViewFromImage(image)  # (z, y, x, t), no copy
        data = np.empty((ncomp,) + view.shape[:3], dtype=view.dtype)
        for i in range(ncomp):
            data[i] = view[..., i]
        del view
        label, unit = meta.get("NRRD_labels[pixel]", ""), meta.get("NRRD_units[pixel]", "")
    elif dim == 4 and ncomp == 1:
        geometry = geometry_of(image)
        data = sitk.GetArrayFromImage(image)
        label, unit = meta.get("NRRD_labels[3]", ""), meta.get("NRRD_units[3]", "")
    elif dim == 3 and ncomp == 1 or dim == 2:
        raise InputError(f"{path.name} is a {dim}D volume, not a 4D CT perfusion series (a volume sequence)")
    else:
        raise InputError(f"{path.name}: expected a volume sequence of scalar volumes, got a {dim}D image "
                         f"with {ncomp} components per voxel")
    del image
    n = data.shape[0]
    if dt_s is not None:
        return make_series(data, _frame_times(n, dt_s), geometry, path.name)
    values = None
    for key, text in meta.items():
        m = re.fullmatch(r"axis (\d+) index values", key)
        if m:
            values = text.split()
            axis = m.group(1)
            if meta.get(f"axis {axis} index type", "numeric").strip().lower() == "text":
                raise InputError(f"{path.name}: the sequence index is text, not frame times: pass --dt SECONDS")
            unit = meta.get(f"axis {axis} index unit", unit)
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


_NRRD_TYPES = {
    np.dtype(np.int8): "signed char", np.dtype(np.uint8): "uchar", np.dtype(np.int16): "short",
    np.dtype(np.uint16): "ushort", np.dtype(np.int32): "int", np.dtype(np.uint32): "uint",
    np.dtype(np.int64): "longlong", np.dtype(np.uint64): "ulonglong", np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}


def write_series_seq_nrrd(path, series: CTPSeries, compress: bool = True, list_axis: int = 0) -> Path:
    """Writes ``series`` atomically as a Slicer volume sequence (``.seq.nrrd``): LPS space, frame times in
    seconds as the ``time`` index, scalar volume frames.

    list_axis: 0 (default) puts the time axis first (``kinds: list domain domain domain``, ``axis 0 index
    values``), the layout every Slicer version reads (Slicer <= 5.8 reads only this one); 3 puts it last,
    as Slicer >= 5.9 writes. Data are written one slab at a time, so no second copy of the series is made."""
    if list_axis not in (0, 3):
        raise ValueError(f"list_axis must be 0 or 3, got {list_axis}")
    data = series.data
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if np.dtype(data.dtype.type) not in _NRRD_TYPES:
        raise ValueError(f"cannot write dtype {data.dtype} to NRRD")
    dtype = np.dtype(data.dtype).newbyteorder("<")
    g = series.geometry
    direction = np.asarray(g.direction).reshape(3, 3)
    vector = "({})".format
    space = [vector(",".join(repr(float(c)) for c in direction[:, i] * g.spacing_mm[i])) for i in range(3)]
    nz, ny, nx = series.shape_zyx
    sizes = [str(nx), str(ny), str(nz)]
    kinds, labels, units = ["domain"] * 3, ['""'] * 3, ['""'] * 3
    position = 0 if list_axis == 0 else 3
    sizes.insert(position, str(series.n_frames))
    space.insert(position, "none")
    kinds.insert(position, "list")
    labels.insert(position, '"time"')
    units.insert(position, '"s"')
    header = "\n".join([
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        f"type: {_NRRD_TYPES[np.dtype(data.dtype.type)]}",
        "dimension: 4",
        "space: left-posterior-superior",
        "sizes: " + " ".join(sizes),
        "space directions: " + " ".join(space),
        "kinds: " + " ".join(kinds),
        "labels: " + " ".join(labels),
        "units: " + " ".join(units),
        "endian: little",
        f"encoding: {'gzip' if compress else 'raw'}",
        "space origin: " + vector(",".join(repr(float(c)) for c in g.origin_mm)),
        "DataNodeClassName:=vtkMRMLScalarVolumeNode",
        f"axis {list_axis} index type:=numeric",
        f"axis {list_axis} index values:=" + " ".join(repr(float(t)) for t in series.times_s),
    ]) + "\n\n"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            out = gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1, mtime=0) if compress else f
            try:
                if list_axis == 3:  # time slowest: (t, z, y, x) C order is the NRRD order
                    for frame in data:
                        out.write(np.ascontiguousarray(frame, dtype=dtype).tobytes())
                else:  # time fastest: (z, y, x, t) C order, one z slice at a time
                    for z in range(nz):
                        out.write(np.ascontiguousarray(np.moveaxis(data[:, z], 0, -1), dtype=dtype).tobytes())
            finally:
                if compress:
                    out.close()
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
        return CTPSeries(out, grid, series.geometry)
    except InputError as e:
        raise InputError(f"resampled to a uniform {grid[1] - grid[0]:g} s grid: {e}") from None
