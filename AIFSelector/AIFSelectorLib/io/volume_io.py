"""Atomic writing and checked reading of 3D volumes and 4D series.

NIfTI through nibabel (:mod:`nifti_io`), NRRD through pynrrd (:mod:`nrrd_io`), other formats (and DICOM)
through SimpleITK. Every write goes to a temporary file in the destination folder, is checked
(:func:`verify_file`) and renamed into place, so a reader never sees a half-written file and a failed
write (full disk, file size limit) raises instead of leaving a short file behind. Files follow the umask.
"""
import contextlib
import errno
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np

from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry
from AIFSelectorLib.errors import InputError


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same suffix) and renames it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600: colleagues must be able to read results
        yield Path(tmp)
        verify_file(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it): what new outputs' permissions follow."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask



def verify_file(path) -> None:
    """OSError (EIO) unless the written file ``path`` is whole: not empty; a NIfTI file holds the bytes
    its header declares (gzip: the trailer's length; the header is read back); JSON parses; a PNG ends
    with its IEND chunk. Called on every file before it is renamed into place."""
    path = Path(path)
    size = path.stat().st_size
    name = path.name.lower()

    def fail(why):
        raise OSError(errno.EIO, f"the written file is incomplete ({why})", str(path))

    if size == 0:
        fail("0 bytes")
    if name.endswith((".nii", ".nii.gz")):
        from AIFSelectorLib.io.nifti import nifti_image_bytes
        try:
            offset, nbytes = nifti_image_bytes(path)
        except Exception:  # noqa: BLE001 - any unreadable header is a broken write
            fail("its header does not read back")
        if name.endswith(".gz"):
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                if struct.unpack("<I", f.read(4))[0] != (offset + nbytes) % (1 << 32):
                    fail("the compressed stream is short")
        elif size < offset + nbytes:
            fail(f"{size} of {offset + nbytes} bytes")
    elif name.endswith(".json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            fail("not valid JSON")
    elif name.endswith(".png"):
        with open(path, "rb") as f:
            f.seek(max(0, size - 12))
            if not f.read().startswith(b"\x00\x00\x00\x00IEND"):
                fail("no PNG end chunk")


def image_from_array(array_zyx: np.ndarray, geometry: VolumeGeometry) -> "sitk.Image":
    """A SimpleITK image from a (z, y, x) array placed on ``geometry``."""
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(geometry.spacing_mm)
    image.SetOrigin(geometry.origin_mm)
    image.SetDirection(geometry.direction)
    return image


def geometry_of(image: "sitk.Image") -> VolumeGeometry:
    """The spatial grid of the first three axes of a SimpleITK image."""
    d = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(d, d)[:3, :3]
    return VolumeGeometry(image.GetSpacing()[:3], image.GetOrigin()[:3], direction)


def write_volume(path, array_zyx: np.ndarray, geometry: VolumeGeometry) -> Path:
    """Writes a 3D (z, y, x) array atomically (format from the suffix: .nii.gz, .nii, .nrrd). Boolean
    arrays are stored as uint8."""
    array_zyx = np.asarray(array_zyx)
    if array_zyx.ndim != 3:
        raise ValueError(f"write_volume needs a 3D (z, y, x) array, got shape {array_zyx.shape}")
    if array_zyx.dtype == bool:
        array_zyx = array_zyx.astype(np.uint8)
    name = Path(path).name.lower()
    with atomic_path(path) as tmp:
        if name.endswith((".nii", ".nii.gz")):
            from AIFSelectorLib.io.nifti import write_nifti
            write_nifti(tmp, array_zyx.T, geometry)
        elif name.endswith(".nrrd"):
            from AIFSelectorLib.io.nrrd import write_nrrd_volume
            write_nrrd_volume(tmp, array_zyx, geometry)
        else:
            import SimpleITK as sitk
            sitk.WriteImage(image_from_array(array_zyx, geometry), str(tmp), True)
    return Path(path)


def write_series_nifti(path, series: CTPSeries) -> Path:
    """Writes a uniformly sampled series as a 4D NIfTI (x, y, z, t) with the frame interval in
    pixdim[4] and the first frame time in toffset (seconds). Irregular series must be resampled first."""
    if not series.is_uniform:
        raise ValueError("a 4D NIfTI holds one frame interval: resample irregular frame times first")
    from AIFSelectorLib.io.nifti import write_nifti
    with atomic_path(path) as tmp:
        write_nifti(tmp, np.asarray(series.data).T, series.geometry, dt_s=series.dt_s,
                    t0_s=float(series.times_s[0]))
    return Path(path)


def read_image(path, kind: str = "an image file") -> "sitk.Image":
    """SimpleITK image of ``path`` (a regular file); a one-line InputError naming the file when it is
    missing or is not ``kind`` (non-image, truncated or corrupted)."""
    import SimpleITK as sitk
    from AIFSelectorLib.io.nifti import require_regular_file
    path = require_regular_file(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"cannot read {path.name}: not {kind}, or it is truncated or corrupted") from None


def read_dicom_series(folder, label: str, hint: str = "") -> "sitk.Image":
    """The largest DICOM series in ``folder`` as one SimpleITK image (slices in spatial order); InputError
    "<label>: no DICOM series in <folder><hint>" or "... cannot read the DICOM series ... (corrupted?)"."""
    import SimpleITK as sitk
    folder = str(folder)
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    except RuntimeError:
        ids = ()
    if not ids:
        raise InputError(f"{label}: no DICOM series in {folder}{hint}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, i) for i in ids), key=len))
    try:
        return reader.Execute()
    except RuntimeError:
        raise InputError(f"{label}: cannot read the DICOM series in {folder} (corrupted?)") from None


def read_volume(path) -> Tuple[np.ndarray, VolumeGeometry]:
    """Reads a 3D image file into a (z, y, x) array and its geometry; a clear InputError for missing,
    non-image, corrupted, hostile or non-3D files (NIfTI: :func:`nifti_io.open_nifti`'s checks)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz", ".hdr")):
        from AIFSelectorLib.io.nifti import open_nifti, read_array
        img, geometry = open_nifti(path)
        shape = img.header.get_data_shape()
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise InputError(f"{path.name} must be a 3D single-component volume, got a {len(shape)}D image "
                             f"of size {' x '.join(map(str, shape))}")
        return np.ascontiguousarray(read_array(img).reshape(shape).T), geometry
    if name.endswith((".nrrd", ".nhdr")):
        from AIFSelectorLib.io.nrrd import read_nrrd
        data, geometry, _ = read_nrrd(path)
        if data.ndim != 3:
            raise InputError(f"{path.name} must be a 3D single-component volume, got a {data.ndim}D image")
        return data, geometry
    import SimpleITK as sitk
    image = read_image(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path.name} must be a 3D single-component volume, got a "
                         f"{image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} component(s)")
    return sitk.GetArrayFromImage(image), geometry_of(image)
