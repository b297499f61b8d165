"""Preprocessing of a CTP series: bolus arrival and baseline, brain and vessel masks, HU to enhancement.
Works slab by slab so memory stays bounded for whole-brain series.

Shapes: series data (t, z, y, x) HU; volumes (z, y, x); curves (n_voxels, t). Times in seconds.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
from scipy import ndimage

from AIFSelectorLib.ctp_series import CTPSeries

AIR_HU = -100.0
"""Below this (baseline HU) a voxel is air."""
BONE_HU = 120.0
"""Above this (baseline HU) a voxel is bone or calcification."""
CSF_HU = 20.0
"""Below this temporal-mean HU an intracranial voxel is cerebrospinal fluid: halfway between CSF (0-15 HU) and
white matter (25-30 HU, a few HU more with contrast)."""
VESSEL_PEAK_HU = 80.0
"""Peak enhancement above this marks a large vessel: tissue enhances by only ~10-40 HU."""


@dataclass(frozen=True)
class Bolus:
    """Timing of the contrast bolus found on the whole-brain mean curve."""

    arrival_s: float
    """Time of contrast arrival (first frame clearly above baseline), seconds from the first frame."""
    n_baseline: int
    """Number of pre-contrast frames averaged for the baseline (at least 1)."""


def slabs(shape_zyx: Tuple[int, int, int], max_voxels: int = 1 << 18) -> Iterator[slice]:
    """Slices of z covering the volume, each holding at most ``max_voxels`` voxels (at least one slice)."""
    per_slice = shape_zyx[1] * shape_zyx[2]
    step = max(1, max_voxels // max(per_slice, 1))
    for z0 in range(0, shape_zyx[0], step):
        yield slice(z0, min(z0 + step, shape_zyx[0]))


def on_slabs(function, shape_zyx: Tuple[int, int, int], max_voxels: int = 1 << 18,
             workers: Optional[int] = None) -> list:
    """[function(zs) for zs in slabs(shape_zyx, max_voxels)], ``workers`` slabs at a time (default: every usable
    core; numpy and scipy.ndimage release the GIL), results in slab order: for per-slab work whose outputs do not
    overlap, or are combined in that order."""
    work = list(slabs(shape_zyx, max_voxels))
    workers = min(workers or usable_cores(), len(work))
    if workers < 2:
        return [function(zs) for zs in work]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, work))


def global_curve(series: CTPSeries, low_hu: float = AIR_HU, high_hu: float = BONE_HU) -> np.ndarray:
    """Mean HU per frame (t,) over voxels whose first-frame value is soft tissue or blood (summed in float64
    from the stored values: no float32 copy of the series)."""
    def partial(zs):
        block = series.data[:, zs]
        inside = (block[0] > low_hu) & (block[0] < high_hu)
        return block[:, inside].sum(axis=1, dtype=np.float64), int(inside.sum())

    sums = np.zeros(series.n_frames)
    count = 0
    for part_sums, part_count in on_slabs(partial, series.shape_zyx):  # added in slab order
        sums += part_sums
        count += part_count
    return sums / max(count, 1)


def detect_bolus(curve: np.ndarray, times_s: np.ndarray, k_sigma: float = 4.0) -> Bolus:
    """Bolus arrival on a mean curve (t,): the first frame after which the curve stays above the
    baseline by more than ``k_sigma`` noise standard deviations and 5 % of its total rise.

    Baseline and noise come from the first frames (median and frame-to-frame differences), so a series
    that starts with the bolus already arriving gets a one-frame baseline, never none.
    """
    curve = np.asarray(curve, dtype=np.float64)
    head = curve[: max(3, len(curve) // 8)]
    base = float(np.median(head))
    noise = float(np.median(np.abs(np.diff(head))) / 0.6745 / np.sqrt(2)) if len(head) > 2 else 0.0
    rise = float(curve.max() - base)
    level = base + max(k_sigma * noise, 0.05 * rise)
    above = curve > level
    # first index from which the next two frames are above the level too (not a single noise spike)
    run = above & np.roll(above, -1) & np.roll(above, -2)
    run[-2:] = above[-2:]
    idx = int(np.argmax(run)) if run.any() else len(curve) - 1
    n_baseline = max(1, idx - 1)  # the frame before the crossing already carries some contrast
    return Bolus(arrival_s=float(times_s[idx] - times_s[0]), n_baseline=n_baseline)


def baseline_image(series: CTPSeries, n_baseline: int) -> np.ndarray:
    """Mean of the pre-contrast frames, (z, y, x) float32 HU."""
    out = np.empty(series.shape_zyx, np.float32)

    def one(zs):
        out[zs] = series.data[:n_baseline, zs].astype(np.float32).mean(axis=0)
    on_slabs(one, series.shape_zyx)
    return out


def brain_mask(baseline_hu: np.ndarray, mean_hu: np.ndarray, spacing_mm) -> Tuple[np.ndarray, np.ndarray]:
    """Intracranial soft tissue and brain parenchyma from the pre-contrast and temporal-mean images (z, y, x) HU.

    Returns (intracranial, parenchyma), boolean (z, y, x): intracranial = inside the skull without bone or
    air (CSF included, where arteries and sinuses run); parenchyma = intracranial without CSF.
    Bone and air are thresholds; the brain is the largest connected soft-tissue component after an
    opening that cuts it from the scalp; CSF is a threshold on the temporal mean: averaged over every frame,
    its noise is low without a spatial blur, which would let the 1-2 mm CSF of the sulci pass as tissue (on
    the phantom a 1-voxel blur of the baseline kept 11 700 CSF voxels, and they read as ischaemic core).
    """
    sx, sy, _ = spacing_mm
    px = max(1, int(round(2.0 / min(sx, sy))))  # ~2 mm structuring radius in-plane
    smooth = in_plane(ndimage.gaussian_filter, baseline_hu, sigma=(0, 1.0, 1.0))
    bone = baseline_hu > BONE_HU
    soft = (smooth > AIR_HU) & (smooth < BONE_HU) & ~in_plane(ndimage.binary_dilation, bone, _disk(1))
    core = in_plane(ndimage.binary_erosion, soft, _disk(px))
    labels, n = ndimage.label(core)
    if n == 0:
        empty = np.zeros(baseline_hu.shape, bool)
        return empty, empty
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    brain = labels == (1 + int(np.argmax(sizes)))
    brain = in_plane(ndimage.binary_dilation, brain, _disk(px)) & soft
    brain = in_plane(_fill_holes_per_slice, brain) & ~bone
    parenchyma = brain & (mean_hu >= CSF_HU)
    return brain, parenchyma


def in_plane(operation, volume: np.ndarray, *args, **kwargs) -> np.ndarray:
    """``operation(volume, *args, **kwargs)`` for an operation that works within each slice (an in-plane
    structuring element or filter), run on slabs of slices (two per core, :func:`on_slabs`): the same result
    as one call, 2x faster on a whole-brain series on 2 cores."""
    nz, ny, nx = volume.shape
    step = -(-nz // (2 * usable_cores()))
    return np.concatenate(on_slabs(lambda zs: operation(volume[zs], *args, **kwargs), volume.shape,
                                   max_voxels=step * ny * nx))


def _fill_holes_per_slice(volume: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice (a hole closed only through other slices is still a hole)."""
    return np.stack([ndimage.binary_fill_holes(s) for s in volume])


