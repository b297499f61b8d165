"""Training data for pseudo-DWI + SLNet: phantom cases or ISLES 2018 cases, and random slice batches.

A sample (one case) is a dict: 'x' (12, z, y, x) float32 network input
(:func:`StrokeLesionLib.lesion_models.pseudodwi.preprocessing.network_input`, from the CTP series and the *pipeline's*
maps and brain mask, exactly what inference sees), 'dwi' (z, y, x) float32 normalised DWI (the synthesis
target, 0 outside the brain), 'lesion' (z, y, x) bool, 'weight_map' (z, y, x) float32 distance weight map
A, 'spacing_mm' (x, y, z), 'name'.

Phantom cases: ``make_phantom(seed, (8, 128, 128), 40 frames, 1.8 x 1.8 x 6 mm, ...)`` with the frame
interval (1 or 1.5 s) and noise (3-8 HU) drawn per seed, ``lesion_variety=True`` when the generator has it;
maps from ``StrokeLesionLib.case.pipeline.run_case`` (AIFNet AIF/VOF, oSVD), cached as .npz (``--cache``).
Seeds: training 10000-19999, validation 20000-20999, held-out evaluation 30000-30999 (never trained on).
"""
import inspect
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.volume_io import atomic_path
from StrokeLesionLib.lesion_models.pseudodwi.preprocessing import network_input, normalised_dwi

from .losses import distance_weight_map

TRAIN_SEED0, VAL_SEED0, EVAL_SEED0 = 10000, 20000, 30000
CASE_SHAPE_ZYX = (8, 128, 128)
CASE_SPACING_MM = (1.8, 1.8, 6.0)
N_FRAMES = 40
SAMPLE_KEYS = ("x", "dwi", "lesion", "weight_map", "spacing_mm")


def lesion_variety_available() -> bool:
    from AIFSelectorLib.phantom.case import make_phantom
    return "lesion_variety" in inspect.signature(make_phantom).parameters


def phantom_kwargs(seed: int) -> dict:
    """The acquisition of one phantom case (anatomy, bolus and lesion are drawn by the generator)."""
    rng = np.random.default_rng(seed + 104729)
    kw = {"shape_zyx": CASE_SHAPE_ZYX, "spacing_mm": CASE_SPACING_MM, "n_frames": N_FRAMES,
          "dt_s": float(rng.choice([1.0, 1.0, 1.5])), "noise_hu": float(rng.uniform(3.0, 8.0))}
    if lesion_variety_available():
        kw["lesion_variety"] = True
    return kw


def make_sample(series, maps: Dict[str, np.ndarray], brain: np.ndarray, dwi: np.ndarray, lesion: np.ndarray,
                name: str) -> Dict[str, object]:
    """A sample from a CTP series, its maps (cbf, cbv, mtt, tmax; physical units), brain mask, DWI and
    lesion mask (all (z, y, x) on the series grid)."""
    from .losses import LossWeights
    lw = LossWeights()
    x, _ = network_input(series.data, series.times_s, maps, brain)
    spacing = tuple(float(s) for s in series.geometry.spacing_mm)
    lesion = np.asarray(lesion, bool)
    return {"x": x, "dwi": normalised_dwi(dwi, brain), "lesion": lesion,
            "weight_map": distance_weight_map(lesion, (spacing[1], spacing[0]), lw.w, lw.distance_mm),
            "spacing_mm": np.asarray(spacing), "name": name}


def phantom_sample(seed: int) -> Dict[str, object]:
    """One phantom case through the perfusion pipeline (what inference sees) as a sample."""
    from AIFSelectorLib.phantom.case import make_phantom
    from StrokeLesionLib.case.pipeline import RunOptions, run_case
    case = make_phantom(seed, **phantom_kwargs(seed))
    result = run_case(case.series, RunOptions(aif="aifnet", device="cpu"))
    return make_sample(case.series, result.perfusion.maps, result.prepared.brain, case.dwi, case.truth["lesion"],
                       f"phantom-{seed}")


def cache_tag() -> str:
    """What the cached samples depend on: the phantom generator's lesion variety and the maps' revision."""
    from AIFSelectorLib.maps.compute import MAPS_REVISION
    return ("variety" if lesion_variety_available() else "plain") + f"-maps{MAPS_REVISION}"


