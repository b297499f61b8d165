"""Held-out evaluation of X-Net in the paper's table layout (rows: X-Net, X-Net w/o FSM, plain UNet;
columns: Dice, precision, recall, HD95, ASSD, relative volume error, parameters).

    python -m training.xnet.evaluate [--models Resources/models] [--ablations DIR] [--n-cases 20] [--json FILE]

Each held-out phantom case (seeds 30000+, never trained on; the geometry variety of
``training/xnet/data.py``) runs through the whole inference path of
``StrokeLesionLib.lesion_models.xnet.inference`` (head mask, normalisation, network grid and back) and is scored on
its own grid with ``StrokeLesionLib.metrics.segmentation_metrics`` (surface distances in mm).
The shipped 'xnet' entry of ``--models`` is the X-Net row; ``--ablations DIR`` adds the rows of the
'xnet_no_fsm' and 'unet' checkpoints that ``python -m training.xnet.train --variant ... --out DIR``
registered there (rows without a checkpoint are left out). Cells are mean +/- sample SD over the cases.
"""
import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from .data import EVAL_SEED0, phantom_case
from training.lesion_data.evaluation_tables import summary as metric_summary, write_report

SUMMARY_KEYS = ("dice", "precision", "recall", "hausdorff_mm", "hausdorff95_mm", "assd_mm", "relative_volume_error",
                "seconds")
ROWS = (("xnet", "X-Net"), ("xnet_no_fsm", "X-Net w/o FSM"), ("unet", "U-Net (plain, same depth)"))


def evaluate_model(model, cases: Sequence[Dict[str, object]]) -> List[Dict[str, float]]:
    """Per-case metrics (segmentation_metrics plus 'seconds', the inference time) of a loaded network."""
    import torch
    from StrokeLesionLib.metrics import segmentation_metrics
    from StrokeLesionLib.lesion_models.xnet.inference import segment_with_model
    out = []
    for case in cases:
        t0 = time.perf_counter()
        mask, _, _ = segment_with_model(model, case["t1"], case["spacing_xyz"], torch.device("cpu"))
        seconds = time.perf_counter() - t0
        m = segmentation_metrics(mask, case["lesion"], case["spacing_xyz"])
        m["seconds"] = seconds
        m["name"] = case["name"]
        out.append(m)
    return out


def parameter_counts(config: dict) -> Dict[str, int]:
    """Parameters of every variant (xnet, xnet_no_fsm, unet) with the depth and widths of ``config``."""
    from AIFSelectorLib.models.blocks import count_parameters
    from StrokeLesionLib.lesion_models.xnet.model import XNetConfig, build_model, variant_config
    cfg = XNetConfig.from_dict(config)
    return {name: count_parameters(build_model(variant_config(cfg, name))) for name, _ in ROWS}


def _load(name: str, folder: Path):
    from AIFSelectorLib.models.weights import WeightsError, load_checkpoint, read_manifest
    from StrokeLesionLib.lesion_models.xnet.model import build_model
    try:
        if name not in read_manifest(folder).get("models", {}):
            return None
    except WeightsError:
        return None
    return load_checkpoint(name, build_model, folder=folder, label=f"X-Net ({name})")


def main(argv=None) -> int:
    from AIFSelectorLib.models.weights import models_dir
    from AIFSelectorLib.models.blocks import count_parameters
    from training.lesion_data.evaluation_tables import PARAMETERS_COLUMN, SEGMENTATION_COLUMNS, Column, format_table
    p = argparse.ArgumentParser(prog="python -m training.xnet.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=None, help="folder of the shipped weights (default Resources/models)")
    p.add_argument("--ablations", type=Path, help="folder of the xnet_no_fsm / unet checkpoints (train.py --out)")
    p.add_argument("--n-cases", type=int, default=20, help="held-out phantom cases (seeds 30000+)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the per-case metrics and the table here")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    folder = args.models if args.models is not None else models_dir()
    seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.n_cases))
    cases = [phantom_case(s) for s in seeds]
    rows, results = [], {}
    for name, label in ROWS:
        source = folder if name == "xnet" else args.ablations
        loaded = _load(name, source) if source is not None else None
        if loaded is None:
            if name == "xnet":
                raise SystemExit(f"error: no 'xnet' weights in {folder}")
            continue
        model, info = loaded
        metrics = evaluate_model(model, cases)
        n_params = count_parameters(model)
        for m in metrics:
            m["n_parameters"] = n_params
        rows.append((label, metrics))
        results[name] = {"label": label, "version": info["version"], "sha256": info["sha256"],
                         "n_parameters": n_params, "config": info["config"], "cases": metrics}
    columns = tuple(SEGMENTATION_COLUMNS) + (Column("hausdorff_mm", "HD (mm)", 1), PARAMETERS_COLUMN)
    table = format_table(rows, columns, title=f"X-Net, held-out T1 phantom cases (seeds {seeds[0]}-{seeds[-1]}, "
                                             f"n={len(seeds)}); mean +/- SD", markdown=args.markdown)
    print(table)
    counts = parameter_counts(results["xnet"]["config"])
    print("parameters (same depth and widths, trained or not): "
          + ", ".join(f"{label} {counts[name]:,}" for name, label in ROWS))
    for name, r in results.items():
        t = [m["seconds"] for m in r["cases"]]
        print(f"{r['label']}: inference {np.mean(t):.2f} s per case (max {np.max(t):.2f} s, "
              f"{args.threads} thread(s))")
    if args.json is not None:
        summary = {name: {"label": r["label"], "version": r["version"], "n_parameters": r["n_parameters"],
                          **metric_summary(r["cases"], SUMMARY_KEYS)}
                   for name, r in results.items()}
        write_report(args.json, {"seeds": [seeds[0], seeds[-1]], "n_cases": len(seeds), "summary": summary,
                                 "parameter_counts": counts, "table": table, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
