"""Held-out evaluation of AIFNet against the classic selector on phantom cases never used in training.

    python -m training.aifnet.evaluate [--n-cases 20] [--size full|small] [--models DIR] [--json OUT]

For every case (seeds 9000+): AIF and VOF from AIFNet and from the classic selector, compared with the
phantom's true curves (Pearson r, |Tpeak error|, FWHM error, PTB error, MSE), then perfusion maps from
each method's curves compared with the maps from the true curves (Pearson r of CBF, CBV, MTT, Tmax over
tissue; core Dice and core volume). Prints the tables (mean, sd, 5th and 95th percentile).
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from .data import EVAL_SEED0, phantom_kwargs
from StrokeLesionLib.metrics import dice

from .metrics import curve_metrics, pearson, summary

MAPS = ("cbf", "cbv", "mtt", "tmax")
CURVE_KEYS = ("r", "tpeak_err_s", "fwhm_err_s", "ptb_err_hu", "mse_hu2")


def _maps_and_core(prepared, functions, method):
    from AIFSelectorLib.maps.compute import compute_maps
    from AIFSelectorLib.thresholds.decision import Thresholds, decide
    maps = compute_maps(prepared, functions, method=method)
    voxel_ml = prepared.series.geometry.voxel_volume_ml
    core, _ = decide(maps.maps["rcbf"], maps.maps["tmax"], maps.tissue, voxel_ml, Thresholds())
    return maps, core, float(core.sum() * voxel_ml)


def evaluate_case(seed: int, size: str = "full", device="auto", models=None, method="osvd") -> Dict:
    from AIFSelectorLib.input_functions.classic import select_classic
    from AIFSelectorLib.input_functions.aifnet.inference import select_aifnet
    from AIFSelectorLib.input_functions.functions import InputFunctions
    from AIFSelectorLib.prepare.prepared import prepare
    from AIFSelectorLib.phantom.case import make_phantom

    kw = phantom_kwargs(seed, small=(size == "small"))
    kw["n_frames"] = 48
    kw["noise_hu"] = 5.0
    case = make_phantom(seed, **kw)
    series = case.series
    prepared = prepare(series)
    n0, dt = prepared.bolus.n_baseline, series.dt_s
    t0 = time.perf_counter()
    classic = select_classic(series, prepared.intracranial, prepared.baseline_hu, prepared.peak_enh_hu)
    t_classic = time.perf_counter() - t0
    t0 = time.perf_counter()
    net = select_aifnet(series, device=device, folder=models, n_baseline=n0, peak_enh_hu=prepared.peak_enh_hu,
                        classic=lambda: classic)
    t_net = time.perf_counter() - t0
    truth = InputFunctions(times_s=series.times_s, aif_hu=np.asarray(case.aif_hu, float),
                           vof_hu=np.asarray(case.vof_hu, float), method="file")
    ref_maps, ref_core, ref_core_ml = _maps_and_core(prepared, truth, method)
    out = {"seed": seed, "shape_tzyx": list(series.data.shape), "true_core_ml": ref_core_ml}
    for name, f, secs in (("aifnet", net, t_net), ("classic", classic, t_classic)):
        res = {"seconds": secs, "warnings": list(f.warnings),
               "aif": curve_metrics(f.aif_hu, case.aif_hu, dt, n0),
               "vof": curve_metrics(f.vof_hu, case.vof_hu, dt, n0) if f.vof_hu is not None else None}
        maps, core, core_ml = _maps_and_core(prepared, f, method)
        both = maps.tissue & ref_maps.tissue
        res["maps_r"] = {m: pearson(maps.maps[m][both], ref_maps.maps[m][both]) for m in MAPS}
        res["core_dice"] = dice(core, ref_core)
        res["core_ml"] = core_ml
        res["core_rel_err"] = (core_ml - ref_core_ml) / ref_core_ml if ref_core_ml > 0 else float("nan")
        out[name] = res
    return out


def tables(cases: List[Dict]) -> Dict:
    """Summaries {method: {section: {metric: summary}}}."""
    out = {}
    for m in ("aifnet", "classic"):
        t = {}
        for fn in ("aif", "vof"):
            t[fn] = {k: summary([c[m][fn][k] if c[m][fn] else np.nan for c in cases]) for k in CURVE_KEYS}
        t["maps_r"] = {k: summary([c[m]["maps_r"][k] for c in cases]) for k in MAPS}
        t["core"] = {"dice": summary([c[m]["core_dice"] for c in cases]),
                     "abs_rel_volume_err": summary([abs(c[m]["core_rel_err"]) for c in cases]),
                     "rel_volume_err": summary([c[m]["core_rel_err"] for c in cases])}
        t["seconds"] = summary([c[m]["seconds"] for c in cases])
        out[m] = t
    return out


def format_tables(t: Dict) -> str:
    lines = []
    head = f"{'':26s}{'AIFNet mean (sd) [p5, p95]':>38s}   {'classic mean (sd) [p5, p95]':>38s}"

    def row(label, a, c):
        f = lambda s: f"{s['mean']:9.4g} ({s['sd']:.3g}) [{s['p5']:.4g}, {s['p95']:.4g}]"  # noqa: E731
        return f"{label:26s}{f(a):>38s}   {f(c):>38s}"
    for fn, title in (("aif", "AIF vs true curve"), ("vof", "VOF vs true curve")):
        lines += ["", title, head]
        for k in CURVE_KEYS:
            lines.append(row(k, t["aifnet"][fn][k], t["classic"][fn][k]))
    lines += ["", "Maps vs maps from the true curves (Pearson r over tissue)", head]
    for k in MAPS:
        lines.append(row(k, t["aifnet"]["maps_r"][k], t["classic"]["maps_r"][k]))
    lines += ["", "Core (rCBF < 38 % in Tmax > 6 s) vs core from the true curves", head]
    for k in ("dice", "abs_rel_volume_err", "rel_volume_err"):
        lines.append(row(k, t["aifnet"]["core"][k], t["classic"]["core"][k]))
    lines += ["", head, row("selection time (s)", t["aifnet"]["seconds"], t["classic"]["seconds"])]
    return "\n".join(lines)


def acceptance(t: Dict, cases: List[Dict]) -> Dict[str, bool]:
    a = t["aifnet"]
    return {"aif_r_mean>=0.97": a["aif"]["r"]["mean"] >= 0.97,
            "aif_r_p5>=0.90": a["aif"]["r"]["p5"] >= 0.90,
            "aif_tpeak_err_mean<=1s": a["aif"]["tpeak_err_s"]["mean"] <= 1.0,
            "vof_r_mean>=0.98": a["vof"]["r"]["mean"] >= 0.98,
            "core_volume_within_10pct": bool(abs(np.sum([c["aifnet"]["core_ml"] for c in cases])
                                                 - np.sum([c["true_core_ml"] for c in cases]))
                                             <= 0.10 * np.sum([c["true_core_ml"] for c in cases])),
            "core_volume_within_10pct_every_case": all(abs(c["aifnet"]["core_rel_err"]) <= 0.10
                                                       for c in cases if np.isfinite(c["aifnet"]["core_rel_err"])),
            "aifnet_beats_classic_on_aif_r": a["aif"]["r"]["mean"] > t["classic"]["aif"]["r"]["mean"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.aifnet.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--n-cases", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=EVAL_SEED0)
    p.add_argument("--size", choices=("full", "small"), default="full",
                   help="full: the default 8x256x256 phantom; small: 4-8 x 96-128^2 (faster)")
    p.add_argument("--models", type=Path, help="folder with aifnet_*.pt + manifest.json (default: shipped)")
    p.add_argument("--device", default="auto")
    p.add_argument("--method", default="osvd")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="write per-case results and tables here")
    args = p.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    cases = []
    t0 = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.n_cases):
        c = evaluate_case(seed, args.size, args.device, args.models, args.method)
        cases.append(c)
        print(f"seed {seed}: AIF r aifnet {c['aifnet']['aif']['r']:.4f} classic {c['classic']['aif']['r']:.4f} | "
              f"VOF r {c['aifnet']['vof']['r']:.4f} | core ml true {c['true_core_ml']:.1f} "
              f"aifnet {c['aifnet']['core_ml']:.1f} classic {c['classic']['core_ml']:.1f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    t = tables(cases)
    print(format_tables(t))
    acc = acceptance(t, cases)
    print("\nAcceptance: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in acc.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"size": args.size, "seeds": [args.first_seed, args.first_seed + args.n_cases - 1],
                                         "tables": t, "acceptance": acc, "cases": cases}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
