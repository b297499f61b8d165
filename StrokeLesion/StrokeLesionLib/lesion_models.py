"""The deep lesion models by name: their input checks, their weights check, and the call of each model's
inference function (``StrokeLesionLib.<module>.<function>``, imported only when that model is used).

| model | input | inference |
| --- | --- | --- |
| pseudodwi | 4D CTP (t, z, y, x) HU + maps (computed when not given) | pseudo_dwi_inference.segment_pseudo_dwi |
| sean | 3D non-contrast CT (z, y, x) in HU | sean_inference.segment_sean |
| xnet | 3D T1-weighted MRI (z, y, x), scanner units | xnet_inference.segment_xnet |

Each inference function returns ``(lesion (z, y, x) bool, extras {name: (z, y, x) float32}, info dict)``;
:func:`segment` adds the lesion volume (ml), the model name and the timings to ``info``. Inputs that are
the wrong modality or shape, missing maps, and missing or corrupted weights raise InputError (WeightsError
for the weights) with one line naming the problem.

Whether an image is a CT in Hounsfield units is judged from its values (:func:`ct_hu_problem`): a head CT
holds air around the head (at most -200 HU, about -1000) and soft tissue between -20 and 100 HU; an MRI,
a windowed or normalised CT, or raw stored values without the rescale (air near 0) do not.
"""
import importlib
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.volume_io import geometry_of, read_dicom_series, read_image

from .lesion_thresholds import MIN_ISLAND_ML, remove_islands

MODELS = ("pseudodwi", "sean", "xnet")
MODALITY = {"pseudodwi": "CT perfusion series", "sean": "non-contrast CT", "xnet": "T1-weighted MRI"}
INFERENCE = {"pseudodwi": ("pseudo_dwi_inference", "segment_pseudo_dwi"),
             "sean": ("sean_inference", "segment_sean"),
             "xnet": ("xnet_inference", "segment_xnet")}
"""model -> (module in StrokeLesionLib, function)."""
MANIFEST_NAMES = {"pseudodwi": "pseudodwi", "sean": "sean", "xnet": "xnet"}
"""model -> its entry in Resources/models/manifest.json."""
MAP_KEYS = ("cbf", "cbv", "mtt", "tmax")
"""Perfusion maps the pseudo-DWI model needs: CBF ml/100g/min, CBV ml/100g, MTT s, Tmax s."""

AIR_MAX_HU = -200.0
SOFT_TISSUE_HU = (-20.0, 100.0)
MIN_AIR_FRACTION = 0.01
MIN_SOFT_TISSUE_FRACTION = 0.02
MIN_INPLANE_VOXELS = 16


def _check_model(model: str) -> str:
    if model not in MODELS:
        raise InputError(f"unknown lesion model {model!r} (choose {', '.join(MODELS)})")
    return model


def inference_function(model: str) -> Callable:
    """The inference function of ``model`` (its module is imported here, on first use)."""
    module, function = INFERENCE[_check_model(model)]
    try:
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)
    except (ImportError, AttributeError) as e:
        raise InputError(f"the {model} lesion model is not available in this installation "
                         f"({type(e).__name__}: {e})") from None


def check_weights(model: str, folder: Optional[Path] = None) -> dict:
    """The manifest entry of ``model``'s weights after checking that the file is there and its sha256
    matches, so a run fails before any work; WeightsError otherwise."""
    from AIFSelectorLib.model_weights import WeightsError, models_dir, read_manifest, sha256_of
    folder = Path(folder) if folder is not None else models_dir()
    name = MANIFEST_NAMES[_check_model(model)]
    entry = read_manifest(folder).get("models", {}).get(name)
    if not entry or "file" not in entry or "sha256" not in entry:
        raise WeightsError(f"no weights for the {model} lesion model: the manifest in {folder} has no '{name}' entry")
    path = folder / entry["file"]
    if not path.is_file():
        raise WeightsError(f"{model} lesion model weights not found: {path}")
    if sha256_of(path) != entry["sha256"]:
        raise WeightsError(f"{model} lesion model weights {path.name} are corrupted or modified (sha256 mismatch)")
    return entry


