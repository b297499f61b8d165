"""Results of a phantom case beside its ground truth (the demo's printout, report.json's
'truth_comparison', and the accuracy tests).

Relative error of a map in a tissue class = median over its voxels of (estimate - truth) / truth
(signed: a bias), with the median of |estimate - truth| / truth beside it (spread). Tmax errors are in
seconds. Dice compares masks.
"""
from typing import Dict

import numpy as np

from AIFSelectorLib.phantom.anatomy import CSF, GM, WM

from StrokeLesionLib.metrics import dice


def map_errors(maps: Dict[str, np.ndarray], truth: Dict[str, np.ndarray], where: np.ndarray) -> dict:
    """Median signed and absolute relative errors of cbf, cbv, mtt and Tmax errors (s) over ``where``."""
    out = {}
    for k in ("cbf", "cbv", "mtt"):
        rel = (maps[k][where] - truth[k][where]) / truth[k][where]
        out[k] = {"median_rel_error": float(np.median(rel)), "median_abs_rel_error": float(np.median(np.abs(rel)))}
    d = maps["tmax"][where] - truth["tmax"][where]
    out["tmax"] = {"median_error_s": float(np.median(d)), "median_abs_error_s": float(np.median(np.abs(d)))}
    return out


HEALTHY = {"grey_matter": GM, "white_matter": WM}
"""Healthy tissue classes of the phantom's labels."""


def healthy_tissue_errors(maps: Dict[str, np.ndarray], tissue: np.ndarray, truth: Dict[str, np.ndarray]) -> dict:
    """{'grey_matter': map_errors, 'white_matter': map_errors} over the voxels of each class that are in both the
    maps' ``tissue`` and the truth's ``tissue_mask``."""
    where = np.asarray(tissue, bool) & truth["tissue_mask"]
    return {name: map_errors(maps, truth, where & (truth["labels"] == code)) for name, code in HEALTHY.items()}


def compare_with_truth(result, case) -> dict:
    """Volumes, Dice and map errors of a pipeline CaseResult against a PhantomCase's truth."""
    truth = case.truth
    voxel_ml = case.series.geometry.voxel_volume_ml
    truth_core, truth_pen = float(truth["core"].sum() * voxel_ml), float(truth["penumbra"].sum() * voxel_ml)
    lesion = None
    if getattr(result, "lesion", None) is not None:
        lesion = {"model": result.options.lesion_model, "estimate": round(float(result.lesion.sum() * voxel_ml), 2),
                  "truth": round(float(truth["lesion"].sum() * voxel_ml), 2), "dice": dice(result.lesion, truth["lesion"])}
    return {
        "core_ml": {"estimate": result.volumes["core_ml"], "truth": round(truth_core, 2)},
        "penumbra_ml": {"estimate": result.volumes["penumbra_ml"], "truth": round(truth_pen, 2)},
        "mismatch_ratio": {"estimate": result.volumes["mismatch_ratio"],
                           "truth": round((truth_core + truth_pen) / truth_core, 2) if truth_core else None},
        "dice": {"core": dice(result.core, truth["core"]), "penumbra": dice(result.penumbra, truth["penumbra"]),
                 "brain_parenchyma": dice(result.prepared.brain, truth["brain_mask"] & (truth["labels"] != CSF))},
        "healthy_tissue": healthy_tissue_errors(result.perfusion.maps, result.perfusion.tissue, truth),
        "aif_pvol_on_arteries": None if result.functions.aif_pvol is None
        else float(result.functions.aif_pvol[truth["artery_mask"]].sum()),
        "lesion_ml": lesion,
    }


def format_comparison(c: dict) -> str:
    """A table for the terminal."""
    def pct(x):
        return f"{100 * x:+.1f} %"
    ratio = c["mismatch_ratio"]
    lines = ["                     estimate      truth",
             f"core (ml)          {c['core_ml']['estimate']:9.1f}  {c['core_ml']['truth']:9.1f}   Dice {c['dice']['core']:.3f}",
             f"penumbra (ml)      {c['penumbra_ml']['estimate']:9.1f}  {c['penumbra_ml']['truth']:9.1f}   Dice {c['dice']['penumbra']:.3f}",
             "mismatch ratio     " + ("      n/a" if ratio["estimate"] is None else f"{ratio['estimate']:9.2f}")
             + ("        n/a" if ratio["truth"] is None else f"  {ratio['truth']:9.2f}"),
             *([f"lesion (ml, {c['lesion_ml']['model']:9s}) {c['lesion_ml']['estimate']:5.1f}  "
                f"{c['lesion_ml']['truth']:9.1f}   Dice {c['lesion_ml']['dice']:.3f}  (infarct as DWI shows it)"]
               if c.get("lesion_ml") else []),
             "healthy tissue, median error vs truth:"]
    for name, e in c["healthy_tissue"].items():
        lines.append(f"  {name:13s} CBF {pct(e['cbf']['median_rel_error'])}, CBV {pct(e['cbv']['median_rel_error'])}, "
                     f"MTT {pct(e['mtt']['median_rel_error'])}, Tmax {e['tmax']['median_error_s']:+.2f} s")
    if c["aif_pvol_on_arteries"] is not None:
        lines.append(f"AIF Pvol on true arteries: {100 * c['aif_pvol_on_arteries']:.0f} %")
    return "\n".join(lines)
