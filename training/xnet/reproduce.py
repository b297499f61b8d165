"""Reproduces the shipped X-Net weights, their manifest entry and the held-out evaluation in one command:

    python -m training.xnet.reproduce [--out Resources/models] [--cache DIR] [--ablations]

1. trains X-Net on phantom T1 slices with the settings below (``python -m training.xnet.train`` + TRAIN_ARGS,
   one CPU thread, at most 16 min wall clock including the phantom generation; the phantom slices are cached
   under ``--cache``, so with a warm cache the whole budget goes to training);
2. copies the checkpoint to ``--out``/xnet.pt and registers the 'xnet' manifest entry
   (``training.common.weights_io.update_manifest``: sha256, size, config, parameters, command, data, training);
3. with ``--ablations``, trains "X-Net w/o FSM" and the plain UNet of the same depth and widths with the same
   settings and the same (cached) data (in the work folder; they are not shipped);
4. runs the held-out evaluation (``python -m training.xnet.evaluate``, phantom seeds 30000+), prints the
   table and stores its summary in the manifest entry.

``--trained DIR`` skips step 1 and uses DIR/xnet.pt from an earlier ``train`` run with TRAIN_ARGS;
``--ablations-from DIR`` evaluates ablation checkpoints trained earlier (``train --variant ... --out DIR``).
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN_ARGS = ["--n-train", "320", "--n-val", "10", "--lesion-weight", "3", "--max-minutes", "16", "--threads", "1"]
MODEL_CARD = "MODEL_CARD_xnet.md"
REPRODUCE = "python -m training.xnet.reproduce"
EVAL_CASES = 50


def _train(variant: str, out: Path, cache: Path) -> Path:
    """Trains ``variant`` into folder ``out`` (checkpoint + manifest entry there); returns the checkpoint."""
    from . import train
    train.main(TRAIN_ARGS + ["--variant", variant, "--out", str(out), "--cache", str(cache)])
    return out / f"{variant}.pt"


def register(checkpoint: Path, out: Path, evaluation=None) -> dict:
    """Copies ``checkpoint`` to out/xnet.pt (unless it is that file) and merges its 'xnet' manifest entry."""
    import torch
    from training.common.weights_io import update_manifest
    from .train import manifest_entry
    out.mkdir(parents=True, exist_ok=True)
    target = out / "xnet.pt"
    if checkpoint.resolve() != target.resolve():
        shutil.copy2(checkpoint, target)
    ckpt = torch.load(target, map_location="cpu", weights_only=True)
    entry = manifest_entry(target, ckpt["config"], ckpt["meta"], evaluation)
    entry.update(model_card=MODEL_CARD, reproduce=REPRODUCE)
    update_manifest({"xnet": entry}, folder=out)
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=REPRODUCE, description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "Resources" / "models")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "xnet-phantom-cache")
    p.add_argument("--trained", type=Path, help="use DIR/xnet.pt of an earlier train run instead of training")
    p.add_argument("--ablations", action="store_true", help="also train X-Net w/o FSM and the plain UNet")
    p.add_argument("--ablations-from", type=Path,
                   help="evaluate the ablation checkpoints registered in DIR (train.py --out DIR) instead of training")
    p.add_argument("--eval-cases", type=int, default=EVAL_CASES)
    args = p.parse_args(argv)
    from training.common.distributed import setup, shared_tempdir
    d = setup()  # under torchrun every rank trains; rank 0 writes and evaluates
    work = shared_tempdir(d, "xnet-reproduce-")
    t0 = time.perf_counter()
    checkpoint = args.trained / "xnet.pt" if args.trained else _train("xnet", work / "xnet", args.cache)
    if d.is_main:
        register(checkpoint, args.out)
        print(f"xnet: registered in {args.out} ({time.perf_counter() - t0:.0f} s)", flush=True)
    eval_args = ["--models", str(args.out), "--n-cases", str(args.eval_cases), "--json", str(work / "evaluation.json")]
    if args.ablations:
        for variant in ("xnet_no_fsm", "unet"):
            _train(variant, work / "ablations", args.cache)
        eval_args += ["--ablations", str(work / "ablations")]
    elif args.ablations_from:
        eval_args += ["--ablations", str(args.ablations_from)]
    if not d.is_main:
        return 0
    from . import evaluate
    evaluate.main(eval_args)
    result = json.loads((work / "evaluation.json").read_text(encoding="utf-8"))
    evaluation = {"command": f"python -m training.xnet.evaluate --n-cases {args.eval_cases}"
                             + (" --ablations DIR" if args.ablations or args.ablations_from else ""),
                  "held_out_seeds": result["seeds"], "n_cases": result["n_cases"],
                  "date": time.strftime("%Y-%m-%d"), "metrics": result["summary"],
                  "parameter_counts_same_depth_and_widths": result["parameter_counts"]}
    register(args.out / "xnet.pt", args.out, evaluation)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out / 'xnet.pt'} and its manifest entry ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
