"""NRRD files (.nrrd, detached .nhdr, Slicer's .seq.nrrd) through pynrrd, in LPS.

pynrrd keeps Slicer's custom ``key:=value`` fields (``axis N index values`` and ``axis N index unit`` of a
volume sequence), which :mod:`ctp_io` turns into frame times. Checked before any voxel is read: a regular
file; a detached header's data file lies beside it (a bare file name: no folder, no ``..``); the sizes
declared fit in the memory available and, for raw data, in the file.
"""
import re
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from AIFSelectorLib.ctp_series import VolumeGeometry
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.nifti import PLAUSIBLE_SPACING_MM, check_memory, require_regular_file

_SPACES_LPS_SIGN = {"left-posterior-superior": (1.0, 1.0, 1.0), "lps": (1.0, 1.0, 1.0),
                    "right-anterior-superior": (-1.0, -1.0, 1.0), "ras": (-1.0, -1.0, 1.0)}
_NUMPY_TO_NRRD = {"i1": "int8", "u1": "uint8", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                  "i8": "longlong", "u8": "ulonglong", "f4": "float", "f8": "double"}


def _data_file_beside(path: Path, header: dict) -> Optional[Path]:
    """The data file a detached header names, when it lies in the header's own folder; InputError for a
    path elsewhere, a list of files, or a missing file."""
    name = header.get("data file", header.get("datafile"))
    if name is None:
        return None
    name = str(name).strip()
    if name.upper().startswith("LIST") or len(name.split()) > 1:
        raise InputError(f"{path.name}: a detached header naming several data files is not supported")
    if "/" in name or "\\" in name or name in ("", ".", "..") or Path(name).is_absolute():
        raise InputError(f"{path.name}: its data file {name!r} is not beside the header: only a data file in "
                         f"the header's own folder is read")
    return require_regular_file(path.parent / name, "NRRD data file")


def read_nrrd(path) -> Tuple[np.ndarray, VolumeGeometry, dict]:
    """(data, geometry, header) of a NRRD file. data: C order, the NRRD axes reversed, so a 3D volume is
    (z, y, x); a 4D file is returned as stored (the caller finds the list axis: ``list_axis`` below)."""
    import nrrd

    path = require_regular_file(path)
    bad = f"cannot read {path.name}: not a NRRD image, or it is truncated or corrupted"
    try:
        header = nrrd.read_header(str(path))
        sizes = [int(s) for s in header["sizes"]]
    except Exception:  # noqa: BLE001 - pynrrd raises several types for broken headers
        raise InputError(bad) from None
    if not sizes or min(sizes) < 1:
        raise InputError(f"cannot read {path.name}: corrupted NRRD header (sizes {sizes})")
    data_file = _data_file_beside(path, header)
    n_values = int(np.prod(sizes, dtype=np.float64))
    # voxels: a 4D image's list axis is first or last; the smaller of the two is taken for it (at worst more voxels)
    check_memory(n_values, path.name, n_voxels=n_values // max(1, min(sizes[0], sizes[-1])) if len(sizes) > 3
                 else n_values)
    if header.get("encoding", "raw") == "raw":
        try:
            itemsize = np.dtype(nrrd.reader._determine_datatype(header)).itemsize
        except Exception:  # noqa: BLE001
            raise InputError(bad) from None
        holder = data_file or path
        if holder.stat().st_size < n_values * itemsize:
            raise InputError(f"cannot read {holder.name}: the file is truncated or corrupted "
                             f"({holder.stat().st_size} bytes for {n_values * itemsize} bytes of voxels)")
    else:
        _check_compressed_length(path, data_file, header, n_values, bad)
    try:
        data, header = nrrd.read(str(path), index_order="C")
    except Exception:  # noqa: BLE001
        raise InputError(bad) from None
    if data.dtype.kind not in "iuf":
        raise InputError(f"{path.name} holds {data.dtype} voxels, not real numbers")
    return data, _geometry(header, path.name), header


DECOMPRESSION_SLACK_BYTES = 1 << 20
"""Compressed voxel data may hold this much more than the header declares (a byte skip, padding); more is a
decompression bomb, refused before pynrrd would inflate it all into memory."""


def _check_compressed_length(path: Path, data_file: Optional[Path], header: dict, n_values: int, bad: str) -> None:
    """InputError when gzip/bzip2 voxel data inflate to more than the header declares (streamed in 16 MiB
    steps, never held in memory)."""
    import bz2
    import zlib

    import nrrd
    encoding = str(header.get("encoding", "raw")).lower()
    if encoding in ("gz", "gzip"):
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
    elif encoding in ("bz2", "bzip2"):
        inflater = bz2.BZ2Decompressor()
    else:
        return
    try:
        itemsize = np.dtype(nrrd.reader._determine_datatype(header)).itemsize
    except Exception:  # noqa: BLE001
        raise InputError(bad) from None
    limit = n_values * itemsize + DECOMPRESSION_SLACK_BYTES
    produced = 0
    with open(data_file or path, "rb") as f:
        if data_file is None:
            nrrd.read_header(f)  # leaves the file at the first byte of the voxel data
        try:
            while produced <= limit:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                if isinstance(inflater, bz2.BZ2Decompressor):
                    if inflater.eof:
                        break
                    produced += len(inflater.decompress(chunk, max_length=1 << 24))
                    while not inflater.eof and not inflater.needs_input and produced <= limit:
                        produced += len(inflater.decompress(b"", max_length=1 << 24))
                    continue
                while chunk and produced <= limit:
                    produced += len(inflater.decompress(chunk, 1 << 24))
                    chunk = inflater.unconsumed_tail
        except (OSError, EOFError, zlib.error, ValueError):
            raise InputError(bad) from None
    if produced > limit:
        raise InputError(f"{path.name}: its compressed voxel data inflate to more than the header declares "
                         f"({n_values * itemsize} bytes): refusing to read it")


