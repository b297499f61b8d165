"""The deep lesion models by name: the weights check and the call of each model's inference function
(imported only when that model is used).

| model | input | inference |
| --- | --- | --- |
| pseudodwi | 4D CTP (t, z, y, x) HU + maps (computed when not given) | lesion_models.pseudodwi.inference.segment_pseudo_dwi |
| sean | 3D non-contrast CT (z, y, x) in HU | lesion_models.sean.inference.segment_sean |
| xnet | 3D T1-weighted MRI (z, y, x), scanner units | lesion_models.xnet.inference.segment_xnet |

Each inference function returns ``(lesion (z, y, x) bool, extras {name: (z, y, x) float32}, info dict)``;
:func:`segment` adds the lesion volume (ml), the model name and the timings to ``info``. Inputs that are
the wrong modality or shape (:mod:`lesion_models.checks`), missing maps, and missing or corrupted weights
raise InputError (WeightsError for the weights) with one line naming the problem.

A fourth model: a package ``lesion_models/<name>/`` (model, preprocessing, inference), its name in
``checks.MODELS`` and ``MODALITY``, its entry in :func:`inference_function` and in the weights manifest.
"""
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from AIFSelectorLib.ctp_series import CTPSeries
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.thresholds.decision import MIN_ISLAND_ML, remove_islands
from StrokeLesionLib.lesion_models.checks import (MODALITY, check_ctp, check_maps, check_model, check_ncct,
                                                  check_spacing, check_t1)

MANIFEST_NAMES = {"pseudodwi": "pseudodwi", "sean": "sean", "xnet": "xnet"}
"""model -> its entry in Resources/models/manifest.json."""


def inference_function(model: str) -> Callable:
    """The inference function of ``model`` (its package, and torch, are imported here, on first use)."""
    check_model(model)
    try:
        if model == "pseudodwi":
            from StrokeLesionLib.lesion_models.pseudodwi.inference import segment_pseudo_dwi as function
        elif model == "sean":
            from StrokeLesionLib.lesion_models.sean.inference import segment_sean as function
        else:
            from StrokeLesionLib.lesion_models.xnet.inference import segment_xnet as function
    except ImportError as e:
        raise InputError(f"the {model} lesion model is not available in this installation "
                         f"({type(e).__name__}: {e})") from None
    return function


def check_weights(model: str, folder: Optional[Path] = None) -> dict:
    """The manifest entry of ``model``'s weights after checking that the file is there and its sha256
    matches, so a run fails before any work; WeightsError otherwise."""
    from AIFSelectorLib.models.weights import WeightsError, models_dir, read_manifest, sha256_of
    folder = Path(folder) if folder is not None else models_dir()
    name = MANIFEST_NAMES[check_model(model)]
    entry = read_manifest(folder).get("models", {}).get(name)
    if not entry or "file" not in entry or "sha256" not in entry:
        raise WeightsError(f"no weights for the {model} lesion model: the manifest in {folder} has no '{name}' entry")
    path = folder / entry["file"]
    if not path.is_file():
        raise WeightsError(f"{model} lesion model weights not found: {path}")
    if sha256_of(path) != entry["sha256"]:
        raise WeightsError(f"{model} lesion model weights {path.name} are corrupted or modified (sha256 mismatch)")
    return entry


def perfusion_maps(series: CTPSeries, device: Optional[str]):
    """Maps and brain mask of a series by the engine's stages with their defaults (the selection policy's
    AIFNet AIF/VOF, oSVD), as `strokelesion run` computes them."""
    from AIFSelectorLib.input_functions.policy import select_input_functions
    from AIFSelectorLib.maps.compute import compute_maps
    from AIFSelectorLib.prepare.prepared import prepare
    device = None if device == "auto" else device
    prepared = prepare(series)
    perfusion = compute_maps(prepared, select_input_functions(prepared, "aifnet", device), device=device)
    return perfusion.maps, prepared.brain


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
    check_model(model)
    timings = {}
    if model == "pseudodwi":
        series = check_ctp(inputs.get("series"))
        shape, voxel_ml = series.shape_zyx, series.geometry.voxel_volume_ml
        maps, brain = inputs.get("maps"), inputs.get("brain_mask")
        if maps is None:
            t0 = time.perf_counter()
            maps, computed_brain = perfusion_maps(series, device)
            brain = computed_brain if brain is None else brain
            timings["perfusion_maps"] = time.perf_counter() - t0
        maps = check_maps(maps, shape)
        if brain is None:
            from AIFSelectorLib.prepare.prepared import prepare
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
    from AIFSelectorLib.models.device import resolve_device, thread_invariant
    with thread_invariant(resolve_device(device)):
        mask, extras, info = function(*args, device=device, folder=folder)
    timings["segmentation"] = time.perf_counter() - t0
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(shape):
        raise InputError(f"the {model} model returned a mask of shape {mask.shape} for an image of {tuple(shape)}")
    mask = remove_islands(mask, voxel_ml, min_island_ml)
    info = dict(info)
    info["model"] = model
    info["lesion_ml"] = round(float(mask.sum()) * voxel_ml, 2)
    info["timings_s"] = {**info.get("timings_s", {}), **{k: round(v, 3) for k, v in timings.items()}}
    return mask, dict(extras), info