# ----------------------------------------------------------------------------------------------- checks

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


# ---------------------------------------------------------------------------------------------- running

def _perfusion(series: CTPSeries, device: Optional[str]):
    """Maps and brain mask of a series by the whole perfusion pipeline (AIFNet AIF/VOF, oSVD)."""
    from .pipeline import RunOptions, run_case
    result = run_case(series, RunOptions(device=None if device == "auto" else device))
    return result.perfusion.maps, result.prepared.brain


def segment(model: str, inputs: Dict[str, object], device: Optional[str] = "auto",
            folder: Optional[Path] = None,
            min_island_ml: float = MIN_ISLAND_ML) -> Tuple[np.ndarray, Dict[str, np.ndarray], dict]:
    """Runs ``model`` on ``inputs`` after checking them; returns (lesion (z, y, x) bool, extras, info).
    Connected lesion components smaller than ``min_island_ml`` (ml; the core/penumbra minimum by default)
    are removed, as for the core and penumbra.

    inputs: pseudodwi: ``series`` (CTPSeries, HU), optional ``maps`` {'cbf','cbv','mtt','tmax'} (z, y, x)
    and ``brain_mask`` (z, y, x) bool (computed by the perfusion pipeline when absent); sean: ``ncct``
    (z, y, x) HU and ``spacing_xyz`` (mm); xnet: ``t1`` (z, y, x) and ``spacing_xyz``. ``folder``: the
    weights folder (default Resources/models). info gains 'model', 'lesion_ml' and 'timings_s' (s)."""
    _check_model(model)
    timings = {}
    if model == "pseudodwi":
        series = check_ctp(inputs.get("series"))
        shape, voxel_ml = series.shape_zyx, series.geometry.voxel_volume_ml
        maps, brain = inputs.get("maps"), inputs.get("brain_mask")
        if maps is None:
            t0 = time.perf_counter()
            maps, computed_brain = _perfusion(series, device)
            brain = computed_brain if brain is None else brain
            timings["perfusion_maps"] = time.perf_counter() - t0
        maps = check_maps(maps, shape)
        if brain is None:
            from AIFSelectorLib.perfusion_pipeline import prepare
            brain = prepare(series).brain
        brain = np.asarray(brain) != 0
        if brain.shape != shape:
            raise InputError(f"--model pseudodwi: the brain mask has shape {brain.shape}, the series {shape}")
        args = (series, maps, brain)
    else:
        key = "ncct" if model == "sean" else "t1"
        if inputs.get(key) is None:
            raise InputError(f"--model {model} needs its {MODALITY[model]} image ('{key}')")
        image = check_ncct(inputs[key]) if model == "sean" else check_t1(inputs[key])
        spacing = check_spacing(inputs.get("spacing_xyz", ()), f"--model {model}")
        shape, voxel_ml = image.shape, float(np.prod(spacing)) / 1000.0
        args = (image, spacing)
    function = inference_function(model)
    t0 = time.perf_counter()
    from AIFSelectorLib.model_weights import resolve_device, thread_invariant
    with thread_invariant(resolve_device(device)):
        mask, extras, info = function(*args, device=device, folder=folder)
    timings["segmentation"] = time.perf_counter() - t0
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(shape):
        raise InputError(f"the {model} model returned a mask of shape {mask.shape} for an image of {tuple(shape)}")
    mask = remove_islands(mask, voxel_ml, min_island_ml)
    info = dict(info)
    info["model"] = model
    info["lesion_ml"] = float(mask.sum()) * voxel_ml
    info["timings_s"] = {**info.get("timings_s", {}), **{k: round(v, 3) for k, v in timings.items()}}
    return mask, dict(extras), info


# ----------------------------------------------------------------------------------------------- files

def read_image_3d(path, model: str) -> Tuple[np.ndarray, VolumeGeometry]:
    """A 3D image file (NIfTI, NRRD ...) or a DICOM series folder as (z, y, x) float32 and its geometry;
    InputError naming the file for anything else (a 4D image included)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    what = MODALITY[_check_model(model)]
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
    return sitk.GetArrayFromImage(image).astype(np.float32), geometry_of(image)
