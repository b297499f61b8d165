"""OSIPI's osipy (0.1.4, PyPI, Python >= 3.12) as a whole process on the benchmark's case: read the CTP and the
AIF, convert to enhancement, oSVD maps (CBF, CBV, MTT, Tmax) in the mask, write them as NIfTI. Run by
bench_pipeline.py with an interpreter that has osipy (not imported by the project).

    python3.12 osipy_maps.py CTP.nii.gz AIF.csv MASK.nii.gz OUT_DIR
"""
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from osipy.dsc.parameters import compute_perfusion_maps


def main(ctp, aif_csv, mask_path, out):
    image = nib.load(ctp)
    data = np.asarray(image.dataobj, dtype=np.float32)  # (x, y, z, t)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    table = np.loadtxt(aif_csv, delimiter=",", skiprows=1)
    time, aif = table[:, 0], table[:, 1]
    n0 = 8  # pre-contrast frames, as our phantom's bolus arrives after 10 s
    tissue = data - data[..., :n0].mean(axis=-1, keepdims=True)
    maps = compute_perfusion_maps(tissue, aif - aif[:n0].mean(), time, mask=mask, deconvolution_method="oSVD")
    Path(out).mkdir(parents=True, exist_ok=True)
    for name in ("cbf", "cbv", "mtt", "tmax"):
        values = getattr(maps, name, None)
        if values is not None:
            values = getattr(values, "values", values)  # a ParameterMap
            nib.save(nib.Nifti1Image(np.asarray(values, np.float32), image.affine), str(Path(out) / f"{name}.nii.gz"))


if __name__ == "__main__":
    main(*sys.argv[1:5])