def bounding_box(mask: np.ndarray) -> Optional[Tuple[slice, ...]]:
    """The smallest box (one slice per axis) that holds every True voxel of ``mask``; None when none is True."""
    mask = np.asarray(mask, bool)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _disk(radius: int) -> np.ndarray:
    """In-plane disk structuring element (1, 2r+1, 2r+1)."""
    r = np.arange(-radius, radius + 1)
    return (r[None, :, None] ** 2 + r[None, None, :] ** 2 <= radius ** 2)


def block_factors(spacing_mm, grid_mm: float) -> Tuple[int, int]:
    """In-plane block sizes (fy, fx) that bring voxels (spacing x, y, z in mm) close to ``grid_mm`` (1 where the
    voxels are already that large or larger)."""
    return tuple(max(1, int(round(grid_mm / float(s)))) for s in (spacing_mm[1], spacing_mm[0]))


def block_sums(images: np.ndarray, fy: int, fx: int, pad: str = "constant") -> np.ndarray:
    """(..., y, x) -> (..., ceil(y/fy), ceil(x/fx)) float32 sums over fy x fx blocks, edge blocks padded with
    zeros (``pad='constant'``) or by replicating the last row/column (``'edge'``). Summed over the block's
    strided views in a fixed order (a reduction over two non-adjacent axes of a whole series was 4x slower)."""
    ny, nx = images.shape[-2:]
    py, px = -ny % fy, -nx % fx
    if py or px:
        images = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(0, py), (0, px)], mode=pad)
    out = images[..., 0::fy, 0::fx].astype(np.float32)
    for i in range(fy):
        for j in range(fx):
            if i or j:
                out += images[..., i::fy, j::fx]
    return out


def enhancement(block_hu: np.ndarray, baseline_hu: np.ndarray) -> np.ndarray:
    """HU to enhancement: (t, ...) frames minus the pre-contrast baseline (...), float32 HU."""
    return block_hu.astype(np.float32) - baseline_hu[None].astype(np.float32)


THREADS_ENV = "STROKELESION_THREADS"
"""Environment variable that caps the threads of the stages' own pools (`strokelesion batch` gives each case its
share of the machine's cores through it). The results do not depend on it (tested)."""


def affinity_cores() -> int:
    """CPU cores this process may run on (its affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def usable_cores() -> int:
    """:func:`affinity_cores`, at most STROKELESION_THREADS when that is set to a positive integer."""
    cores = affinity_cores()
    cap = os.environ.get(THREADS_ENV, "")
    return max(1, min(cores, int(cap))) if cap.isdigit() and int(cap) > 0 else cores


def curve_features(enh: np.ndarray, dt_s: float) -> dict:
    """Per-voxel summaries of enhancement curves (n, t): area [HU.s], peak [HU], time to peak [s],
    first moment [s] (of the positive part) and roughness (mean squared second difference / peak^2)."""
    area = dt_s * enh.sum(axis=1)
    peak = enh.max(axis=1)
    ttp = dt_s * np.argmax(enh, axis=1)
    pos = np.clip(enh, 0, None)
    t = dt_s * np.arange(enh.shape[1], dtype=np.float32)
    m1 = (pos @ t) / np.maximum(pos.sum(axis=1), 1e-6)
    rough = np.mean(np.diff(enh, n=2, axis=1) ** 2, axis=1) / np.maximum(peak, 1e-6) ** 2
    return {"area": area, "peak": peak, "ttp": ttp, "m1": m1, "roughness": rough}
