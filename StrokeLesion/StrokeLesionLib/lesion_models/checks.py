"""Input checks of the deep lesion models, shared by the registry and every model's inference: each
model's modality, shape, spacing and value range, refused with one line naming the problem.

Whether an image is a CT in Hounsfield units is judged from its values (:func:`ct_hu_problem`): a head CT
holds air around the head (at most -200 HU, about -1000) and soft tissue between -20 and 100 HU; an MRI,
a windowed or normalised CT, or raw stored values without the rescale (air near 0) do not.
"""
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.volume_io import geometry_of, read_dicom_series, read_image

MODELS = ("pseudodwi", "sean", "xnet")
MODALITY = {"pseudodwi": "CT perfusion series", "sean": "non-contrast CT", "xnet": "T1-weighted MRI"}
MAP_KEYS = ("cbf", "cbv", "mtt", "tmax")
"""Perfusion maps the pseudo-DWI model needs: CBF ml/100g/min, CBV ml/100g, MTT s, Tmax s."""

AIR_MAX_HU = -200.0
SOFT_TISSUE_HU = (-20.0, 100.0)
MIN_AIR_FRACTION = 0.01
MIN_SOFT_TISSUE_FRACTION = 0.02
MIN_INPLANE_VOXELS = 16


def check_model(model: str) -> str:
    if model not in MODELS:
        raise InputError(f"unknown lesion model {model!r} (choose {', '.join(MODELS)})")
    return model


def ct_hu_problem(volume_zyx: np.ndarray) -> Optional[str]:
    """None when the (z, y, x) values look like a head CT in HU (see module doc), else what is wrong."""
    v = np.asarray(volume_zyx)
    n = v.size
    air = np.count_nonzero(v <= AIR_MAX_HU) / n
    lo, hi = SOFT_TISSUE_HU
    soft = np.count_nonzero((v >= lo) & (v <= hi)) / n
    if air < MIN_AIR_FRACTION:
        return (f"no air around the head ({100 * air:.1f} % of voxels at or below {AIR_MAX_HU:g} HU, "
                f"value range {float(v.min()):g} to {float(v.max()):g})")
    if soft < MIN_SOFT_TISSUE_FRACTION:
        return (f"no brain tissue values ({100 * soft:.1f} % of voxels between {lo:g} and {hi:g} HU)")
    return None


