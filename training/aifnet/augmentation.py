"""Perfusion-specific augmentation (AIFNet paper): bolus-arrival shift and peak-to-baseline scaling.

Both act on a whole case: the 4D series x (t, z, y, x) HU and its reference curves (t,) move together.
"""
from typing import Dict

import numpy as np


def shift_bolus(x: np.ndarray, shift: int, *curves: np.ndarray):
    """Delays (shift > 0) or advances (shift < 0) the bolus by |shift| frames, keeping the length:
    a delay replicates the first frame at the start and drops the last frames, an advance drops the first
    frames and replicates the last one at the end. Applied alike to the series (t, ...) and every curve."""
    def one(a):
        if shift == 0:
            return a
        if shift > 0:
            return np.concatenate([np.repeat(a[:1], shift, axis=0), a[:-shift]], axis=0)
        s = -shift
        return np.concatenate([a[s:], np.repeat(a[-1:], s, axis=0)], axis=0)
    return (one(x),) + tuple(one(c) for c in curves)


def scale_peak_to_baseline(x: np.ndarray, factor: float, n_pre: int, *curves: np.ndarray):
    """Multiplies the enhancement by ``factor``: the pre-contrast mean (first n_pre frames) of every voxel
    (and curve) is removed, the rest scaled, the mean added back (contrast dose / cardiac output)."""
    def one(a):
        base = a[:max(1, n_pre)].mean(axis=0, keepdims=True)
        return (base + factor * (a - base)).astype(a.dtype)
    return (one(x),) + tuple(one(c) for c in curves)


def augment(sample: Dict[str, np.ndarray], rng: np.random.Generator, max_delay: int = 6, max_advance: int = 3,
            scale_range=(0.5, 1.6), n_pre: int = 3, flip: bool = True) -> Dict[str, np.ndarray]:
    """A randomly augmented copy of a training sample (keys 'x', 'aif', 'vof', optional masks):
    bolus shift in [-max_advance, max_delay] frames, peak-to-baseline factor in scale_range, and a random
    left-right flip (anatomy only)."""
    out = dict(sample)
    names = [k for k in ("aif", "vof") if k in sample and sample[k] is not None]
    shift = int(rng.integers(-max_advance, max_delay + 1))
    res = shift_bolus(sample["x"], shift, *[sample[k] for k in names])
    factor = float(rng.uniform(*scale_range))
    res = scale_peak_to_baseline(res[0], factor, n_pre, *res[1:])
    out["x"] = res[0]
    for k, c in zip(names, res[1:]):
        out[k] = c
    if flip and rng.random() < 0.5:
        out["x"] = out["x"][..., ::-1]
        for k in ("artery_mask", "vein_mask"):
            if out.get(k) is not None:
                out[k] = out[k][..., ::-1]
    out["x"] = np.ascontiguousarray(out["x"])
    return out
