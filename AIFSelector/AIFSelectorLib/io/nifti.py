"""NIfTI-1/2 files through nibabel: checked opening, geometry in LPS, and writing.

Every image is checked before a voxel is allocated: a regular file (not a FIFO or device), a header nibabel
parses, a data offset inside the file, a voxel type that holds real numbers, voxel spacings that are finite
and in PLAUSIBLE_SPACING_MM, and a declared size that the file really holds (uncompressed: its length;
gzip: the length in its trailer) and that fits in the memory available. Each failure is one InputError line.

Geometry: nibabel's affine maps (i, j, k) to RAS; ITK/SimpleITK and :class:`VolumeGeometry` use LPS, so
the first two rows change sign. The affine is nibabel's best one (sform when set, else qform).
"""
import contextlib
import gzip
import logging
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from AIFSelectorLib.ctp_series import VolumeGeometry
from AIFSelectorLib.errors import InputError

PLAUSIBLE_SPACING_MM = (0.05, 50.0)
"""Voxel spacings [mm] outside this range are a broken header (CT/MR voxels are 0.1-10 mm)."""

MEMORY_HEADROOM = 1.5
"""An image is refused when this many times what the pipeline holds for it exceeds the memory available: the
values in their stored type (the series stays in it; float32 when the header scales them) plus
VOXEL_WORKING_BYTES per voxel. Measured: a 512x512x320x25 int16 series peaks at 1.39x its size in process, i.e.
the series plus ~18 bytes per voxel."""
VOXEL_WORKING_BYTES = 64
"""Bytes per voxel (z, y, x) that the pipeline holds beside a series: its images, masks, maps and probability
volumes, one volume each (about 14 float32 volumes; the 4D work goes slab by slab)."""

_REAL_KINDS = "iuf"


class _NoPydicom:
    """Import hook that reports pydicom as absent to one thread, while it imports nibabel (see :func:`nibabel`)."""

    def __init__(self):
        import threading
        self.thread = threading.get_ident()

    def find_spec(self, name, path=None, target=None):
        import threading
        if (name == "pydicom" or name.startswith("pydicom.")) and threading.get_ident() == self.thread:
            raise ImportError("pydicom is not used for NIfTI extensions")
        return None


def nibabel():
    """nibabel, without its parser of DICOM header extensions (NIfTI extension code 2): such an extension stays
    raw bytes, which this project never reads, instead of untrusted bytes parsed by pydicom (whose parser refused
    files whose extension bytes were not UTF-8 where it expected a VR). When this process has not imported
    pydicom yet, nibabel is imported without it (pydicom costs 0.13 s of every command's start on the 2-core
    machine); pydicom itself stays importable (the DICOM reader uses it)."""
    import sys
    if "nibabel" not in sys.modules and "pydicom" not in sys.modules:
        blocker = _NoPydicom()
        sys.meta_path.insert(0, blocker)
        try:
            import nibabel  # noqa: F401 - imported here, without pydicom; bound below in either case
        finally:
            sys.meta_path.remove(blocker)
    import nibabel as nib
    for key in (2, "dicom"):  # also where nibabel was imported with pydicom (Slicer, a DICOM read before)
        nib.nifti1.extension_codes.handler[key] = nib.nifti1.Nifti1Extension
    return nib


def is_regular_file(path) -> bool:
    """True for a regular file (or a link to one); False for a missing path, a folder, a FIFO, a device or a
    socket, which are never opened (reading them could block forever)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def require_regular_file(path, what: str = "file") -> Path:
    """``path`` when it is a regular file (or a link to one); InputError for missing paths, FIFOs,
    devices and sockets, which would block or stream forever."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path.name} is not a regular file (a pipe, device or socket): refusing to read it")
    return path