def _check_volume(image: np.ndarray, model: str) -> np.ndarray:
    image = np.asarray(image)
    what = MODALITY[model]
    if image.ndim == 4:
        raise InputError(f"--model {model} needs a 3D {what} (z, y, x); got a 4D image of shape {image.shape}"
                         + (" (a CT perfusion series is for --model pseudodwi)" if model == "sean" else ""))
    if image.ndim != 3:
        raise InputError(f"--model {model} needs a 3D {what} (z, y, x); got shape {image.shape}")
    if min(image.shape[1:]) < MIN_INPLANE_VOXELS:
        raise InputError(f"--model {model}: the image is too small in-plane ({image.shape[2]} x {image.shape[1]} "
                         f"voxels, at least {MIN_INPLANE_VOXELS})")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise InputError(f"--model {model}: image values must be real numbers, got dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.all(np.isfinite(image)):
        raise InputError(f"--model {model}: the image contains NaN or infinite values")
    if float(image.max()) == float(image.min()):
        raise InputError(f"--model {model}: the image is constant ({float(image.min()):g})")
    return image


def check_ncct(ncct_hu: np.ndarray) -> np.ndarray:
    """The NCCT as float32 (z, y, x) HU; InputError for another shape or values that are not CT HU."""
    ncct = _check_volume(ncct_hu, "sean")
    problem = ct_hu_problem(ncct)
    if problem:
        raise InputError(f"--model sean needs a non-contrast CT in Hounsfield units; this image has {problem}: "
                         f"not a CT in HU (an MRI, or a windowed, normalised or unrescaled CT?)")
    return ncct


def check_t1(t1: np.ndarray) -> np.ndarray:
    """The T1 as float32 (z, y, x); InputError for another shape or an image that looks like a CT in HU."""
    t1 = _check_volume(t1, "xnet")
    if ct_hu_problem(t1) is None:
        raise InputError("--model xnet needs a T1-weighted MRI; this image looks like a CT in Hounsfield units "
                         "(air near -1000 HU around soft tissue): use --model sean for a non-contrast CT")
    return t1


def check_spacing(spacing_xyz, label: str) -> Tuple[float, float, float]:
    """The voxel spacing (x, y, z) mm as three floats; InputError "<label>: the voxel spacing must be 3 positive
    numbers (x, y, z) mm, got ..." for anything else."""
    try:
        spacing = tuple(float(s) for s in np.ravel(spacing_xyz))
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(f"{label}: the voxel spacing must be 3 positive numbers (x, y, z) mm, got {spacing_xyz}")
    return spacing


def check_ctp(series) -> CTPSeries:
    """The series when it is a CTP series in HU (its first frame looks like a head CT); InputError otherwise."""
    if not isinstance(series, CTPSeries):
        shape = getattr(series, "shape", None)
        raise InputError(f"--model pseudodwi needs a 4D CT perfusion series (t, z, y, x); got "
                         f"{'an array of shape ' + str(shape) if shape is not None else type(series).__name__}")
    if min(series.shape_zyx[1:]) < MIN_INPLANE_VOXELS:
        raise InputError(f"--model pseudodwi: the series is too small in-plane ({series.shape_zyx[2]} x "
                         f"{series.shape_zyx[1]} voxels, at least {MIN_INPLANE_VOXELS})")
    problem = ct_hu_problem(series.data[0])
    if problem:
        raise InputError(f"--model pseudodwi needs a CT perfusion series in Hounsfield units; its first frame "
                         f"has {problem}")
    return series


def check_maps(maps: Dict[str, np.ndarray], shape_zyx) -> Dict[str, np.ndarray]:
    """The four maps the pseudo-DWI model needs as float32 (z, y, x) on the series' grid; InputError for a
    missing map, another shape or NaN."""
    missing = [k for k in MAP_KEYS if k not in maps]
    if missing:
        raise InputError(f"--model pseudodwi: missing perfusion map(s) {', '.join(missing)} "
                         f"(needs {', '.join(MAP_KEYS)})")
    out = {}
    for k in MAP_KEYS:
        m = np.asarray(maps[k])
        if m.shape != tuple(shape_zyx):
            raise InputError(f"--model pseudodwi: the {k} map has shape {m.shape}, the series "
                             f"{tuple(shape_zyx)} (z, y, x)")
        m = m.astype(np.float32, copy=False)
        if not np.all(np.isfinite(m)):
            raise InputError(f"--model pseudodwi: the {k} map contains NaN or infinite values")
        out[k] = m
    return out


def read_image_3d(path, model: str) -> Tuple[np.ndarray, VolumeGeometry]:
    """A 3D image file (NIfTI, NRRD ...) or a DICOM series folder as (z, y, x) float32 and its geometry;
    InputError naming the file for anything else (a 4D image included)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    what = MODALITY[check_model(model)]
    if path.is_dir():
        image = read_dicom_series(path, f"--model {model}", f" (it needs a {what}: a 3D NIfTI/NRRD file or a "
                                                           "DICOM series folder)")
    else:
        image = read_image(path, f"a {what} image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path.name}: a {image.GetNumberOfComponentsPerPixel()}-component image; "
                         f"--model {model} needs a single-component {what}")
    if image.GetDimension() == 4:
        size = image.GetSize()
        raise InputError(f"{path.name} is a 4D image ({' x '.join(map(str, size))}); --model {model} needs a 3D {what}"
                         + (" (a CT perfusion series is for --model pseudodwi)" if model != "pseudodwi" else ""))
    if image.GetDimension() != 3:
        raise InputError(f"{path.name} is a {image.GetDimension()}D image; --model {model} needs a 3D {what}")
    import SimpleITK as sitk  # imported here: the command line reads MODELS at start, SimpleITK only for images
    return sitk.GetArrayFromImage(image).astype(np.float32), geometry_of(image)
