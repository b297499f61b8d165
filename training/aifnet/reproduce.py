"""Reproduces the shipped AIFNet weights, their manifest and held-out metrics in one command:

    python -m training.aifnet.reproduce [--out Resources/models] [--cache /tmp/aifnet-cache]

1. trains the AIF model (K=5) and the VOF model (K=2) on phantom cases (seeds 1000+, validation 5000+),
   one CPU thread each, with the settings below (the same as ``python -m training.aifnet.train``);
2. copies the checkpoints to ``--out`` and writes ``manifest.json`` (sha256, command, data, date, metrics);
3. runs the held-out evaluation (seeds 9000+) and stores its tables in the manifest.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = {
    "aif": ["--kind", "aif", "--n-train", "40", "--n-val", "6", "--iters", "900", "--lr", "0.01",
            "--eval-every", "75", "--patience", "5", "--max-minutes", "25", "--threads", "1"],
    "vof": ["--kind", "vof", "--n-train", "40", "--n-val", "12", "--iters", "1200", "--lr", "0.01",
            "--eval-every", "50", "--patience", "10", "--max-minutes", "10", "--threads", "1"],
}
VERSION = "1.0"


def write_manifest(folder: Path, commands=None, evaluation=None) -> dict:
    """manifest.json for the aifnet_*.pt files in ``folder`` (sha256 + checkpoint metadata)."""
    import torch
    from training.common.weights_io import file_fields, update_manifest
    folder = Path(folder)
    models = {}
    for kind in ("aif", "vof"):
        f = folder / f"aifnet_{kind}.pt"
        if not f.exists():
            continue
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        meta = ckpt.get("meta", {})
        models[kind] = {**file_fields(f),
                        "version": meta.get("version", VERSION), "config": ckpt["config"],
                        "n_parameters": meta.get("n_parameters"),
                        "training_command": meta.get("training_command"),
                        "data": {"source": "digital phantom (AIFSelectorLib.phantom.case), small CPU-sized cases "
                                           "(4-8 x 96-128 x 96-128 voxels, in-plane 0.9-2.4 mm, 5-6 mm slices, 40-56 "
                                           "frames at 1 s, noise 3-10 HU), randomised anatomy, AIF shape, "
                                           "bolus arrival, dispersion and dose; no real scans",
                                 "train_seeds": meta.get("train_seeds"), "val_seeds": meta.get("val_seeds"),
                                 "isles2018": meta.get("isles_cases", False)},
                        "date": meta.get("date"),
                        "training": {k: meta.get(k) for k in ("best_val_r", "best_iter", "iters_done",
                                                              "train_seconds", "lr", "momentum", "batch_size",
                                                              "optimizer")}}
    top_level = {"format": 1, "reproduce": "python -m training.aifnet.reproduce", "model_card": "MODEL_CARD_aifnet.md"}
    if evaluation is not None:
        top_level["evaluation"] = evaluation
    return update_manifest(models, folder, top_level)  # the lesion models' entries and the benchmark are kept


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.aifnet.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "Resources" / "models")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "aifnet-phantom-cache")
    p.add_argument("--only", choices=("aif", "vof"), help="train only this model")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--eval-only", action="store_true", help="no training: evaluate the weights in --out")
    p.add_argument("--eval-cases", type=int, default=20)
    p.add_argument("--eval-size", choices=("full", "small"), default="full")
    args = p.parse_args(argv)
    from training.common.distributed import setup, shared_tempdir
    from . import train
    d = setup()  # under torchrun every rank trains; rank 0 writes and evaluates
    work = shared_tempdir(d, "aifnet-train-")
    for kind in () if args.eval_only else (args.only,) if args.only else ("aif", "vof"):
        t0 = time.perf_counter()
        train.main(DEFAULTS[kind] + ["--out", str(work / kind), "--cache", str(args.cache)])
        if not d.is_main:
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        _set_version(work / kind / f"aifnet_{kind}.pt", kind)
        shutil.copy2(work / kind / f"aifnet_{kind}.pt", args.out / f"aifnet_{kind}.pt")
        print(f"{kind}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    if not d.is_main:
        return 0
    if not args.eval_only:
        write_manifest(args.out)
        from .export_onnx import export  # the CPU runtime's graphs of the new weights (stale ones are refused)
        for kind in (args.only,) if args.only else ("aif", "vof"):
            export(kind, args.out)
    if not args.skip_eval:
        from . import evaluate
        out_json = work / "evaluation.json"
        evaluate.main(["--n-cases", str(args.eval_cases), "--size", args.eval_size, "--models", str(args.out),
                       "--json", str(out_json)])
        res = json.loads(out_json.read_text(encoding="utf-8"))
        write_manifest(args.out, evaluation=compact_evaluation(res))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


def _set_version(path: Path, kind: str) -> None:
    import torch
    from training.common.weights_io import write_checkpoint
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["meta"]["version"] = f"aifnet-{kind}-{VERSION}"
    ckpt["meta"]["training_command"] = "python -m training.aifnet.reproduce  (= python -m training.aifnet.train " \
        + " ".join(DEFAULTS[kind]) + ")"
    write_checkpoint(ckpt, path)


def compact_evaluation(res: dict) -> dict:
    """The manifest's metrics: held-out seeds, sizes, table means/sd/percentiles and acceptance."""
    return {"command": f"python -m training.aifnet.evaluate --n-cases {len(res['cases'])} --size {res['size']}",
            "held_out_seeds": res["seeds"], "phantom_size": res["size"],
            "date": time.strftime("%Y-%m-%d"), "tables": res["tables"], "acceptance": res["acceptance"]}


if __name__ == "__main__":
    sys.exit(main())
