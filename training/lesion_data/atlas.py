"""ATLAS (Anatomical Tracings of Lesions After Stroke, Liew et al.: T1-weighted MRI of chronic stroke)
reader, on a local copy of the public release.

ATLAS v2.0 (BIDS, images in MNI152NLin2009aSym space; the test set has no masks)::

    ATLAS_2/Training/R001/sub-r001s001/ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
                                                  sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz
    ATLAS_2/Testing/R00N/sub-.../ses-1/anat/..._T1w.nii.gz

ATLAS R1.2 (standard space; several lesions of one scan come as several masks, which are united)::

    ATLAS_R1.2/standard_MNI/c0001/c0001s0001t01/c0001s0001t01_t1w_deface_stx.nii.gz
                                               c0001s0001t01_LesionSmooth_stx.nii.gz
                                               c0001s0001t01_LesionSmooth_1_stx.nii.gz ...
"""
import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

import numpy as np

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.volume_io import read_volume

_BIDS_T1 = re.compile(r"^(?P<sub>sub-[A-Za-z0-9]+)(?P<rest>_.*)?_T1w\.nii(\.gz)?$")
_R12_T1 = re.compile(r"^(?P<scan>c\d+s\d+t\d+)_t1w(_deface)?(_stx)?\.nii(\.gz)?$", re.IGNORECASE)


class ATLASCase(NamedTuple):
    """The files of one scan: its T1 image and its lesion masks (empty in the test set)."""

    case_id: str
    t1: Path
    masks: Tuple[Path, ...]


def _bids_masks(t1: Path) -> Tuple[Path, ...]:
    stem = t1.name.split("_T1w.nii")[0]
    return tuple(sorted(p for p in t1.parent.iterdir()
                        if p.name.startswith(stem + "_") and "_label-L_desc-T1lesion_mask.nii" in p.name))


def _r12_masks(t1: Path, scan: str) -> Tuple[Path, ...]:
    return tuple(sorted(p for p in t1.parent.iterdir()
                        if p.name.lower().startswith(scan.lower() + "_lesionsmooth") and ".nii" in p.name.lower()))


def list_cases(root) -> List[ATLASCase]:
    """Every T1 scan under ``root`` (v2.0 BIDS or R1.2 layout) with its lesion masks, sorted by case id
    (BIDS: the file name up to _T1w, e.g. sub-r001s001_ses-1_space-MNI152NLin2009aSym; R1.2: c0001s0001t01).
    InputError when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"ATLAS folder not found: {root}")
    cases = []
    for t1 in root.rglob("*.nii*"):
        bids, r12 = _BIDS_T1.match(t1.name), _R12_T1.match(t1.name)
        if bids:
            cases.append(ATLASCase(t1.name.split("_T1w.nii")[0], t1, _bids_masks(t1)))
        elif r12:
            cases.append(ATLASCase(r12.group("scan"), t1, _r12_masks(t1, r12.group("scan"))))
    if not cases:
        raise InputError(f"{root}: no ATLAS T1 images found (v2.0 sub-*_T1w.nii.gz or R1.2 *_t1w_deface_stx.nii.gz)")
    return sorted(cases, key=lambda c: (c.case_id, str(c.t1)))


def load_case(case: ATLASCase) -> Dict[str, object]:
    """One scan (from :func:`list_cases`) as a dict: ``case_id``; ``t1``: (z, y, x) float32 (scanner units);
    ``lesion``: (z, y, x) bool, the union of its masks, or None without masks (test set); ``geometry``:
    VolumeGeometry (spacing (x, y, z) mm). InputError (naming the file) for unreadable files or a mask on
    another grid than the T1."""
    t1, geometry = read_volume(case.t1)
    lesion = None
    for path in case.masks:
        mask, g = read_volume(path)
        if mask.shape != t1.shape or not g.matches(geometry, tol=1e-2):
            raise InputError(f"ATLAS {case.case_id}: the mask {path.name} (shape {mask.shape}, spacing "
                             f"{g.spacing_mm} mm) lies on another grid than the T1 (shape {t1.shape}, spacing "
                             f"{geometry.spacing_mm} mm)")
        lesion = mask > 0 if lesion is None else lesion | (mask > 0)
    return {"case_id": case.case_id, "t1": t1.astype(np.float32), "lesion": lesion, "geometry": geometry}
