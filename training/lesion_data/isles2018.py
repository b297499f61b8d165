"""ISLES 2018 (CT perfusion lesion segmentation challenge) reader, on a local copy of the public set.

Layout, as the challenge ships it (``.nii.gz`` files and files lying directly in the case folder are
accepted too, see ``AIFSelectorLib.io.ctp_io.isles2018_case``)::

    ISLES2018_Training/TRAINING/case_1/SMIR.Brain.XX.O.CT.345562/SMIR.Brain.XX.O.CT.345562.nii
                                      /SMIR.Brain.XX.O.CT_4DPWI.345563/...nii   4D CTP (x, y, z, t)
                                      /SMIR.Brain.XX.O.CT_CBF.345564/...nii     maps of the vendor software
                                      /SMIR.Brain.XX.O.CT_CBV.*, CT_MTT.*, CT_Tmax.*
                                      /SMIR.Brain.XX.O.OT.345569/...nii         DWI-delineated lesion (training)
    ISLES2018_Testing/TESTING/case_N/...                                       the same without OT

A case may also hold the co-registered DWI (``SMIR.Brain.XX.O.MR_DWI.<id>``), which is returned when
present (the pseudo-DWI synthesis target). Each case is a slab of a few slices: the CTP frames, the maps,
CT, DWI and OT share one (z, y, x) grid, which is checked.
"""
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from AIFSelectorLib.io.isles2018 import isles2018_case
from AIFSelectorLib.io.ctp_io import load_ctp
from AIFSelectorLib.io.time_grid import resample_uniform
from AIFSelectorLib.ctp_series import VolumeGeometry
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.volume_io import read_volume

MAP_MODALITIES = {"cbf": "CT_CBF", "cbv": "CT_CBV", "mtt": "CT_MTT", "tmax": "CT_Tmax"}
"""Keys of ``load_case(...)['maps']`` and the ISLES modality each comes from (vendor units as shipped)."""

_CASE = re.compile(r"^case_(\d+)$", re.IGNORECASE)
_DWI = re.compile(r"^SMIR\.Brain\.[^.]+\.[^.]+\.MR_DWI\.\d+(\.nii(\.gz)?)?$", re.IGNORECASE)
SPACING_TOLERANCE = 0.01
"""Largest relative difference of voxel spacing between the images of one case."""


def list_cases(root) -> List[Path]:
    """The ``case_N`` folders in ``root`` or up to two levels below it (the set's root, its TRAINING or
    TESTING folder, or one case folder), sorted by N then by path. InputError when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"ISLES 2018 folder not found: {root}")
    levels = [[root]]
    for _ in range(2):  # the set's root -> TRAINING -> case_N
        levels.append([c for p in levels[-1] for c in sorted(p.iterdir()) if c.is_dir()])
    found = {p for level in levels for p in level if _CASE.match(p.name)}
    if not found:
        raise InputError(f"{root}: no ISLES 2018 case_N folders found")
    return sorted(found, key=lambda p: (int(_CASE.match(p.name).group(1)), str(p)))


def _dwi_path(folder: Path) -> Optional[Path]:
    entries = [p for p in folder.iterdir() if _DWI.match(p.name)]
    if not entries:
        return None
    if len(entries) > 1:
        raise InputError(f"{folder.name}: {len(entries)} MR_DWI entries, expected at most one")
    entry = entries[0]
    if entry.is_file():
        return entry
    images = sorted(p for p in entry.iterdir() if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")))
    if len(images) != 1:
        raise InputError(f"{folder.name}/{entry.name}: expected one .nii image, found {len(images)}")
    return images[0]


def _read_on_grid(path: Path, shape_zyx, geometry: VolumeGeometry, case: str, what: str) -> np.ndarray:
    array, g = read_volume(path)
    if array.shape != tuple(shape_zyx):
        raise InputError(f"{case}: {what} ({path.name}) has shape {array.shape}, the perfusion series "
                         f"{tuple(shape_zyx)} (z, y, x)")
    if not np.allclose(g.spacing_mm, geometry.spacing_mm, rtol=SPACING_TOLERANCE):
        raise InputError(f"{case}: {what} ({path.name}) has voxel spacing {g.spacing_mm} mm, the perfusion "
                         f"series {geometry.spacing_mm} mm")
    return array


def load_case(case_dir, dt_s: Optional[float] = None) -> Dict[str, object]:
    """One ISLES 2018 case folder as a dict:

    - ``case_id`` (the folder name), ``paths`` (modality -> file);
    - ``series``: the CT_4DPWI series (CTPSeries, data (t, z, y, x) HU, frame times in s; irregular frame
      times resampled to a uniform grid); ``dt_s`` replaces the file's frame interval;
    - ``maps``: {'cbf', 'cbv', 'mtt', 'tmax'} (z, y, x) float32 as the vendor software wrote them;
    - ``ct``: the CT slab (z, y, x) float32 HU, or None; ``dwi``: the co-registered DWI or None;
    - ``lesion``: OT (z, y, x) bool, or None in test cases;
    - ``geometry``: the VolumeGeometry of the (z, y, x) grid (spacing (x, y, z) mm).

    InputError (one line, naming the case and the file) for a missing perfusion series or map, or for an
    image on another grid than the series."""
    case_dir = Path(case_dir)
    case = case_dir.name
    paths = isles2018_case(case_dir)
    missing = [m for m in ("CT_4DPWI",) + tuple(MAP_MODALITIES.values()) if m not in paths]
    if missing:
        raise InputError(f"ISLES 2018 case {case}: missing {', '.join(missing)} "
                         f"(found {', '.join(sorted(paths))})")
    series = load_ctp(paths["CT_4DPWI"], dt_s=dt_s)
    if not series.is_uniform:
        series = resample_uniform(series)
    shape, geometry = series.shape_zyx, series.geometry
    maps = {key: _read_on_grid(paths[mod], shape, geometry, case, mod).astype(np.float32)
            for key, mod in MAP_MODALITIES.items()}
    ct = _read_on_grid(paths["CT"], shape, geometry, case, "CT").astype(np.float32) if "CT" in paths else None
    dwi_path = _dwi_path(case_dir)
    dwi = _read_on_grid(dwi_path, shape, geometry, case, "MR_DWI").astype(np.float32) if dwi_path else None
    lesion = _read_on_grid(paths["OT"], shape, geometry, case, "OT") > 0 if "OT" in paths else None
    all_paths = dict(paths)
    if dwi_path:
        all_paths["MR_DWI"] = dwi_path
    return {"case_id": case, "paths": all_paths, "series": series, "maps": maps, "ct": ct, "dwi": dwi,
            "lesion": lesion, "geometry": geometry}
