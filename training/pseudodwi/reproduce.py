"""Reproduces the shipped pseudo-DWI weights, their manifest entries and held-out metrics in one command:

    python -m training.pseudodwi.reproduce [--out Resources/models] [--cache /tmp/pseudodwi-cache]

1. trains the maps-only SLNet baseline (paper Table 5) and pseudo-DWI + SLNet (end to end) on phantom
   cases (seeds 10000+, validation 20000+), one CPU thread each, with the settings below (the same as
   ``python -m training.pseudodwi.train`` with these arguments);
2. copies the checkpoints to ``--out`` (pseudodwi.pt, pseudodwi_slnet_maps.pt) and adds their manifest
   entries ('pseudodwi', 'slnet_maps') through ``training.common.weights_io.update_manifest``;
3. evaluates both on the held-out seeds 30000+ (``training.pseudodwi.evaluate``) and stores the metrics
   in both entries.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .data import CASE_SHAPE_ZYX, CASE_SPACING_MM, N_FRAMES, lesion_variety_available

REPO = Path(__file__).resolve().parents[2]
VERSION = "1.0"
COMMON = ["--n-train", "48", "--n-val", "6", "--lr", "2e-3", "--lr-decay-every", "400", "--eval-every", "50",
          "--patience", "8", "--threads", "1"]
DEFAULTS = {
    "slnet_maps": COMMON + ["--slnet-inputs", "maps", "--iters", "1500", "--max-minutes", "7"],
    "pseudodwi": COMMON + ["--iters", "1500", "--max-minutes", "12"],
}
FILES = {"slnet_maps": "pseudodwi_slnet_maps.pt", "pseudodwi": "pseudodwi.pt"}


def data_description(meta: dict) -> dict:
    return {"source": f"digital phantom (AIFSelectorLib.phantom.case, lesion_variety: {lesion_variety_available()}), "
                      f"{CASE_SHAPE_ZYX} voxels (z, y, x) at {CASE_SPACING_MM} mm (x, y, z), {N_FRAMES} frames at "
                      "1 or 1.5 s, noise 3-8 HU; network inputs from the perfusion pipeline's maps (AIFNet AIF, "
                      "oSVD) and brain mask; target: the phantom's DWI look-alike and lesion; no real scans",
            "train_seeds": meta.get("train_seeds"), "val_seeds": meta.get("val_seeds")}


def manifest_entry(name: str, path: Path, evaluation=None) -> dict:
    import torch
    from training.common.weights_io import file_fields
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    entry = {**file_fields(path),
             "version": meta["version"], "config": ckpt["config"], "n_parameters": meta["n_parameters"],
             "parameter_counts": meta.get("parameter_counts"), "training_command": meta["training_command"],
             "data": data_description(meta), "date": meta.get("date"),
             "training": {k: meta.get(k) for k in ("iters_done", "best_iter", "best_val_dice", "train_seconds",
                                                   "optimizer", "lr", "weight_decay", "batch_size", "crop", "mode",
                                                   "threads", "losses")},
             "model_card": "MODEL_CARD_pseudodwi.md", "reproduce": "python -m training.pseudodwi.reproduce"}
    if evaluation is not None:
        entry["evaluation"] = evaluation
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.pseudodwi.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "Resources" / "models")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pseudodwi-cache")
    p.add_argument("--only", choices=tuple(DEFAULTS), help="train only this model")
    p.add_argument("--eval-only", action="store_true", help="no training: evaluate the weights in --out")
    p.add_argument("--eval-cases", type=int, default=20)
    args = p.parse_args(argv)
    import torch
    from training.common.weights_io import update_manifest, write_checkpoint
    from training.common.distributed import setup, shared_tempdir
    from . import evaluate, train
    d = setup()  # under torchrun every rank trains; rank 0 writes and evaluates
    work = shared_tempdir(d, "pseudodwi-train-")
    names = () if args.eval_only else (args.only,) if args.only else tuple(DEFAULTS)
    for name in names:
        t0 = time.perf_counter()
        train.main(DEFAULTS[name] + ["--out", str(work), "--name", name, "--cache", str(args.cache)])
        if not d.is_main:
            continue
        ckpt = torch.load(work / f"{name}.pt", map_location="cpu", weights_only=True)
        ckpt["meta"]["version"] = f"{name}-{VERSION}"
        ckpt["meta"]["training_command"] = ("python -m training.pseudodwi.reproduce  (= python -m "
                                            "training.pseudodwi.train " + " ".join(DEFAULTS[name]) + ")")
        write_checkpoint(ckpt, args.out / FILES[name])
        update_manifest({name: manifest_entry(name, args.out / FILES[name])}, folder=args.out)
        print(f"{name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    if not d.is_main:
        return 0
    out_json = work / "evaluation.json"
    res = evaluate.main(["--models", str(args.out), "--names", *DEFAULTS, "--n-cases", str(args.eval_cases),
                         "--cache", str(args.cache), "--json", str(out_json)])
    evaluation = {"command": f"python -m training.pseudodwi.evaluate --n-cases {args.eval_cases}",
                  "held_out_seeds": res["seeds"], "n_cases": res["n_cases"], "date": time.strftime("%Y-%m-%d"),
                  **{r["name"]: r["summary"] for r in res["models"]}, "tables": res["tables"]}
    update_manifest({name: manifest_entry(name, args.out / FILES[name], evaluation) for name in DEFAULTS},
                    folder=args.out)
    print(f"wrote {args.out}; evaluation {json.dumps({n: evaluation[n]['dice'] for n in DEFAULTS})}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
