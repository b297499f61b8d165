"""Healthy-tissue accuracy of the maps against the phantom's truth, with the true AIF, seed by seed (a script,
not part of the test suite).

    python Testing/benchmarks/bench_phantom_accuracy.py                  # seeds 0-5, osvd and bayes side by side
    python Testing/benchmarks/bench_phantom_accuracy.py --seeds 0 2 --methods osvd

For each seed (ISLES-like default size) and method, two conditions:

- ``noise 0, smooth 0``: noise-free curves and no spatial smoothing. What is left is the deconvolution's own
  bias: regularisation (a zero-phase low-pass filter of k(t), which rounds the residue's onset, lowers its
  maximum and moves it late) and the phantom's dispersion (the tissue sees F (h_disp (x) R), whose maximum
  is below F).
- ``noise 5, smooth 3``: the default phantom noise (5 HU) and the pipeline's default denoising (3 mm,
  :mod:`AIFSelectorLib.prepare.denoising`), i.e. what Testing/maps/test_phantom_accuracy.py measures.

Prints, per row, the residue shape the seed drew, the median signed errors in healthy grey and white matter
(CBF, CBV, MTT relative; Tmax in seconds), the core and penumbra Dice and volumes against the truth's, the maps'
seconds and, for the Bayesian method, the fraction of healthy voxels whose true CBF lies in the 95 % interval;
then which rows meet the acceptance limits (CBF and CBV within 10 %, MTT within 15 %, Tmax within 1 s, both
Dice >= 0.90), and the README's table of volumes, seed by seed.
"""
import argparse
import time

import numpy as np

from AIFSelectorLib.constants import DENOISE_SIGMA_MM
from AIFSelectorLib.input_functions.functions import InputFunctions
from AIFSelectorLib.maps.compute import compute_maps
from AIFSelectorLib.prepare.prepared import prepare
from AIFSelectorLib.phantom.case import make_phantom
from AIFSelectorLib.thresholds.decision import decide
from StrokeLesionLib.case.truth_comparison import GM, WM, dice, healthy_tissue_errors

CONDITIONS = ((0.0, 0.0), (5.0, DENOISE_SIGMA_MM))
"""(noise SD [HU], denoising scale [mm]; 0: raw curves)."""
SHORT = {"grey_matter": "GM", "white_matter": "WM"}


def measure(seed: int, noise_hu: float, smooth_mm: float, method: str) -> dict:
    """Median healthy-tissue errors and Dice for one phantom case and method, with the true AIF/VOF."""
    case = make_phantom(seed=seed, noise_hu=noise_hu)
    prepared = prepare(case.series)
    functions = InputFunctions(case.series.times_s, case.aif_hu, case.vof_hu, method="file")
    start = time.perf_counter()
    maps = compute_maps(prepared, functions, method=method, smooth_mm=smooth_mm)
    seconds = time.perf_counter() - start
    voxel_ml = case.series.geometry.voxel_volume_ml
    core, pen = decide(maps.maps["rcbf"], maps.maps["tmax"], maps.tissue, voxel_ml)
    truth = case.truth
    row = {"seed": seed, "shape": case.params["residue_shape"], "noise": noise_hu, "smooth": smooth_mm,
           "method": method, "core": dice(core, truth["core"]), "pen": dice(pen, truth["penumbra"]),
           "core_ml": core.sum() * voxel_ml, "pen_ml": pen.sum() * voxel_ml, "seconds": seconds,
           "true_core_ml": truth["core"].sum() * voxel_ml, "true_pen_ml": truth["penumbra"].sum() * voxel_ml}
    if "cbf_sd" in maps.maps:
        where = maps.tissue & truth["tissue_mask"] & ((truth["labels"] == GM) | (truth["labels"] == WM))
        row["covered"] = float(np.mean(np.abs(maps.maps["cbf"][where] - truth["cbf"][where])
                                       <= 1.96 * maps.maps["cbf_sd"][where]))
    for name, e in healthy_tissue_errors(maps.maps, maps.tissue, case.truth).items():
        row[SHORT[name]] = {"cbf": e["cbf"]["median_rel_error"], "cbv": e["cbv"]["median_rel_error"],
                     "mtt": e["mtt"]["median_rel_error"], "tmax": e["tmax"]["median_error_s"]}
    return row


def meets_limits(row: dict) -> bool:
    """The acceptance limits of the perfusion-engine issue for one row."""
    maps_ok = all(abs(row[t]["cbf"]) <= 0.10 and abs(row[t]["cbv"]) <= 0.10 and abs(row[t]["mtt"]) <= 0.15
                  and abs(row[t]["tmax"]) <= 1.0 for t in ("GM", "WM"))
    return maps_ok and row["core"] >= 0.90 and row["pen"] >= 0.90


def format_row(row: dict) -> str:
    tissue = " | ".join(f"{t} CBF {row[t]['cbf']:+6.1%} CBV {row[t]['cbv']:+6.1%} MTT {row[t]['mtt']:+6.1%} "
                        f"Tmax {row[t]['tmax']:+5.2f} s" for t in ("GM", "WM"))
    return (f"seed {row['seed']} {row['shape']:<11} noise {row['noise']:g} smooth {row['smooth']:g} "
            f"{row['method']:<8} | {tissue} | Dice core {row['core']:.3f} pen {row['pen']:.3f} | core "
            f"{row['core_ml']:.1f} pen {row['pen_ml']:.1f} ml (truth {row['true_core_ml']:.1f}, "
            f"{row['true_pen_ml']:.1f}) | {row['seconds']:.1f} s"
            + (f" | CBF 95 % covers {row['covered']:.2f}" if "covered" in row else "")
            + f" | {'meets' if meets_limits(row) else 'misses'}")


def volume_table(rows) -> str:
    """Markdown: per seed of the default condition, the truth's core/penumbra (ml) and each method's, with Dice."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    head = "| seed (residue) | truth core / penumbra ml | " + " | ".join(f"{m} core / penumbra ml (Dice)"
                                                                       for m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    for seed in dict.fromkeys(r["seed"] for r in rows):
        by = {r["method"]: r for r in rows if r["seed"] == seed}
        first = next(iter(by.values()))
        cells = [f"{by[m]['core_ml']:.1f} ({by[m]['core']:.2f}) / {by[m]['pen_ml']:.1f} ({by[m]['pen']:.2f})"
                 for m in methods]
        lines.append(f"| {seed} ({first['shape']}) | {first['true_core_ml']:.1f} / {first['true_pen_ml']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(6)))
    ap.add_argument("--methods", nargs="+", default=["osvd", "bayes"])
    ap.add_argument("--default-only", action="store_true", help="only the default noise and denoising")
    args = ap.parse_args()
    start = time.perf_counter()
    rows = []
    conditions = CONDITIONS[1:] if args.default_only else CONDITIONS
    for seed in args.seeds:
        for noise_hu, smooth_mm in conditions:
            for method in args.methods:
                rows.append(measure(seed, noise_hu, smooth_mm, method))
                print(format_row(rows[-1]), flush=True)
    for noise_hu, smooth_mm in conditions:
        sub = [r for r in rows if (r["noise"], r["smooth"]) == (noise_hu, smooth_mm)]
        print(f"noise {noise_hu:g} HU, smooth {smooth_mm:g} mm: {sum(map(meets_limits, sub))} of {len(sub)} rows "
              f"meet every limit")
    print(volume_table([r for r in rows if (r["noise"], r["smooth"]) == CONDITIONS[1]]))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
