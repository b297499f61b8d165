"""Held-out evaluation of pseudo-DWI + SLNet and the maps-only SLNet in the layout of the paper's Table 5.

    python -m training.pseudodwi.evaluate [--models Resources/models] [--names slnet_maps pseudodwi]
        [--n-cases 20] [--json OUT.json]

Held-out phantom seeds 30000+ (never trained on), through the perfusion pipeline exactly as inference
sees them. Rows: the networks named (manifest entries of ``--models``: the shipped ones, or a training
folder holding ablations); columns: Dice, precision, recall, Hausdorff distance (mm), ASSD (mm), relative
volume error, mean (SD) over cases (``StrokeLesionLib.metrics``; undefined values, e.g. distances
of an empty prediction, left out of that column's mean). A second table gives the synthesis quality of the
pseudo DWI against the phantom's DWI: SSIM and PSNR, global and lesion-local (the lesion's bounding box).
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

from .data import EVAL_SEED0, cached_phantoms
from training.lesion_data.evaluation_tables import summary, write_report

SUMMARY_KEYS = ("dice", "precision", "recall", "hausdorff_mm", "hausdorff95_mm", "assd_mm", "relative_volume_error",
                "ssim", "psnr_db", "ssim_lesion", "psnr_lesion_db", "network_seconds")
ROW_LABELS = {"slnet_maps": "SLNet on CTP maps only", "pseudodwi": "pseudo-DWI + SLNet"}


def evaluate_model(name: str, folder: Path, samples: Sequence[dict]) -> Dict[str, object]:
    """Per-case segmentation (and synthesis) metrics and seconds per case of manifest entry ``name``."""
    from StrokeLesionLib.metrics import segmentation_metrics, synthesis_metrics
    from StrokeLesionLib.lesion_models.pseudodwi.inference import load_model, predict_slices
    from StrokeLesionLib.lesion_models.pseudodwi.model import parameter_counts
    model, info = load_model(name, folder)
    cases = []
    for s in samples:
        t0 = time.perf_counter()
        prob, pdwi = predict_slices(model, s["x"])
        seconds = time.perf_counter() - t0
        brain = s["x"][-1] > 0
        row = segmentation_metrics((prob > 0.5) & brain, s["lesion"], tuple(s["spacing_mm"]))
        if pdwi is not None:
            row.update(synthesis_metrics(pdwi, s["dwi"], s["lesion"]))
        cases.append({"case": s["name"], "network_seconds": seconds, **row})
    return {"name": name, "version": info["version"], "sha256": info["sha256"], "config": info["config"],
            "n_parameters": parameter_counts(model)["inference"], "cases": cases}


def print_tables(results: List[dict], seeds: Sequence[int]) -> str:
    """The Table 5 layout (segmentation, parameter count) and the synthesis table, as printed."""
    from training.lesion_data.evaluation_tables import (PARAMETERS_COLUMN, SEGMENTATION_COLUMNS,
                                                        SYNTHESIS_COLUMNS, Column, format_table)
    seg_columns = SEGMENTATION_COLUMNS[:3] + (Column("hausdorff_mm", "HD (mm)", 1),) + SEGMENTATION_COLUMNS[3:] \
        + (PARAMETERS_COLUMN,)
    rows = [(ROW_LABELS.get(r["name"], r["name"]), [dict(c, n_parameters=r["n_parameters"]) for c in r["cases"]])
            for r in results]
    text = [format_table(rows, seg_columns, title=f"Table 5 layout - held-out phantom cases, seeds {seeds[0]}-"
                         f"{seeds[-1]} (n = {len(seeds)}), mean +/- sd")]
    syn = [(name, cases) for name, cases in rows if any("ssim" in c for c in cases)]
    if syn:
        text.append(format_table(syn, SYNTHESIS_COLUMNS, title="Pseudo-DWI against the phantom DWI (local: lesion "
                                 "bounding box + 8 voxels in-plane)"))
    out = "\n\n".join(text)
    print(out)
    return out


def main(argv=None) -> Dict[str, object]:
    p = argparse.ArgumentParser(prog="python -m training.pseudodwi.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=None, help="folder with manifest.json (default: the shipped models)")
    p.add_argument("--names", nargs="+", default=["slnet_maps", "pseudodwi"])
    p.add_argument("--n-cases", type=int, default=20)
    p.add_argument("--cache", type=Path, default=Path("/tmp/pseudodwi-cache"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(max(1, args.threads))
    seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.n_cases))
    samples = cached_phantoms(seeds, args.cache)
    results = [evaluate_model(n, args.models, samples) for n in args.names]
    for r in results:
        r["summary"] = summary(r["cases"], SUMMARY_KEYS)
    report = {"seeds": [seeds[0], seeds[-1]], "n_cases": len(seeds), "models": results,
              "tables": print_tables(results, seeds)}
    if args.json is not None:
        write_report(args.json, report)
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)
