"""Agreement of a batch with a public set's own maps and labels (``strokelesion batch --reference isles2018``).

ISLES 2018 ships, per case, the scanner software's CBF, CBV, MTT and Tmax maps and, for training cases, the
infarct core traced on DWI (OT). For each case done, from the dataset's maps under the same rule as ours
(rCBF against control tissue with Tmax below the threshold, core: rCBF < the core threshold inside Tmax > the
Tmax threshold, islands removed): the reference core and Tmax > 6 s volumes; and, where OT exists, the Dice of
our core and of the reference core against it, and the volume differences (ml, ours minus OT).

Over the cohort, for core and Tmax > 6 s volumes (ours against the reference): ICC(A,1) (two-way random,
absolute agreement, single measure: Shrout & Fleiss 1979, McGraw & Wong 1996), Bland-Altman bias and 95 %
limits of agreement (bias +/- 1.96 SD of the differences; Bland & Altman 1986), and the median Dice against OT.
Written as ``agreement.csv`` (per case), ``agreement_summary.csv`` (per measure) and ``agreement.png``
(Bland-Altman and scatter plots), each atomically.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.isles2018 import isles2018_case
from AIFSelectorLib.io.volume_io import atomic_path, read_volume
from AIFSelectorLib.maps.perfusion_maps import relative_maps
from AIFSelectorLib.thresholds.decision import Thresholds, decide

from StrokeLesionLib.case.batch import write_csv
from StrokeLesionLib.metrics import dice

REFERENCES = ("isles2018",)
CASE_COLUMNS = ("case_id", "core_ml", "reference_core_ml", "tmax6_ml", "reference_tmax6_ml", "ot_ml",
                "core_dice_vs_ot", "reference_core_dice_vs_ot", "core_minus_ot_ml", "reference_core_minus_ot_ml")
SUMMARY_COLUMNS = ("measure", "n_cases", "icc_a1", "bias_ml", "loa_low_ml", "loa_high_ml", "median_dice_vs_ot")


def reference_masks(case_folder: Path, thresholds: Thresholds) -> Dict[str, np.ndarray]:
    """The dataset's core and Tmax > threshold masks (from its CT_CBF, CT_CBV, CT_Tmax under our rule), its
    OT when present, and the voxel volume (ml), for an ISLES 2018 case folder."""
    paths = isles2018_case(case_folder)
    missing = [m for m in ("CT_CBF", "CT_CBV", "CT_Tmax") if m not in paths]
    if missing:
        raise InputError(f"{case_folder.name}: no {', '.join(missing)} map to compare with")
    maps, geometry = {}, None
    for key, modality in (("cbf", "CT_CBF"), ("cbv", "CT_CBV"), ("tmax", "CT_Tmax")):
        values, g = read_volume(paths[modality])
        maps[key] = np.nan_to_num(np.asarray(values, np.float32))
        geometry = geometry or g
    tissue = (maps["cbf"] > 0) | (maps["tmax"] > 0)
    relative_maps(maps, tissue, thresholds.tmax_s)
    core, penumbra = decide(maps["rcbf"], maps["tmax"], tissue, geometry.voxel_volume_ml, thresholds)
    out = {"core": core, "tmax": (maps["tmax"] > thresholds.tmax_s) & tissue, "voxel_ml": geometry.voxel_volume_ml}
    if "OT" in paths:
        out["ot"] = read_volume(paths["OT"])[0] > 0
    return out


def case_agreement(case_id: str, case_folder: Path, output_folder: Path, thresholds: Thresholds) -> dict:
    """One row of agreement.csv for a case done (its `run` output in ``output_folder``)."""
    ref = reference_masks(Path(case_folder), thresholds)
    ours_core = read_volume(output_folder / "core.nii.gz")[0] > 0
    ours_tmax = read_volume(output_folder / "tmax.nii.gz")[0] > thresholds.tmax_s
    if ours_core.shape != ref["core"].shape:
        raise InputError(f"{case_id}: the dataset's maps ({ref['core'].shape}) and the CTP's grid "
                         f"({ours_core.shape}) differ")
    ml = ref["voxel_ml"]
    row = {"case_id": case_id, "core_ml": ours_core.sum() * ml, "reference_core_ml": ref["core"].sum() * ml,
           "tmax6_ml": ours_tmax.sum() * ml, "reference_tmax6_ml": ref["tmax"].sum() * ml}
    if "ot" in ref:
        ot = ref["ot"]
        row.update({"ot_ml": ot.sum() * ml, "core_dice_vs_ot": dice(ours_core, ot),
                    "reference_core_dice_vs_ot": dice(ref["core"], ot),
                    "core_minus_ot_ml": (ours_core.sum() - ot.sum()) * ml,
                    "reference_core_minus_ot_ml": (ref["core"].sum() - ot.sum()) * ml})
    return {k: (round(float(v), 4) if isinstance(v, (float, np.floating, np.integer)) else v) for k, v in row.items()}


def icc_a1(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """ICC(A,1) of two raters' measurements of n subjects (two-way random effects, absolute agreement,
    single measure), from the two-way ANOVA mean squares: (MSR - MSE) / (MSR + MSE + 2 (MSC - MSE) / n).
    None for fewer than 2 subjects."""
    data = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    n, k = data.shape
    if n < 2:
        return None
    grand = data.mean()
    ss_rows = k * ((data.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((data.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((data - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    return None if denominator <= 0 else float((msr - mse) / denominator)


def bland_altman(x: Sequence[float], y: Sequence[float]) -> Dict[str, float]:
    """Bias (mean of x - y) and 95 % limits of agreement (bias +/- 1.96 SD, ddof 1)."""
    d = np.asarray(x, float) - np.asarray(y, float)
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    bias = float(d.mean()) if d.size else float("nan")
    return {"bias_ml": bias, "loa_low_ml": bias - 1.96 * sd, "loa_high_ml": bias + 1.96 * sd}


def cohort_summary(rows: List[dict]) -> List[dict]:
    out = []
    for measure, ours, reference in (("core", "core_ml", "reference_core_ml"),
                                     ("tmax_over_threshold", "tmax6_ml", "reference_tmax6_ml")):
        x = [r[ours] for r in rows]
        y = [r[reference] for r in rows]
        dices = [r["core_dice_vs_ot"] for r in rows if measure == "core" and "core_dice_vs_ot" in r]
        icc = icc_a1(x, y)
        out.append({"measure": measure, "n_cases": len(rows), "icc_a1": None if icc is None else round(icc, 4),
                    **{k: round(v, 3) for k, v in bland_altman(x, y).items()},
                    "median_dice_vs_ot": round(float(np.median(dices)), 4) if dices else None})
    return out


def plot_agreement(path: Path, rows: List[dict], summary: List[dict]) -> None:
    """Bland-Altman (difference against mean) and scatter (ours against the reference) for core and Tmax."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for col, (measure, ours, reference, label) in enumerate((
            ("core", "core_ml", "reference_core_ml", "core (ml)"),
            ("tmax_over_threshold", "tmax6_ml", "reference_tmax6_ml", "Tmax > threshold (ml)"))):
        x = np.array([r[ours] for r in rows], float)
        y = np.array([r[reference] for r in rows], float)
        stats = next(s for s in summary if s["measure"] == measure)
        ax = axes[0, col]
        ax.scatter((x + y) / 2, x - y, s=18)
        for value, style in ((stats["bias_ml"], "-"), (stats["loa_low_ml"], "--"), (stats["loa_high_ml"], "--")):
            ax.axhline(value, color="gray", ls=style, lw=1)
        ax.set_xlabel(f"mean of both, {label}")
        ax.set_ylabel(f"strokelesion - dataset, {label}")
        ax.set_title(f"Bland-Altman: bias {stats['bias_ml']:.1f} ml, LoA {stats['loa_low_ml']:.1f} to "
                     f"{stats['loa_high_ml']:.1f}", fontsize=10)
        ax = axes[1, col]
        ax.scatter(y, x, s=18)
        top = float(max(x.max(initial=0), y.max(initial=0))) * 1.05 or 1.0
        ax.plot([0, top], [0, top], color="gray", lw=1)
        ax.set_xlabel(f"dataset's maps, {label}")
        ax.set_ylabel(f"strokelesion, {label}")
        icc = "n/a" if stats["icc_a1"] is None else f"{stats['icc_a1']:.3f}"
        dice_text = (f", median Dice vs OT {stats['median_dice_vs_ot']:.2f}"
                     if stats["median_dice_vs_ot"] is not None else "")
        ax.set_title(f"ICC(A,1) {icc}, n = {stats['n_cases']}{dice_text}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def write_agreement(out: Path, cases, rows_by_id: Dict[str, dict], thresholds: Thresholds,
                    reference: str = "isles2018") -> List[dict]:
    """agreement.csv, agreement_summary.csv and agreement.png in ``out`` for the cases done; returns the
    summary. Cases whose reference cannot be read are left out with their reason in agreement.csv."""
    if reference not in REFERENCES:
        raise InputError(f"unknown reference {reference!r}: use one of {', '.join(REFERENCES)}")
    rows, skipped = [], []
    for case in cases:
        if rows_by_id.get(case.case_id, {}).get("status") != "done":
            continue
        try:
            rows.append(case_agreement(case.case_id, Path(case.input), Path(out) / case.case_id, thresholds))
        except (InputError, OSError, ValueError) as e:  # one case's unreadable files cost only its own row
            skipped.append({"case_id": case.case_id, "note": str(e).splitlines()[0] if str(e) else type(e).__name__})
    summary = cohort_summary(rows) if rows else []
    write_csv(Path(out) / "agreement.csv", rows + skipped, CASE_COLUMNS + ("note",))
    write_csv(Path(out) / "agreement_summary.csv", summary, SUMMARY_COLUMNS)
    if rows:
        plot_agreement(Path(out) / "agreement.png", rows, summary)
    return summary
