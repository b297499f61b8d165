"""AISD (acute ischemic stroke dataset, Liang et al., MICCAI 2021: non-contrast CT, 397 scans) reader, on
a local copy of the public release (github.com/GriffinLiang/AISD: image.zip, mask.zip, dicom-0..3.tar.gz).

Layout of the unpacked release (the zip files may add one more level: ``image/image/<id>``)::

    AISD/image/<case_id>/000.png 001.png ...         windowed 8-bit renders of the NCCT slices
    AISD/mask/<case_id>/000.png 001.png ...          lesion labels per slice (0 = background, 1-5 labels)
    AISD/dicom-0/<case_id>/CT/*.dcm                  the NCCT series in HU (dicom-1, -2, -3 alike; the
                                                     case folder may hold other series, e.g. DWI/)

The HU images come from the DICOM series (the PNG renders are windowed, not HU). A case whose CT was
converted to NIfTI may give ``image/<case_id>.nii.gz`` (or one .nii/.nii.gz in ``image/<case_id>/``)
instead, and its mask as ``mask/<case_id>.nii.gz``.

Slice order: the DICOM series is read in spatial order (SimpleITK/GDCM sorts the slices along their
normal). The release does not say in which order its PNG slices are numbered, so the mask stack is put
in the order (as numbered, or reversed) in which the image renders correlate best with the HU slices;
without renders the numbering is taken as the spatial order.
"""
import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.volume_io import geometry_of, read_dicom_series, read_volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_PNG_NUMBER = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


class AISDCase(NamedTuple):
    """The files of one case: ``ct`` is a DICOM folder or a NIfTI file, ``mask`` a folder of PNG slices
    or a NIfTI file, ``renders`` the folder of windowed PNG renders (or None)."""

    case_id: str
    ct: Path
    mask: Path
    renders: Optional[Path]


def _unnest(folder: Path) -> Path:
    """image/image -> image (zip files that hold their own top folder)."""
    inner = folder / folder.name
    return inner if inner.is_dir() else folder


def _nifti_in(path: Path, case_id: str) -> Optional[Path]:
    for suffix in NIFTI_SUFFIXES:
        if (path / f"{case_id}{suffix}").is_file():
            return path / f"{case_id}{suffix}"
    folder = path / case_id
    if folder.is_dir():
        images = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES)]
        if len(images) == 1:
            return images[0]
    return None


def _dicom_ct_folders(root: Path) -> Dict[str, Path]:
    """case_id -> its CT DICOM folder, from dicom-*/<case_id>/CT (one extra nesting level allowed)."""
    found: Dict[str, Path] = {}
    for top in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("dicom")):
        for ct in sorted(list(top.glob("*/CT")) + list(top.glob("*/*/CT"))):
            if ct.is_dir():
                found.setdefault(ct.parent.name, ct)
    return found


def list_cases(root) -> List[AISDCase]:
    """Every case of the release under ``root`` that has a mask, sorted by case id. InputError when
    ``root`` has no mask/ folder, or a masked case has no CT (DICOM series or NIfTI)."""
    root = Path(root)
    if not (root / "mask").is_dir():
        raise InputError(f"{root}: not an AISD folder (expected mask/<case_id>/ and dicom-*/<case_id>/CT/)")
    masks = _unnest(root / "mask")
    images = _unnest(root / "image") if (root / "image").is_dir() else None
    dicom = _dicom_ct_folders(root)
    cases = []
    ids = sorted({p.name.split(".nii")[0] for p in masks.iterdir()
                  if p.is_dir() or p.name.lower().endswith(NIFTI_SUFFIXES)})
    for case_id in ids:
        mask = masks / case_id if _png_files(masks / case_id) else _nifti_in(masks, case_id)
        if mask is None:
            raise InputError(f"AISD case {case_id}: mask/{case_id} holds no PNG slices or NIfTI mask")
        ct = dicom.get(case_id) or (_nifti_in(images, case_id) if images is not None else None)
        if ct is None:
            raise InputError(f"AISD case {case_id}: no CT found (expected dicom-*/{case_id}/CT/*.dcm from the "
                             f"dicom tarballs, or image/{case_id}.nii.gz)")
        renders = images / case_id if images is not None and _png_files(images / case_id) else None
        cases.append(AISDCase(case_id, ct, mask, renders))
    if not cases:
        raise InputError(f"{root}: no AISD cases found in {masks}")
    return cases


