"""Training data for X-Net: T1 phantom cases (or ATLAS scans) as normalised slices on the network grid.

A case is a dict: 't1' (z, y, x) float32 (scanner units), 'lesion' (z, y, x) bool, 'spacing_xyz' (x, y, z)
mm, 'name'.

Phantom cases: ``make_phantom(seed, (z, n, n), 12 frames, s x s x dz mm, lesion_variety=True,
head_rotation_max_deg=15)`` with, drawn per seed, the in-plane voxel size s uniform in 1.5-2.1 mm, the
in-plane size n = 230 mm / s (even), z in {8, 10, 12} slices of dz in {5, 6, 7} mm: random head pose and
position, 1-3 chronic lesions (CSF-like cavity in a gliotic rim) of random site, size and shape; the T1
look-alike and the infarct as the lesion. Seeds: training 10000-19999, validation 20000-20999, held-out
evaluation 30000-30999 (never trained on).

ATLAS scans (``--data atlas --root DIR``, :mod:`training.lesion_data.atlas`): every ``val_every``-th scan
in case-id order is validation, the others training (scans without masks, the test set, are skipped).

:func:`case_slices` puts a case on the network grid of an :class:`XNetConfig` (the preprocessing of
:mod:`StrokeLesionLib.lesion_models.xnet.inference`), :func:`slice_set` stacks cases into (slices (N, s, s) float16
normalised T1, labels (N, s, s) bool, case index (N,)), and :func:`training_batch` draws case-balanced,
augmented batches from them.
"""
import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from AIFSelectorLib.io.volume_io import atomic_path

TRAIN_SEED0, VAL_SEED0, EVAL_SEED0 = 10000, 20000, 30000
FOV_MM = 230.0
INPLANE_SPACING_MM = (1.5, 2.1)
SLICE_COUNTS = (8, 10, 12)
SLICE_THICKNESS_MM = (5.0, 6.0, 7.0)
N_FRAMES = 12
MAX_ROTATION_DEG = 15.0
CACHE_VERSION = 2


def phantom_geometry(seed: int) -> Tuple[Tuple[int, int, int], Tuple[float, float, float]]:
    """(shape_zyx, spacing_xyz mm) of phantom case ``seed`` (see module doc)."""
    rng = np.random.default_rng([seed, 4242])
    s = float(rng.uniform(*INPLANE_SPACING_MM))
    n = 2 * int(round(FOV_MM / s / 2.0))
    nz = int(rng.choice(SLICE_COUNTS))
    dz = float(rng.choice(SLICE_THICKNESS_MM))
    return (nz, n, n), (s, s, dz)


def phantom_case(seed: int) -> Dict[str, object]:
    """One T1 phantom case (see module doc)."""
    from AIFSelectorLib.phantom.case import make_phantom
    shape, spacing = phantom_geometry(seed)
    case = make_phantom(seed, shape_zyx=shape, n_frames=N_FRAMES, spacing_mm=spacing, lesion_variety=True,
                        head_rotation_max_deg=MAX_ROTATION_DEG)
    return {"t1": case.t1.astype(np.float32), "lesion": np.asarray(case.truth["lesion"], bool),
            "spacing_xyz": spacing, "name": f"phantom-{seed}"}


def atlas_cases(root, split: str, val_every: int = 10) -> List[Dict[str, object]]:
    """ATLAS scans with masks of ``split`` ('train' or 'val', see module doc)."""
    from training.lesion_data import atlas
    cases = [c for c in atlas.list_cases(root) if c.masks]
    keep = [c for i, c in enumerate(cases) if (i % val_every == 0) == (split == "val")]
    out = []
    for c in keep:
        d = atlas.load_case(c)
        out.append({"t1": d["t1"], "lesion": d["lesion"], "spacing_xyz": tuple(d["geometry"].spacing_mm),
                    "name": d["case_id"]})
    return out


def _grid_key(config) -> str:
    d = {k: config.to_dict()[k] for k in ("grid_size", "grid_spacing_mm", "clip_percentiles")}
    return hashlib.sha1(json.dumps([CACHE_VERSION, d], sort_keys=True).encode("utf-8")).hexdigest()[:10]


def case_slices(case: Dict[str, object], config) -> Tuple[np.ndarray, np.ndarray]:
    """(normalised slices (z, s, s) float16, lesion labels (z, s, s) bool) of one case on the network grid;
    slices without head are dropped."""
    from StrokeLesionLib.lesion_models.xnet.inference import network_input, to_network_grid
    slices, grid, head = network_input(case["t1"], case["spacing_xyz"], config)
    labels = to_network_grid(np.asarray(case["lesion"], np.float32), grid, 0.0) > 0.5
    keep = head.any(axis=(1, 2))
    return slices[keep].astype(np.float16), labels[keep]


def phantom_slices(seeds: Sequence[int], config, cache: Optional[Path] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """case_slices of the phantom cases ``seeds`` (cached as .npz under ``cache`` when given)."""
    out = []
    for seed in seeds:
        path = Path(cache) / f"xnet-t1-{_grid_key(config)}-{int(seed)}.npz" if cache is not None else None
        if path is not None and path.is_file():
            with np.load(path) as f:
                out.append((f["slices"], f["labels"]))
            continue
        pair = case_slices(phantom_case(int(seed)), config)
        if path is not None:
            with atomic_path(path) as tmp:
                np.savez_compressed(tmp, slices=pair[0], labels=pair[1])
        out.append(pair)
    return out


def slice_set(pairs: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-case (slices, labels) pairs stacked: (slices (N, s, s) float16, labels (N, s, s) bool, case index
    (N,) int)."""
    slices = np.concatenate([p[0] for p in pairs])
    labels = np.concatenate([p[1] for p in pairs])
    index = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(pairs)])
    return slices, labels, index


def training_batch(slices: np.ndarray, labels: np.ndarray, index: np.ndarray, rng: np.random.Generator,
                   batch_size: int = 8, lesion_fraction: float = 0.7) -> Tuple[np.ndarray, np.ndarray]:
    """(B, 1, s, s) float32 slices and (B, s, s) int64 labels. Case-balanced: each slice comes from a case
    drawn uniformly (so a small lesion on two slices is seen as often as a hemisphere on ten), and is one of
    its lesion slices with probability ``lesion_fraction`` (when it has any), else any of its slices.
    Augmentation: random left-right flip, intensity gain 0.9-1.1 and offset +/- 0.1 (z-score units), additive
    Gaussian noise of SD 0-0.1."""
    has = labels.reshape(len(labels), -1).any(axis=1)
    n_cases = int(index.max()) + 1
    xs, ys = [], []
    for _ in range(batch_size):
        case = np.flatnonzero(index == rng.integers(n_cases))
        lesion = case[has[case]]
        pool = lesion if len(lesion) and rng.random() < lesion_fraction else case
        i = int(pool[rng.integers(len(pool))])
        x, y = slices[i].astype(np.float32), labels[i]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
        x = x + rng.standard_normal(x.shape).astype(np.float32) * rng.uniform(0.0, 0.1)
        xs.append(x)
        ys.append(y)
    return (np.ascontiguousarray(np.stack(xs)[:, None], np.float32),
            np.ascontiguousarray(np.stack(ys), np.int64))