def available_memory_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else the free physical pages; None when unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n_values: int, name: str, itemsize: int = 4, n_voxels: Optional[int] = None) -> None:
    """InputError when ``n_values`` values of ``itemsize`` bytes, with VOXEL_WORKING_BYTES for each of ``n_voxels``
    voxels (default: one per value), times MEMORY_HEADROOM, do not fit in the memory available."""
    voxels = n_values if n_voxels is None else n_voxels
    need = MEMORY_HEADROOM * (float(itemsize) * n_values + float(VOXEL_WORKING_BYTES) * voxels)
    free = available_memory_bytes()
    if free is not None and need > free:
        raise InputError(f"{name} declares {n_values:,} voxel values, about {need / 2**30:.1f} GiB to process "
                         f"with {free / 2**30:.1f} GiB of memory available: refusing to allocate it")


def _gzip_isize(path: Path) -> int:
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _gzip_length(path: Path, limit: int) -> int:
    """Decompressed length of a gzip file, read up to ``limit`` bytes (stops there); InputError when corrupt."""
    got = 0
    try:
        with gzip.open(path, "rb") as f:
            while got < limit:
                block = f.read(min(1 << 24, limit - got))
                if not block:
                    break
                got += len(block)
    except (OSError, EOFError, zlib.error):
        raise InputError(f"cannot read {path.name}: the file is truncated or corrupted "
                         f"(compressed data end after {got} bytes)") from None
    return got


def open_nifti(path, ctp: bool = False):
    """(nibabel image, geometry) of a checked NIfTI file (see the module doc). ``ctp``: the image must hold
    CT numbers, so 8-bit voxels (which cannot hold -1024..3071 HU) are refused too. Nothing is read
    beyond the header and, for gzip files whose trailer disagrees with the header, a bounded stream."""
    nib = nibabel()

    path = require_regular_file(path)
    bad = f"cannot read {path.name}: not a NIfTI image, or it is truncated or corrupted"
    _check_raw_header(path, bad)
    try:
        with _quiet_nibabel():
            img = nib.load(str(path), mmap=False)
        header = img.header
        shape = tuple(int(d) for d in header.get_data_shape())
        dtype = header.get_data_dtype()
    except Exception:  # noqa: BLE001 - nibabel raises many types for broken headers
        raise InputError(bad) from None
    if dtype.names is not None or dtype.kind not in _REAL_KINDS or dtype.itemsize == 0:
        what = "RGB colour " if dtype.names is not None else f"{dtype} "
        raise InputError(f"{path.name} holds {what}voxels, not real numbers: a CT or MR image holds one "
                         f"real value per voxel")
    if ctp and dtype.itemsize == 1:
        raise InputError(f"{path.name} holds 8-bit voxels ({dtype}), which cannot hold CT numbers "
                         f"(-1024 to 3071 HU): the image was clipped or is not a CT in HU")
    if not shape or min(shape) < 1:
        raise InputError(f"cannot read {path.name}: corrupted NIfTI header (size {shape})")
    offset = int(img.dataobj.offset)
    single = isinstance(img, (nib.Nifti1Image, nib.Nifti2Image))
    n_values = int(np.prod(shape, dtype=np.float64))
    nbytes = n_values * dtype.itemsize
    data_file = Path(img.file_map["image"].filename) if not single else path
    if not single:
        require_regular_file(data_file, "NIfTI image data")
    expected = offset + nbytes
    compressed = _is_gzip(data_file)
    if not compressed and data_file.stat().st_size < expected:
        raise InputError(f"cannot read {data_file.name}: the file is truncated or corrupted "
                         f"({data_file.stat().st_size} of {expected} bytes)")
    scaled = _scales(img)
    check_memory(n_values, path.name, max(dtype.itemsize, 4) if scaled else dtype.itemsize,
                 int(np.prod(shape[:3], dtype=np.float64)))
    if compressed and _gzip_isize(data_file) != expected % (1 << 32):
        got = _gzip_length(data_file, expected)
        if got < expected:
            raise InputError(f"cannot read {data_file.name}: the file is truncated or corrupted "
                             f"({got} of {expected} bytes)")
    return img, geometry_of_affine(img.affine, header, path.name)


