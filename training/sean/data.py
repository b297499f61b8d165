"""Training data for SEAN: NCCT phantom cases (or AISD cases) and the batches of both training stages.

A case is a dict: 'ncct' (z, y, x) float32 HU, 'lesion' (z, y, x) bool, 'spacing_xyz' (x, y, z) mm,
'angle_deg' (the true in-plane head rotation, sign convention of ``StrokeLesionLib.lesion_models.sean.alignment``;
nan when unknown), 'name'. Only 'ncct' enters training; 'angle_deg' is used to measure the alignment.

Phantom cases: ``make_phantom(seed, (z, 128, 128), 12 frames, 1.8 x 1.8 x 6 mm, noise 2-4 HU,
lesion_variety=True, head_rotation_max_deg=15)`` with z in {8, 10, 12} drawn per seed: random head pose
(rotation uniform in +/- 15 deg, shift), 1-3 lesions of random site and size; the NCCT look-alike (HU)
and the infarct core as the lesion. Seeds: training 10000-19999, validation 20000-20999, held-out
evaluation 30000-30999 (never trained on).
"""
from typing import Dict, List, Sequence

import numpy as np

TRAIN_SEED0, VAL_SEED0, EVAL_SEED0 = 10000, 20000, 30000
INPLANE = 128
SPACING_MM = (1.8, 1.8, 6.0)
N_FRAMES = 12
SLICE_COUNTS = (8, 10, 12)
NOISE_HU = (2.0, 4.0)
MAX_ROTATION_DEG = 15.0


def phantom_case(seed: int) -> Dict[str, object]:
    """One NCCT phantom case (see module doc)."""
    from AIFSelectorLib.phantom.case import make_phantom
    rng = np.random.default_rng(seed + 7919)
    nz = int(rng.choice(SLICE_COUNTS))
    noise = float(rng.uniform(*NOISE_HU))
    kw = dict(shape_zyx=(nz, INPLANE, INPLANE), n_frames=N_FRAMES, spacing_mm=SPACING_MM, noise_hu=noise)
    case = make_phantom(seed, lesion_variety=True, head_rotation_max_deg=MAX_ROTATION_DEG, **kw)
    ncct, lesion = case.ncct, case.truth["lesion"]
    angle = float(case.params["anatomy"]["head_rotation_deg"])
    return {"ncct": ncct.astype(np.float32), "lesion": np.asarray(lesion, bool), "spacing_xyz": SPACING_MM,
            "angle_deg": angle, "name": f"phantom-{seed}"}


def phantom_cases(seeds: Sequence[int]) -> List[Dict[str, object]]:
    return [phantom_case(int(s)) for s in seeds]


def aisd_cases(root, split: str, val_every: int = 10) -> List[Dict[str, object]]:
    """AISD cases (training.lesion_data.aisd) of ``split``: 'val' is every ``val_every``-th case in case-id
    order, 'train' the others (an AISD test split is the caller's choice of root)."""
    from training.lesion_data import aisd
    cases = aisd.list_cases(root)
    keep = [c for i, c in enumerate(cases) if (i % val_every == 0) == (split == "val")]
    out = []
    for c in keep:
        d = aisd.load_case(c)
        out.append({"ncct": d["ncct"], "lesion": d["lesion"], "spacing_xyz": tuple(d["geometry"].spacing_mm),
                    "angle_deg": float("nan"), "name": d["case_id"]})
    return out


def alignment_batch(volumes: Sequence[np.ndarray], backgrounds: Sequence[float], rng: np.random.Generator,
                    batch_size: int = 4, n_slices: int = 6):
    """Stage 1: (B, n_slices, s, s) slices on the alignment grid (a random subset of each drawn case's
    slices, in order; random left-right flips) and (B,) backgrounds, as numpy arrays."""
    xs, bs = [], []
    for _ in range(batch_size):
        i = int(rng.integers(len(volumes)))
        v = volumes[i]
        pick = np.sort(rng.choice(v.shape[0], size=n_slices, replace=v.shape[0] < n_slices))
        x = v[pick]
        xs.append(x[..., ::-1] if rng.random() < 0.5 else x)
        bs.append(backgrounds[i])
    return np.ascontiguousarray(np.stack(xs), np.float32), np.asarray(bs, np.float32)


def segmentation_batch(stacks: Sequence[np.ndarray], labels: Sequence[np.ndarray], rng: np.random.Generator,
                       context: int, batch_size: int = 8, lesion_fraction: float = 0.6):
    """Stage 2: (B, 1, 2T+1, s, s) aligned slice stacks and (B, s, s) int64 labels of their centre slices.
    About ``lesion_fraction`` of the slices hold infarct; random left-right flips (the aligned midline
    stays the midline)."""
    xs, ys = [], []
    for _ in range(batch_size):
        i = int(rng.integers(len(stacks)))
        vol, lab = stacks[i], labels[i]
        with_lesion = np.flatnonzero(lab.any(axis=(1, 2)))
        z = (int(rng.choice(with_lesion)) if len(with_lesion) and rng.random() < lesion_fraction
             else int(rng.integers(vol.shape[0])))
        idx = np.clip(np.arange(z - context, z + context + 1), 0, vol.shape[0] - 1)
        x, y = vol[idx], lab[z]
        if rng.random() < 0.5:
            x, y = x[..., ::-1], y[..., ::-1]
        xs.append(x[None])
        ys.append(y)
    return (np.ascontiguousarray(np.stack(xs), np.float32),
            np.ascontiguousarray(np.stack(ys)).astype(np.int64))
