"""Training data for AIFNet: phantom cases (generated, optionally cached as .npz) and ISLES 2018 cases
with annotated AIF/VOF voxels.

A sample is a dict: 'x' (t, z, y, x) float32 HU, 'times_s' (t,), 'aif' and 'vof' (t,) reference curves in
HU, 'artery_mask' and 'vein_mask' (z, y, x) bool or None, 'name'.

Seeds: training 1000+, validation 5000+, held-out evaluation 9000+ (never used in training).

ISLES 2018 annotation CSV (``annotations.csv``), one row per case and function, header required:

    case,function,z,y,x
    case_1,aif,3,101,87
    case_1,vof,5,190,128

``case`` is the case folder name under the ISLES root, ``function`` is ``aif`` or ``vof``, and z, y, x are
zero-based voxel indices into the CT_4DPWI image as read by SimpleITK (numpy order, t, z, y, x with the
time axis dropped). The reference curve is that voxel's curve.
"""
import csv
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from AIFSelectorLib.io.volume_io import atomic_path

TRAIN_SEED0, VAL_SEED0, EVAL_SEED0 = 1000, 5000, 9000


def phantom_kwargs(seed: int, small: bool = True) -> dict:
    """Randomised size and acquisition for one training phantom (anatomy, AIF shape, arrival, dispersion
    and dose are randomised by the phantom generator itself from the seed)."""
    rng = np.random.default_rng(seed + 7919)
    if small:
        n = int(rng.integers(96, 129) // 8 * 8)
        shape = (int(rng.integers(4, 9)), n, n)
        # in-plane spacing between the default 0.9 mm (the generator shrinks the head to the field of
        # view: thin vessels in voxels) and the spacing that keeps the head full size (coarser voxels)
        sp = float(rng.uniform(0.9, 0.9 * 256 / n))
        spacing = (sp, sp, float(rng.uniform(5.0, 6.0)))
    else:
        shape, spacing = (8, 256, 256), (0.9, 0.9, 6.0)
    return {"shape_zyx": shape, "spacing_mm": spacing, "n_frames": int(rng.integers(40, 57)),
            "noise_hu": float(rng.uniform(3.0, 10.0))}


def phantom_sample(seed: int, small: bool = True, **overrides) -> Dict[str, object]:
    """One phantom case as a training sample."""
    from AIFSelectorLib.phantom.case import make_phantom
    kw = phantom_kwargs(seed, small)
    kw.update(overrides)
    case = make_phantom(seed, **kw)
    return sample_from_phantom(case, f"phantom-{seed}")


def sample_from_phantom(case, name: str = "phantom") -> Dict[str, object]:
    t = case.truth
    return {"x": np.asarray(case.series.data, dtype=np.float32), "times_s": np.asarray(case.series.times_s),
            "aif": np.asarray(case.aif_hu, np.float32), "vof": np.asarray(case.vof_hu, np.float32),
            "artery_mask": np.asarray(t["artery_mask"], bool) if "artery_mask" in t else None,
            "vein_mask": np.asarray(t["vein_mask"], bool) if "vein_mask" in t else None, "name": name}


def cached_phantoms(seeds: Sequence[int], cache_dir: Optional[Path] = None, small: bool = True,
                    log=None) -> List[Dict[str, object]]:
    """Phantom samples for the given seeds, read from / written to ``cache_dir`` (.npz) when given."""
    out = []
    for s in seeds:
        path = None if cache_dir is None else Path(cache_dir) / f"phantom-{s}-{'small' if small else 'full'}.npz"
        if path is not None and path.exists():
            z = np.load(path, allow_pickle=False)
            out.append({k: (z[k] if k in z.files else None) for k in
                        ("x", "times_s", "aif", "vof", "artery_mask", "vein_mask")} | {"name": f"phantom-{s}"})
            continue
        sample = phantom_sample(s, small)
        if path is not None:
            with atomic_path(path) as tmp:
                np.savez(tmp, **{k: v for k, v in sample.items() if isinstance(v, np.ndarray)})
        out.append(sample)
        if log:
            log(f"phantom seed {s}: {sample['x'].shape}")
    return out


# ------------------------------------------------------------------------------------------- ISLES 2018

def read_annotations(csv_path) -> Dict[str, Dict[str, tuple]]:
    """{case: {'aif': (z, y, x), 'vof': (z, y, x)}} from the annotation CSV (see module doc)."""
    from AIFSelectorLib.errors import InputError
    out: Dict[str, Dict[str, tuple]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"case", "function", "z", "y", "x"}
        if reader.fieldnames is None or not need <= {c.strip() for c in reader.fieldnames}:
            raise InputError(f"{csv_path}: the annotation CSV needs the columns case,function,z,y,x")
        for i, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items()}
            fn = row["function"].lower()
            if fn not in ("aif", "vof"):
                raise InputError(f"{csv_path} line {i}: function must be aif or vof, got {row['function']!r}")
            try:
                zyx = tuple(int(row[c]) for c in ("z", "y", "x"))
            except ValueError:
                raise InputError(f"{csv_path} line {i}: z, y, x must be integers") from None
            out.setdefault(row["case"], {})[fn] = zyx
    return out


def isles_samples(root, csv_path) -> Iterator[Dict[str, object]]:
    """Samples from ISLES 2018 case folders under ``root`` annotated in ``csv_path``."""
    from AIFSelectorLib.io.isles2018 import isles2018_case
    from AIFSelectorLib.io.ctp_io import load_ctp
    from AIFSelectorLib.io.time_grid import resample_uniform
    from AIFSelectorLib.errors import InputError
    for case, fns in read_annotations(csv_path).items():
        files = isles2018_case(Path(root) / case)
        if "CT_4DPWI" not in files:
            raise InputError(f"{case}: no CT_4DPWI image")
        series = load_ctp(files["CT_4DPWI"])
        if not series.is_uniform:
            series = resample_uniform(series)
        x = np.asarray(series.data, np.float32)
        sample = {"x": x, "times_s": series.times_s, "artery_mask": None, "vein_mask": None, "name": case}
        for fn in ("aif", "vof"):
            if fn in fns:
                z, y, xx = fns[fn]
                if not (0 <= z < x.shape[1] and 0 <= y < x.shape[2] and 0 <= xx < x.shape[3]):
                    raise InputError(f"{case}: {fn} voxel {fns[fn]} outside the image {x.shape[1:]}")
                sample[fn] = x[:, z, y, xx].copy()
            else:
                sample[fn] = None
        yield sample