def cached_phantoms(seeds: Sequence[int], cache_dir: Optional[Path] = None, log=None) -> List[Dict[str, object]]:
    """Phantom samples for the seeds, read from / written to ``cache_dir`` (.npz) when given."""
    out = []
    for s in seeds:
        path = None if cache_dir is None else Path(cache_dir) / f"pdwi-phantom-{s}-{cache_tag()}.npz"
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as z:
                out.append({k: z[k] for k in SAMPLE_KEYS} | {"name": f"phantom-{s}"})
            continue
        sample = phantom_sample(s)
        if path is not None:
            with atomic_path(path) as tmp:
                np.savez(tmp, **{k: sample[k] for k in SAMPLE_KEYS})
        out.append(sample)
        if log:
            log(f"phantom seed {s}: lesion {int(sample['lesion'].sum())} voxels")
    return out


def isles_samples(root, log=None) -> List[Dict[str, object]]:
    """Samples from the ISLES 2018 case folders under ``root`` (training.lesion_data.isles2018): the
    dataset's CTP and maps, the brain mask of the perfusion pipeline, the lesion (OT) and DWI target."""
    from AIFSelectorLib.io.time_grid import resample_uniform
    from AIFSelectorLib.prepare.prepared import prepare
    from training.lesion_data import isles2018
    out = []
    for case_dir in isles2018.list_cases(root):
        case = isles2018.load_case(case_dir)
        if case.get("lesion") is None:
            continue
        if case.get("dwi") is None:
            raise InputError(f"{case_dir}: ISLES 2018 case without MR_DWI (the synthesis target)")
        series = case["series"] if case["series"].is_uniform else resample_uniform(case["series"])
        brain = prepare(series).brain
        out.append(make_sample(series, case["maps"], brain, case["dwi"], case["lesion"], Path(case_dir).name))
        if log:
            log(f"{Path(case_dir).name}: {series.data.shape}")
    return out


def random_batch(samples: Sequence[Dict[str, object]], rng: np.random.Generator, batch_size: int = 8,
                 crop: int = 96, lesion_fraction: float = 0.5) -> Dict[str, np.ndarray]:
    """Random training slices: 'x' (B, 12, crop, crop), 'dwi' and 'weight_map' (B, 1, crop, crop), 'lesion'
    (B, crop, crop) int64. About ``lesion_fraction`` of the slices hold lesion (the crop centred near it);
    the others are brain slices cropped at random; random left-right flips."""
    xs, ds, ws, ls = [], [], [], []
    for _ in range(batch_size):
        s = samples[int(rng.integers(len(samples)))]
        lesion = s["lesion"]
        with_lesion = np.nonzero(lesion.any(axis=(1, 2)))[0]
        want = rng.random() < lesion_fraction and len(with_lesion) > 0
        z = int(rng.choice(with_lesion)) if want else int(rng.integers(lesion.shape[0]))
        ny, nx = lesion.shape[1:]
        cy, cx = min(crop, ny), min(crop, nx)
        if want:
            pts = np.argwhere(lesion[z])
            py, px = pts[int(rng.integers(len(pts)))]
            y0 = int(np.clip(py - cy // 2 + rng.integers(-cy // 4, cy // 4 + 1), 0, ny - cy))
            x0 = int(np.clip(px - cx // 2 + rng.integers(-cx // 4, cx // 4 + 1), 0, nx - cx))
        else:
            y0, x0 = int(rng.integers(ny - cy + 1)), int(rng.integers(nx - cx + 1))
        sl = (slice(y0, y0 + cy), slice(x0, x0 + cx))
        x, d = s["x"][:, z][(slice(None),) + sl], s["dwi"][z][sl]
        w, l = s["weight_map"][z][sl], lesion[z][sl]
        if rng.random() < 0.5:
            x, d, w, l = x[..., ::-1], d[..., ::-1], w[..., ::-1], l[..., ::-1]
        xs.append(x)
        ds.append(d[None])
        ws.append(w[None])
        ls.append(l)
    return {"x": np.ascontiguousarray(np.stack(xs), np.float32), "dwi": np.ascontiguousarray(np.stack(ds), np.float32),
            "weight_map": np.ascontiguousarray(np.stack(ws), np.float32),
            "lesion": np.ascontiguousarray(np.stack(ls)).astype(np.int64)}