def _png_files(folder: Path) -> List[Path]:
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if _PNG_NUMBER.match(p.name)]
    return sorted(files, key=lambda p: int(_PNG_NUMBER.match(p.name).group(1)))


def _read_png_stack(folder: Path, case_id: str, what: str) -> np.ndarray:
    """(z, y, x) uint8 stack of the numbered PNG slices of ``folder`` (the first channel of colour PNGs)."""
    slices = []
    for path in _png_files(folder):
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            raise InputError(f"AISD case {case_id}: cannot read {what} slice {path.name}") from None
        array = sitk.GetArrayFromImage(image)
        slices.append(array[..., 0] if image.GetNumberOfComponentsPerPixel() > 1 else array)
    if not slices:
        raise InputError(f"AISD case {case_id}: no numbered PNG slices in {folder}")
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(f"AISD case {case_id}: the {what} PNG slices differ in size ({sorted(shapes)})")
    return np.stack(slices)


def _read_dicom_ct(folder: Path, case_id: str):
    """(z, y, x) float32 HU in spatial slice order, and its geometry, from the largest series in folder."""
    image = read_dicom_series(folder, f"AISD case {case_id}")
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise InputError(f"AISD case {case_id}: the DICOM series in {folder} is not a 3D CT volume")
    return sitk.GetArrayFromImage(image).astype(np.float32), geometry_of(image)


def _order_like_renders(hu: np.ndarray, renders: np.ndarray) -> bool:
    """True when the numbered renders run against the HU slice order (their correlation is higher with
    the slices reversed)."""
    def corr(a, b):
        a = a.astype(np.float64).ravel() - a.mean()
        b = b.astype(np.float64).ravel() - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / den) if den > 0 else 0.0
    clipped = np.clip(hu, -100.0, 200.0)  # any brain window ranks the slices alike
    return corr(clipped[::-1], renders) > corr(clipped, renders)


def load_case(case: AISDCase, lesion_labels: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """One AISD case (from :func:`list_cases`) as a dict:

    - ``case_id``; ``ncct``: (z, y, x) float32 HU; ``geometry``: VolumeGeometry (spacing (x, y, z) mm);
    - ``labels``: (z, y, x) uint8, the release's label values (1-5; the release does not document their
      meaning, see its paper); ``lesion``: (z, y, x) bool, labels in ``lesion_labels`` (default: every
      non-zero label);
    - ``slices_reversed``: whether the PNG mask numbering runs against the spatial slice order.

    InputError (naming the case) for unreadable files or a mask whose size differs from the CT."""
    case_id = case.case_id
    if case.ct.is_dir():
        ncct, geometry = _read_dicom_ct(case.ct, case_id)
    else:
        ncct, geometry = read_volume(case.ct)
        ncct = ncct.astype(np.float32)
    reversed_order = False
    if case.mask.is_dir():
        labels = _read_png_stack(case.mask, case_id, "mask")
        if case.renders is not None:
            renders = _read_png_stack(case.renders, case_id, "image")
            if renders.shape == ncct.shape:
                reversed_order = _order_like_renders(ncct, renders)
        if reversed_order:
            labels = labels[::-1]
    else:
        labels, mask_geometry = read_volume(case.mask)
        if labels.shape == ncct.shape and not mask_geometry.matches(geometry, tol=1e-2):
            raise InputError(f"AISD case {case_id}: the mask {case.mask.name} lies on another grid than the CT")
    if labels.shape != ncct.shape:
        raise InputError(f"AISD case {case_id}: the mask has shape {labels.shape}, the CT {ncct.shape} (z, y, x)")
    if np.any(labels < 0) or labels.max() > 255:
        raise InputError(f"AISD case {case_id}: mask values outside 0-255")
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    lesion = labels > 0 if lesion_labels is None else np.isin(labels, list(lesion_labels))
    return {"case_id": case_id, "ncct": ncct, "labels": labels, "lesion": lesion, "geometry": geometry,
            "slices_reversed": reversed_order}

