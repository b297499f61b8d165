"""Atomic writing and checked reading of 3D volumes and 4D series (NIfTI, NRRD) through SimpleITK.

Every write goes to a temporary file in the destination folder and is renamed into place, so a reader
never sees a half-written file and a failed write leaves nothing behind.
"""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np
import SimpleITK as sitk

from .ctp_series import CTPSeries, VolumeGeometry
from .errors import InputError


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same suffix) and renames it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def image_from_array(array_zyx: np.ndarray, geometry: VolumeGeometry) -> sitk.Image:
    """A SimpleITK image from a (z, y, x) array placed on ``geometry``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(geometry.spacing_mm)
    image.SetOrigin(geometry.origin_mm)
    image.SetDirection(geometry.direction)
    return image


def geometry_of(image: sitk.Image) -> VolumeGeometry:
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
    with atomic_path(path) as tmp:
        sitk.WriteImage(image_from_array(array_zyx, geometry), str(tmp), True)
    return Path(path)


def write_series_nifti(path, series: CTPSeries) -> Path:
    """Writes a uniformly sampled series as a 4D NIfTI (x, y, z, t) with the frame interval in
    pixdim[4] (seconds). Irregular series must be resampled first."""
    if not series.is_uniform:
        raise ValueError("a 4D NIfTI holds one frame interval: resample irregular frame times first")
    data = np.ascontiguousarray(series.data)
    image = sitk.GetImageFromArray(data, isVector=False)
    g = series.geometry
    image.SetSpacing(tuple(g.spacing_mm) + (series.dt_s,))
    image.SetOrigin(tuple(g.origin_mm) + (float(series.times_s[0]),))
    direction4 = np.eye(4)
    direction4[:3, :3] = np.asarray(g.direction).reshape(3, 3)
    image.SetDirection(tuple(direction4.ravel()))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return Path(path)


def read_image(path, kind: str = "an image file") -> sitk.Image:
    """SimpleITK image of ``path``; a one-line InputError naming the file when it is missing or is not
    ``kind`` (non-image, truncated or corrupted)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"cannot read {path.name}: not {kind}, or it is truncated or corrupted") from None


def read_dicom_series(folder, label: str, hint: str = "") -> sitk.Image:
    """The largest DICOM series in ``folder`` as one SimpleITK image (slices in spatial order); InputError
    "<label>: no DICOM series in <folder><hint>" or "... cannot read the DICOM series ... (corrupted?)"."""
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
    non-image, corrupted or non-3D files."""
    path = Path(path)
    image = read_image(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path.name} must be a 3D single-component volume, got a "
                         f"{image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} component(s)")
    return sitk.GetArrayFromImage(image), geometry_of(image)
