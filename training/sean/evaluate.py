"""Held-out evaluation of SEAN and its ablations in the layout of the paper's results table, plus the
alignment angle error.

    python -m training.sean.evaluate [--models Resources/models] [--ablations DIR] [--n-cases 20] [--json OUT]

Held-out phantom seeds 30000+ (never trained on), each case through ``segment_sean`` exactly as inference
runs it (the mask on the input grid). Rows: SEAN (manifest entries 'sean' + 'sean_alignment' of
``--models``), w/o alignment ('sean_noalign') and w/o symmetry attention ('sean_selfattn': attention
within partitions only), the last two from ``--ablations`` (a folder with its own manifest, written by
``training.sean.reproduce``). Columns: Dice, precision, recall, HD95 (mm), ASSD (mm), relative volume
error, parameters; mean +/- sample SD over cases (``StrokeLesionLib.metrics``; undefined values,
e.g. distances of an empty prediction, are left out of that cell). The alignment rows give the absolute
error of the estimated rotation against the phantom's true head rotation (deg): of the network alone and
after the test-time refinement, when the shipped config uses one.
"""
import argparse
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data import EVAL_SEED0, phantom_cases
from training.lesion_data.evaluation_tables import summary, write_report

ROWS = (("SEAN", "sean", "models"), ("w/o alignment", "sean_noalign", "ablations"),
        ("w/o symmetry attention", "sean_selfattn", "ablations"))
"""(row label, manifest entry, folder argument)."""
SUMMARY_KEYS = ("dice", "precision", "recall", "hausdorff95_mm", "assd_mm", "relative_volume_error", "seconds")


def evaluate_model(name: str, folder: Optional[Path], cases: Sequence[dict]) -> Dict[str, object]:
    """Per-case metrics, estimated rotation and seconds of segmenter ``name`` (with 'sean_alignment')."""
    from StrokeLesionLib.metrics import segmentation_metrics
    from AIFSelectorLib.models.blocks import count_parameters
    from StrokeLesionLib.lesion_models.sean.inference import load_models, segment_sean
    (seg, seg_info), (align, _) = load_models(name, folder=folder)
    n_params = count_parameters(seg) + (count_parameters(align) if seg.config.aligned else 0)
    rows = []
    for c in cases:
        t0 = time.perf_counter()
        mask, _, info = segment_sean(c["ncct"], c["spacing_xyz"], device="cpu", folder=folder, model_name=name)
        seconds = time.perf_counter() - t0
        row = segmentation_metrics(mask, c["lesion"], c["spacing_xyz"])
        rows.append({"case": c["name"], "seconds": seconds, "rotation_deg": info["rotation_deg"],
                     "true_rotation_deg": c["angle_deg"], "n_parameters": n_params, **row})
    return {"name": name, "version": seg_info["version"], "sha256": seg_info["sha256"], "aligned": seg.config.aligned,
            "attention": seg.config.attention, "n_parameters": n_params, "cases": rows}


def angle_errors(folder: Optional[Path], cases: Sequence[dict]) -> Dict[str, dict]:
    """{'network': ..., 'refined': ...}: mean, max and SD of |estimated - true| rotation (deg)."""
    from StrokeLesionLib.lesion_models.sean.alignment import normalise_ncct
    from StrokeLesionLib.lesion_models.sean.inference import estimate_pose, load_models
    (seg, _), (align, _) = load_models(folder=folder)
    out = {}
    variants = [("network", 0)] + ([("refined", align.config.refine_steps)] if align.config.refine_steps else [])
    for label, steps in variants:
        err = []
        for c in cases:
            x, bg = normalise_ncct(c["ncct"], seg.config.hu_window)
            err.append(abs(estimate_pose(align, x, bg, c["spacing_xyz"][:2], refine_steps=steps)[0] - c["angle_deg"]))
        err = np.asarray(err)
        out[label] = {"mean_deg": float(err.mean()), "sd_deg": float(err.std(ddof=1)) if err.size > 1 else 0.0,
                      "max_deg": float(err.max()), "n": int(err.size), "refine_steps": int(steps)}
    return out


def format_tables(results: List[dict], angles: Dict[str, dict], seeds: Sequence[int]) -> str:
    from training.lesion_data.evaluation_tables import PARAMETERS_COLUMN, SEGMENTATION_COLUMNS, format_table
    rows = [(r["label"], r["cases"]) for r in results]
    text = format_table(rows, SEGMENTATION_COLUMNS + (PARAMETERS_COLUMN,),
                        title=f"SEAN results table layout - held-out NCCT phantom cases, seeds {seeds[0]}-{seeds[-1]} "
                              f"(n = {len(seeds)}, head rotation up to 15 deg), mean +/- sd")
    lines = [text, "Alignment: |estimated - true head rotation| (deg)"]
    for label, a in angles.items():
        extra = f", {a['refine_steps']} refinement steps" if a["refine_steps"] else ""
        lines.append(f"  {label:8s} mean {a['mean_deg']:.2f} +/- {a['sd_deg']:.2f}, max {a['max_deg']:.2f} "
                     f"(n = {a['n']}{extra})")
    return "\n".join(lines)


def main(argv=None) -> Dict[str, object]:
    p = argparse.ArgumentParser(prog="python -m training.sean.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=None, help="folder with manifest.json (default: the shipped models)")
    p.add_argument("--ablations", type=Path, default=None, help="folder with the ablation models and manifest")
    p.add_argument("--n-cases", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(max(1, args.threads))
    seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.n_cases))
    cases = phantom_cases(seeds)
    folders = {"models": args.models, "ablations": args.ablations}
    results = []
    for label, name, where in ROWS:
        if where == "ablations" and args.ablations is None:
            continue
        r = evaluate_model(name, folders[where], cases)
        r["label"] = label
        r["summary"] = summary(r["cases"], SUMMARY_KEYS)
        results.append(r)
    angles = angle_errors(args.models, cases)
    tables = format_tables(results, angles, seeds)
    print(tables)
    report = {"seeds": [seeds[0], seeds[-1]], "n_cases": len(seeds), "models": results, "angle_error": angles,
              "tables": tables}
    if args.json is not None:
        write_report(args.json, report)
    return report


if __name__ == "__main__":
    main()