def list_axis(header: dict) -> Optional[int]:
    """The NRRD axis (0-based, file order) that is not spatial (space direction 'none'), or None."""
    directions = header.get("space directions")
    if directions is None:
        return None
    for i, row in enumerate(directions):
        if row is None or not np.all(np.isfinite(np.asarray(row, dtype=np.float64))):
            return i
    return None


def _geometry(header: dict, name: str) -> VolumeGeometry:
    directions = header.get("space directions")
    spatial = []
    if directions is not None:
        spatial = [np.asarray(r, dtype=np.float64) for r in directions
                   if r is not None and np.all(np.isfinite(np.asarray(r, dtype=np.float64)))]
    if any(v.shape != (3,) for v in spatial):
        raise InputError(f"{name}: the NRRD space has {spatial[0].size if spatial else 0} dimensions; a CT volume "
                         f"lies in 3D space")
    if len(spatial) != 3:
        spacings = header.get("spacings")
        if spacings is None or len([s for s in spacings if np.isfinite(s)]) < 3:
            raise InputError(f"{name}: the NRRD header has no three spatial axes (space directions or spacings)")
        spatial = [np.eye(3)[i] * s for i, s in enumerate([s for s in spacings if np.isfinite(s)][:3])]
    sign = np.asarray(_SPACES_LPS_SIGN.get(str(header.get("space", "left-posterior-superior")).lower(),
                                           (1.0, 1.0, 1.0)))
    columns = np.stack([v * sign for v in spatial], axis=1)
    spacing = np.linalg.norm(columns, axis=0)
    lo, hi = PLAUSIBLE_SPACING_MM
    if not np.all(np.isfinite(spacing)) or spacing.min() < lo or spacing.max() > hi:
        raise InputError(f"{name}: voxel spacing ({', '.join(f'{s:g}' for s in spacing)} mm) is zero, not a "
                         f"number or implausible (expected {lo:g}-{hi:g} mm): the header is broken")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64) * sign
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise InputError(f"{name}: the NRRD space origin is not three finite numbers")
    return VolumeGeometry(tuple(spacing), tuple(origin), columns / spacing[None, :])


def _space_fields(geometry: VolumeGeometry):
    d = np.asarray(geometry.direction).reshape(3, 3) * np.asarray(geometry.spacing_mm)[None, :]
    return [d[:, i] for i in range(3)], np.asarray(geometry.origin_mm, dtype=np.float64)


def write_nrrd_volume(path, array_zyx: np.ndarray, geometry: VolumeGeometry) -> None:
    """A 3D (z, y, x) array as a gzip NRRD in LPS (write errors raise OSError)."""
    import nrrd
    directions, origin = _space_fields(geometry)
    header = {"type": _NUMPY_TO_NRRD[array_zyx.dtype.str[1:]], "dimension": 3,
              "space": "left-posterior-superior", "space directions": np.stack(directions),
              "kinds": ["domain"] * 3, "endian": "little", "encoding": "gzip", "space origin": origin}
    nrrd.write(str(path), np.ascontiguousarray(array_zyx), header, index_order="C", compression_level=1)


def write_sequence(path, data_tzyx: np.ndarray, times_s, geometry: VolumeGeometry, compress: bool = True,
                   list_axis_index: int = 0) -> None:
    """A (t, z, y, x) series as a Slicer volume sequence (frame times in seconds as the 'time' index);
    ``list_axis_index`` 0 (time first, every Slicer version reads it) or 3 (time last, Slicer >= 5.9)."""
    import nrrd
    data = np.asarray(data_tzyx)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    key = data.dtype.newbyteorder("<").str[1:]
    if key not in _NUMPY_TO_NRRD:
        raise ValueError(f"cannot write dtype {data.dtype} to NRRD")
    directions, origin = _space_fields(geometry)
    nan = np.full(3, np.nan)
    rows = [nan] + directions if list_axis_index == 0 else directions + [nan]
    kinds = ["list", "domain", "domain", "domain"] if list_axis_index == 0 else ["domain"] * 3 + ["list"]
    labels = ["time", "", "", ""] if list_axis_index == 0 else ["", "", "", "time"]
    units = ["s", "", "", ""] if list_axis_index == 0 else ["", "", "", "s"]
    array = np.moveaxis(data, 0, -1) if list_axis_index == 0 else data
    header = {"type": _NUMPY_TO_NRRD[key], "dimension": 4, "space": "left-posterior-superior",
              "space directions": np.stack(rows), "kinds": kinds, "labels": labels, "units": units,
              "endian": "little", "encoding": "gzip" if compress else "raw", "space origin": origin,
              "DataNodeClassName": "vtkMRMLScalarVolumeNode",
              f"axis {list_axis_index} index type": "numeric",
              f"axis {list_axis_index} index values": " ".join(repr(float(t)) for t in times_s)}
    nrrd.write(str(path), np.ascontiguousarray(array), header, index_order="C", compression_level=1)


INDEX_KEY = re.compile(r"axis (\d+) index values")