@contextlib.contextmanager
def _quiet_nibabel():
    """nibabel logs the header fields it repairs; the raw header was checked first, so those are noise."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_raw_header(path: Path, bad: str) -> None:
    """Checks the header as stored, before nibabel repairs it (nibabel turns a zero spacing into 1 mm and
    a negative data offset into 352): spacings of the used spatial axes finite and positive, the data
    offset of a single file at least the header size."""
    nib = nibabel()
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            raw = f.read(540)
        size = struct.unpack("<i", raw[:4])[0]
        endian = "<" if size in (348, 540) else ">"
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size == 348:
            dim = struct.unpack(endian + "8h", raw[40:56])
            pixdim = struct.unpack(endian + "8f", raw[76:108])
            vox_offset, magic, min_offset = struct.unpack(endian + "f", raw[108:112])[0], raw[344:347], 352
        elif size == 540:
            dim = struct.unpack(endian + "8q", raw[16:80])
            pixdim = struct.unpack(endian + "8d", raw[104:168])
            vox_offset, magic, min_offset = struct.unpack(endian + "q", raw[168:176])[0], raw[4:7], 544
        else:
            raise ValueError(size)
    except (OSError, EOFError, zlib.error, struct.error, ValueError):
        raise InputError(bad) from None
    if magic not in (b"n+1", b"ni1", b"n+2", b"ni2"):
        raise InputError(bad)
    if path.name.lower().endswith((".nii", ".nii.gz")) and magic in (b"ni1", b"ni2"):
        raise InputError(f"{path.name}: the header says its voxels are in a separate .img file, but this is a "
                         f"single .nii file: the header is broken")
    if magic in (b"n+1", b"n+2") and np.isfinite(vox_offset) and vox_offset > MAX_HEADER_BYTES:
        raise InputError(f"{path.name}: corrupted NIfTI header (voxel data offset {vox_offset:g} bytes: header "
                         f"extensions over {MAX_HEADER_BYTES >> 20} MiB are refused)")
    _check_extensions(path, size + 4, int(vox_offset) if magic in (b"n+1", b"n+2") else MAX_HEADER_BYTES,
                      endian)
    n_spatial = min(max(int(dim[0]), 0), 3)
    spacing = pixdim[1:1 + n_spatial]
    if not all(np.isfinite(spacing)) or min(spacing, default=1.0) <= 0:
        raise InputError(f"{path.name}: voxel spacing ({', '.join(f'{p:g}' for p in spacing)} mm) is zero, negative "
                         f"or not a number: the header is broken")
    if magic in (b"n+1", b"n+2") and not (np.isfinite(vox_offset) and vox_offset >= min_offset):
        raise InputError(f"{path.name}: corrupted NIfTI header (voxel data offset {vox_offset:g}, must be at "
                         f"least {min_offset})")


MAX_HEADER_BYTES = 16 << 20
"""A NIfTI header with its extensions larger than this (16 MiB) is refused: nibabel reads every extension
into memory, so a small gzip file could otherwise hold gigabytes of them."""


def _check_extensions(path: Path, start: int, end: int, endian: str) -> None:
    """Walks the header extensions (8-byte size and code each, content skipped) from ``start`` to ``end``
    (the data offset); InputError when one is malformed or runs past ``end``."""
    nib = nibabel()
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            f.seek(start - 4)
            flag = f.read(4)
            if len(flag) < 4 or flag[0] == 0:
                return
            position = start
            if position + 16 > end:
                raise InputError(f"{path.name}: corrupted NIfTI header (an extension is flagged but the voxel "
                                 f"data start at byte {end})")
            while position < end:
                head = f.read(8)
                if len(head) < 8:
                    break
                esize, _ = struct.unpack(endian + "2i", head)
                if esize < 16 or esize % 16 or position + esize > end:
                    raise InputError(f"{path.name}: corrupted NIfTI header extension (size {esize} at byte "
                                     f"{position}, data at byte {end})")
                f.seek(position + esize)
                position += esize
    except (OSError, EOFError, zlib.error, struct.error):
        raise InputError(f"cannot read {path.name}: not a NIfTI image, or it is truncated or corrupted") from None


def geometry_of_affine(affine_ras: np.ndarray, header, name: str) -> VolumeGeometry:
    """LPS VolumeGeometry of the first three axes; InputError for zero, NaN or implausible spacings."""
    zooms = [float(z) for z in header.get_zooms()[:3]]
    m = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)[:3, :]
    columns = m[:, :3]
    spacing = np.linalg.norm(columns, axis=0)
    lo, hi = PLAUSIBLE_SPACING_MM
    for value in list(spacing) + zooms[:len(spacing)]:
        if not np.isfinite(value) or not lo <= value <= hi:
            shown = ", ".join(f"{z:g}" for z in zooms)
            raise InputError(f"{name}: voxel spacing ({shown} mm) is zero, not a number or implausible "
                             f"(expected {lo:g}-{hi:g} mm): the header is broken")
    if not np.all(np.isfinite(m)):
        raise InputError(f"{name}: the image orientation (affine) holds NaN or infinite values")
    direction = columns / spacing[None, :]
    return VolumeGeometry(tuple(spacing), tuple(m[:, 3]), direction)


def _inflater():
    """zlib's ``decompressobj`` from python-isal (Intel ISA-L: about twice as fast as zlib at inflating, the
    same bytes) when it is installed, else from the standard library (Slicer's bundled Python)."""
    try:
        from isal import isal_zlib
        return isal_zlib.decompressobj, isal_zlib.error
    except ImportError:
        return zlib.decompressobj, zlib.error


INFLATE_BLOCK_BYTES = 1 << 22
"""Compressed bytes read, and at most decompressed bytes produced, per step of :func:`inflate_gzip`: a few MB,
so a stream that inflates a thousandfold (air, or a hostile file) never holds more than this in flight."""


def inflate_gzip(path: Path, offset: int, nbytes: int) -> np.ndarray:
    """Bytes ``offset`` to ``offset + nbytes`` of the decompressed gzip file ``path`` as a writable uint8 array,
    decompressed straight into it block by block (members one after the other, each one's CRC and length
    checked by the inflater). InputError when the stream is corrupted or ends early."""
    decompressobj, error = _inflater()
    out = np.empty(nbytes, np.uint8)
    skip, got = offset, 0
    bad = f"cannot read {path.name}: the file is truncated or corrupted"
    try:
        with open(path, "rb") as f:
            inflater, pending = decompressobj(31), b""
            while got < nbytes:
                if not pending:
                    pending = f.read(INFLATE_BLOCK_BYTES)
                    if not pending:
                        break
                if inflater.eof:  # a new member starts
                    inflater = decompressobj(31)
                data = inflater.decompress(pending, INFLATE_BLOCK_BYTES)
                pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                take = min(len(data), nbytes - got)
                out[got:got + take] = np.frombuffer(data, np.uint8, take)
                got += take
    except (OSError, error) as e:
        raise InputError(f"{bad} ({e})") from None
    if got < nbytes:
        raise InputError(f"{bad} ({got} of {nbytes} voxel bytes)")
    return out


def _voxels(img) -> np.ndarray:
    """The unscaled voxels (x, y, z[, t]) of a checked image in the file's dtype; a gzip file is inflated by
    :func:`inflate_gzip` (nibabel's reader inflates through the gzip module, at about half the speed)."""
    proxy = img.dataobj
    data_file = Path(img.file_map["image"].filename)
    if _is_gzip(data_file):
        dtype = np.dtype(proxy.dtype)
        shape = tuple(int(d) for d in proxy.shape)
        n = int(np.prod(shape, dtype=np.int64))
        raw = inflate_gzip(data_file, int(proxy.offset), n * dtype.itemsize)
        return raw.view(dtype).reshape(shape, order=proxy.order)
    try:
        return np.asarray(proxy.get_unscaled())
    except (OSError, EOFError, zlib.error, ValueError):
        raise InputError(f"cannot read {Path(img.get_filename()).name}: the file is truncated or "
                         f"corrupted") from None


def read_array(img, dtype_scaled=np.float32) -> np.ndarray:
    """The voxels (x, y, z[, t]) of a checked image in the file's dtype, or float32 when the header scales
    them (scl_slope/scl_inter), without nibabel's float64 promotion."""
    raw = _voxels(img)
    slope, inter = img.dataobj.slope, img.dataobj.inter
    if _scales(img):
        scaled = raw.astype(dtype_scaled if raw.dtype != np.float64 else np.float64)
        scaled *= slope
        if np.isfinite(inter):
            scaled += inter
        return scaled
    return raw


def _scales(img) -> bool:
    """Whether the header scales the stored values (scl_slope/scl_inter other than 1 and 0)."""
    slope, inter = img.dataobj.slope, img.dataobj.inter
    return bool(np.isfinite(slope) and slope != 0 and (slope != 1 or (np.isfinite(inter) and inter != 0)))


def time_unit_s(header) -> Optional[float]:
    """Seconds per unit of the header's time axis (s, ms, us), None when the header names none."""
    unit = header.get_xyzt_units()[1]
    return {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(unit)


def affine_ras(geometry: VolumeGeometry) -> np.ndarray:
    """The 4x4 RAS affine nibabel writes for an LPS geometry."""
    d = np.asarray(geometry.direction).reshape(3, 3) * np.asarray(geometry.spacing_mm)[None, :]
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = d, geometry.origin_mm
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ m


def write_nifti(path, array_xyz: np.ndarray, geometry: VolumeGeometry, dt_s: Optional[float] = None,
                t0_s: float = 0.0) -> None:
    """Writes ``array_xyz`` ((x, y, z) or (x, y, z, t)) to ``path`` (.nii or .nii.gz) with qform and sform
    (code 1, scanner) on ``geometry``; spatial unit mm, time unit s, pixdim[4] = ``dt_s``, toffset = ``t0_s``.
    Write errors (full disk, file size limit) raise OSError; callers write to a temporary name."""
    nib = nibabel()

    affine = affine_ras(geometry)
    img = nib.Nifti1Image(array_xyz, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if array_xyz.ndim == 4:
        img.header.set_zooms(tuple(geometry.spacing_mm) + (float(dt_s),))
        img.header["toffset"] = float(t0_s)
    img.header.set_xyzt_units("mm", "sec")
    if not str(path).lower().endswith(".gz"):
        nib.save(img, str(path))
        return
    with _gzip_writer(path) as f:  # nibabel writes the header and the voxels into the compressing stream
        holder = nib.fileholders.FileHolder(fileobj=f)
        img.to_file_map({"header": holder, "image": holder})


WRITE_COMPRESS_LEVEL = 1
"""gzip level of written .nii.gz files: nibabel's default (1), at which python-isal compresses a perfusion map
about 7 times faster than nibabel's writer through the gzip module (4 MB map: 0.013 s instead of 0.1 s), the file
2 % larger."""


def _gzip_writer(path):
    """A binary gzip stream writing to ``path``: python-isal's when installed, else the standard library's."""
    try:
        from isal import igzip
        return igzip.open(str(path), "wb", compresslevel=WRITE_COMPRESS_LEVEL)
    except ImportError:
        return gzip.open(str(path), "wb", compresslevel=WRITE_COMPRESS_LEVEL)


def nifti_image_bytes(path) -> Tuple[int, int]:
    """(data offset, image bytes) a NIfTI file's header declares, for checking a written file."""
    nib = nibabel()
    img = nib.load(str(path), mmap=False)
    shape = img.header.get_data_shape()
    return int(img.dataobj.offset), int(np.prod(shape)) * img.header.get_data_dtype().itemsize
