"""Reproduces the shipped SEAN weights, their manifest entries and the held-out evaluation in one command:

    python -m training.sean.reproduce [--out Resources/models]

1. trains SEAN (``training.sean.train``: the alignment network, unsupervised, then the HybridUnet on the
   aligned images) on 300 phantom cases (seeds 10000+, validation 20000-20015), two CPU threads, with the
   infarct class weighted 3 in the cross-entropy and 70 % of the slice stacks holding infarct;
2. copies sean_alignment.pt and sean.pt to ``--out`` and adds the manifest entries 'sean_alignment' and
   'sean' through ``training.common.weights_io.update_manifest``;
3. trains the two ablations of the results table with the same settings: without alignment
   ('sean_noalign') and without symmetry attention ('sean_selfattn', the shipped alignment network
   reused); they are kept in a work folder with its own manifest, not shipped;
4. evaluates all three on the held-out seeds 30000+ (``training.sean.evaluate``) and stores the table and
   the metrics in the 'sean' entry (and the angle error in 'sean_alignment').
Budgets (two threads): SEAN 72 min in all (alignment ~2 min, segmenter the rest); each ablation 70 min, so
that the three segmenters train for about the same time (~3.5 h for the whole command, plus the evaluation).
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .data import INPLANE, MAX_ROTATION_DEG, N_FRAMES, NOISE_HU, SLICE_COUNTS, SPACING_MM

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--n-train", "300", "--n-val", "16", "--threads", "2", "--iters", "20000", "--lr", "2e-3",
          "--lr-decay-every", "2500", "--batch-size", "8", "--eval-every", "250", "--patience", "12",
          "--lesion-weight", "3", "--lesion-fraction", "0.7"]
RUNS = {
    "sean": COMMON + ["--max-minutes", "72", "--align-fraction", "0.03", "--align-iters", "3000"],
    "sean_noalign": COMMON + ["--max-minutes", "70", "--no-alignment"],
    "sean_selfattn": COMMON + ["--max-minutes", "70", "--attention", "self"],
}
"""name -> arguments of training.sean.train (besides --out, --name, --alignment-from)."""
FILES = {"sean": "sean.pt", "sean_alignment": "sean_alignment.pt"}


def data_description(meta: dict) -> dict:
    return {"source": f"digital phantom NCCT look-alike (AIFSelectorLib.phantom.case, lesion_variety=True, "
                      f"head_rotation_max_deg={MAX_ROTATION_DEG:g}), ({'/'.join(map(str, SLICE_COUNTS))}, {INPLANE}, "
                      f"{INPLANE}) voxels (z, y, x) at {SPACING_MM} mm (x, y, z), {N_FRAMES} frames (unused), "
                      f"noise {NOISE_HU[0]:g}-{NOISE_HU[1]:g} HU; target: the phantom's infarct core; no real scans",
            "train_seeds": meta.get("train_seeds"), "val_seeds": meta.get("val_seeds")}


def manifest_entry(path: Path, model_card: str, evaluation=None) -> dict:
    import torch
    from training.common.weights_io import file_fields
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    keys = ("iters_done", "best_iter", "best_val_dice", "seconds", "total_train_seconds", "optimizer", "lr",
            "lr_decay_every", "batch_size", "lesion_weight", "lesion_fraction", "threads", "val_angle_error_mean_deg",
            "val_angle_error_max_deg", "loss_first", "loss_last")
    entry = {**file_fields(path),
             "version": meta["version"], "config": ckpt["config"], "n_parameters": meta["n_parameters"],
             "training_command": meta["training_command"], "data": data_description(meta), "date": meta.get("date"),
             "training": {k: meta[k] for k in keys if k in meta}, "model_card": model_card,
             "reproduce": "python -m training.sean.reproduce"}
    if evaluation is not None:
        entry["evaluation"] = evaluation
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.sean.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "Resources" / "models")
    p.add_argument("--work", type=Path, default=None, help="folder for the ablation models (default: a temp folder)")
    p.add_argument("--eval-cases", type=int, default=20)
    args = p.parse_args(argv)
    from training.common.weights_io import update_manifest
    from training.common.distributed import setup, shared_tempdir
    from . import evaluate, train
    d = setup()  # under torchrun every rank trains; rank 0 writes and evaluates
    work = args.work or shared_tempdir(d, "sean-train-")
    work.mkdir(parents=True, exist_ok=True)
    card = "MODEL_CARD_sean.md"
    t0 = time.perf_counter()
    train.main(RUNS["sean"] + ["--out", str(work), "--name", "sean"])
    if d.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, file in FILES.items():
            shutil.copy(work / file, args.out / file)
        update_manifest({name: manifest_entry(args.out / file, card) for name, file in FILES.items()},
                        folder=args.out)
    d.barrier()  # the ablations read the alignment network rank 0 has just copied
    for name in ("sean_noalign", "sean_selfattn"):
        train.main(RUNS[name] + ["--out", str(work), "--name", name, "--alignment-from", str(args.out)])
    if not d.is_main:
        return 0
    update_manifest({name: manifest_entry(work / f"{name}.pt", card) for name in ("sean_noalign", "sean_selfattn")}
                    | {"sean_alignment": manifest_entry(work / FILES["sean_alignment"], card)}, folder=work)
    train_seconds = time.perf_counter() - t0
    res = evaluate.main(["--models", str(args.out), "--ablations", str(work), "--n-cases", str(args.eval_cases),
                         "--json", str(work / "evaluation.json")])
    evaluation = {"command": f"python -m training.sean.evaluate --n-cases {args.eval_cases} (ablations from "
                             "training.sean.reproduce)",
                  "held_out_seeds": res["seeds"], "n_cases": res["n_cases"], "date": time.strftime("%Y-%m-%d"),
                  **{r["label"]: r["summary"] for r in res["models"]},
                  "n_parameters": {r["label"]: r["n_parameters"] for r in res["models"]},
                  "angle_error": res["angle_error"], "tables": res["tables"],
                  "all_training_seconds_2_threads": round(train_seconds, 1)}
    update_manifest({"sean": manifest_entry(args.out / FILES["sean"], card, evaluation),
                     "sean_alignment": manifest_entry(args.out / FILES["sean_alignment"], card,
                                                      {"angle_error": res["angle_error"],
                                                       "held_out_seeds": res["seeds"]})}, folder=args.out)
    print(json.dumps({"dice": evaluation["SEAN"]["dice"], "angle_error": res["angle_error"],
                      "training_seconds": round(train_seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
