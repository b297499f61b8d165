"""The ISLES 2018 challenge layout: one folder per case with one folder (or file) per modality,
``case_N/SMIR.Brain.XX.O.<modality>.<id>/SMIR.Brain.XX.O.<modality>.<id>.nii``."""
import re
from pathlib import Path
from typing import Dict

from AIFSelectorLib.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")

ISLES2018_MODALITIES = ("CT", "CT_4DPWI", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "OT")
_ISLES_NAME = re.compile(r"^SMIR\.Brain\.[^.]+\.[^.]+\.(?P<mod>[A-Za-z0-9_]+)\.(?P<id>\d+)(?P<ext>\.nii(\.gz)?)?$",
                         re.IGNORECASE)
_ISLES_CANONICAL = {m.upper(): m for m in ISLES2018_MODALITIES}


def isles_entries(folder: Path):
    """(modality, entry) for every ``SMIR.Brain.*.<modality>.<id>`` folder (or .nii file) in ``folder``."""
    entries = []
    for entry in sorted(folder.iterdir()):
        m = _ISLES_NAME.match(entry.name)
        if not m or (entry.is_file() and not m.group("ext")) or (entry.is_dir() and m.group("ext")):
            continue
        modality = _ISLES_CANONICAL.get(m.group("mod").upper())
        if modality:
            entries.append((modality, entry))
    return entries


def isles2018_case(folder) -> Dict[str, Path]:
    """The image file of every modality in an ISLES 2018 case folder, keyed by modality name
    (CT, CT_4DPWI, CT_CBF, CT_CBV, CT_MTT, CT_Tmax and, in training cases, OT, the lesion mask).

    Layout: ``case_N/SMIR.Brain.XX.O.<modality>.<id>/SMIR.Brain.XX.O.<modality>.<id>.nii``
    (``.nii.gz`` and files lying directly in the case folder are accepted too)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"ISLES 2018 case folder not found: {folder}")
    found: Dict[str, Path] = {}
    for modality, entry in isles_entries(folder):
        if entry.is_dir():
            images = sorted(p for p in entry.iterdir() if p.is_file()
                            and p.name.lower().endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
            named = [p for p in images if p.name.split(".nii")[0] == entry.name]
            images = named or images
            if len(images) != 1:
                raise InputError(f"{folder.name}/{entry.name}: expected one .nii image, found {len(images)}")
            image = images[0]
        else:
            image = entry
        if modality in found:
            raise InputError(f"{folder.name}: two {modality} images ({found[modality].name}, {image.name})")
        found[modality] = image
    if not found:
        raise InputError(f"{folder}: not an ISLES 2018 case folder (no SMIR.Brain.*.<modality>.<id> entries)")
    return found
