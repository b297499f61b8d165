"""Trains X-Net (or its ablations) on T1 phantom slices (default) or ATLAS scans.

    python -m training.xnet.train --out DIR [--variant xnet|xnet_no_fsm|unet] [--data phantom|atlas --root DIR]
                                  [--max-minutes 20] [--threads 1] [--state-every N] [--resume DIR/state.pt]
    torchrun --nproc_per_node 2 -m training.xnet.train --out DIR ...   # DistributedDataParallel

Under torchrun each process draws its own case-balanced batches and DistributedDataParallel averages the
gradients (global batch = --batch-size x processes; training.common.distributed); stopping, learning-rate
decays and evaluations are decided together. ``--state-every N`` writes a resumable state to DIR/state.pt.

The paper's optimiser and schedule are the defaults: Adam, learning rate 1e-3, batch 8 slices, the
learning rate multiplied by 0.2 when the validation score has not improved for 3 evaluations
(ReduceLROnPlateau), early stopping after 5 evaluations without improvement; one evaluation per epoch
(a pass over the training slices) unless ``--eval-every`` says otherwise. A CPU budget ends training long
before the paper's plateaus (100 epochs on GPU), so the rate is also decayed once when ``--final-decay``
(a quarter) of the training time is left. Loss: soft Dice + cross-entropy
(``training.lesion_data.segmentation_losses.dice_ce_loss``; ``--lesion-weight`` weights the lesion class of the
cross-entropy). Batches are case-balanced (``data.training_batch``). The score is the mean validation Dice over
the validation cases (each case's slices on the network grid, threshold 0.5); the best network is kept.

Writes DIR/<variant>.pt (``{"format": 1, "config", "state_dict", "meta"}``) and registers it in
DIR/manifest.json (``training.common.weights_io.update_manifest``), so ``load_checkpoint(variant, ...,
folder=DIR)`` loads it. ``--max-minutes`` bounds the whole run (data included), in wall-clock minutes.
"""
import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .data import TRAIN_SEED0, VAL_SEED0, atlas_cases, case_slices, phantom_slices, slice_set, training_batch

VARIANTS = ("xnet", "xnet_no_fsm", "unet")
DEFAULT_WIDTHS = (8, 16, 32, 64, 128)
VERSION = "1.0"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.xnet.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoint + manifest.json)")
    p.add_argument("--variant", choices=VARIANTS, default="xnet",
                   help="xnet, xnet_no_fsm (X-Net w/o FSM) or unet (plain UNet, same depth and widths)")
    p.add_argument("--data", choices=("phantom", "atlas"), default="phantom")
    p.add_argument("--root", type=Path, help="ATLAS folder (--data atlas)")
    p.add_argument("--n-train", type=int, default=240, help="phantom training cases (seeds 10000+)")
    p.add_argument("--n-val", type=int, default=10, help="phantom validation cases (seeds 20000+)")
    p.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS),
                   help="channels per level, shallow to deep (the paper: 64 128 256 512 1024)")
    p.add_argument("--grid-size", type=int, default=128, help="network grid (voxels, y = x)")
    p.add_argument("--grid-spacing-mm", type=float, default=1.8, help="network grid voxel size (mm)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lesion-weight", type=float, default=1.0,
                   help="cross-entropy weight of the lesion class (1: unweighted, as the paper)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--lr-factor", type=float, default=0.2, help="learning-rate decay on a plateau")
    p.add_argument("--lr-patience", type=int, default=3, help="evaluations without improvement before decay")
    p.add_argument("--patience", type=int, default=5, help="evaluations without improvement before stopping")
    p.add_argument("--final-decay", type=float, default=0.25,
                   help="fraction of the training time left at which the learning rate is decayed once more "
                        "(a run cut short by --max-minutes still ends on a decayed rate; 0: off)")
    p.add_argument("--iters", type=int, default=4000, help="maximum iterations (batches)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="iterations between validations (0: one epoch, a pass over the training slices)")
    p.add_argument("--max-minutes", type=float, default=20.0, help="wall-clock limit of the whole run (min)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="random seed (initialisation, batches)")
    p.add_argument("--cache", type=Path, help="folder caching the phantom slices (.npz)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cuda: one GPU per process under torchrun (NCCL, float16 autocast); cpu: gloo")
    p.add_argument("--state-every", type=int, default=0, help="iterations between resumable states (0: none)")
    p.add_argument("--resume", type=Path, help="a state.pt to continue from (same number of processes)")
    args = p.parse_args(argv)
    if args.data == "atlas" and args.root is None:
        p.error("--data atlas needs --root DIR")
    return args


def validation_dice(model, cases: Sequence[Tuple[np.ndarray, np.ndarray]], threshold: float = 0.5) -> float:
    """Mean per-case Dice of the network on validation (slices, labels) pairs (network grid)."""
    from StrokeLesionLib.metrics import dice
    from StrokeLesionLib.lesion_models.xnet.inference import predict_probability
    return float(np.mean([dice(predict_probability(model, s.astype(np.float32)) > threshold, y)
                          for s, y in cases]))


def load_data(args, config, deadline: float, d):
    """((train slices, labels, case index), validation (slices, labels) pairs per case, data description)."""
    if args.data == "atlas":
        train = [case_slices(c, config) for c in atlas_cases(args.root, "train")]
        val = [case_slices(c, config) for c in atlas_cases(args.root, "val")]
        data = {"source": f"ATLAS ({args.root})", "n_train": len(train), "n_val": len(val)}
        return slice_set(train), val, data
    train_seeds = list(range(TRAIN_SEED0, TRAIN_SEED0 + args.n_train))
    val_seeds = list(range(VAL_SEED0, VAL_SEED0 + args.n_val))
    val = phantom_slices(val_seeds, config, args.cache)
    train = []
    for seed in train_seeds:  # generation stops at the deadline's half, keeping time to train
        late = time.time() > deadline - 0.5 * (deadline - args.t_start)
        if train and d.any(late):  # every rank stops at the same case
            break
        train += phantom_slices([seed], config, args.cache)
    data = {"source": "digital phantom T1 look-alike (AIFSelectorLib.phantom.case, lesion_variety=True, head rotation "
                      "up to 15 deg), see training/xnet/data.py; no real scans",
            "train_seeds": [train_seeds[0], train_seeds[0] + len(train) - 1],
            "val_seeds": [val_seeds[0], val_seeds[-1]], "n_train": len(train), "n_val": len(val)}
    return slice_set(train), val, data


def train(args) -> Dict[str, object]:
    import torch
    from training.common.distributed import load_state, rank_rng, save_state, setup, step_rng, unwrap
    from training.common.weights_io import update_manifest, write_checkpoint
    from AIFSelectorLib.models.blocks import count_parameters
    from StrokeLesionLib.lesion_models.xnet.model import XNetConfig, build_model, variant_config
    from training.lesion_data.segmentation_losses import dice_ce_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d = setup(args.device)
    rng = rank_rng(args.seed, d) if d.active else np.random.default_rng(args.seed)
    args.t_start = time.time()
    deadline = args.t_start + 60.0 * args.max_minutes
    config = variant_config(XNetConfig(widths=tuple(args.widths), grid_size=args.grid_size,
                                       grid_spacing_mm=args.grid_spacing_mm), args.variant)
    (slices, labels, index), val, data = load_data(args, config, deadline, d)
    t_data = time.time() - args.t_start
    if args.eval_every <= 0:
        args.eval_every = max(1, int(np.ceil(len(slices) / args.batch_size)))
    args.eval_every = d.gather(args.eval_every)[0]  # rank 0's, so that every rank evaluates at the same steps
    model = d.wrap(build_model(config))
    core = unwrap(model)
    n_params = count_parameters(core)
    log = (lambda *a: None) if (args.quiet or not d.is_main) else (lambda *a: print(*a, flush=True))
    log(f"{args.variant}: {n_params} parameters, {len(slices)} training slices ({data['n_train']} cases), "
        f"{len(val)} validation cases, data {t_data:.0f} s")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    scaler = d.scaler()
    class_weights = None if args.lesion_weight == 1.0 else (1.0, args.lesion_weight)
    best, best_iter, best_state, since_best, since_decay, lr = -1.0, 0, None, 0, 0, args.lr
    final_decay_at = deadline - args.final_decay * (deadline - time.time()) if args.final_decay > 0 else float("inf")
    final_decayed = False
    losses: List[float] = []
    it = 0
    if args.resume is not None:
        extra = load_state(args.resume, d, model, opt, rng, scaler=scaler)["extra"]
        it, losses, lr = int(extra["iteration"]), list(extra["losses"]), float(extra["lr"])
        best, best_iter, since_best, since_decay = (float(extra["best"]), int(extra["best_iter"]),
                                                    int(extra["since_best"]), int(extra["since_decay"]))
        if extra.get("final_decayed"):  # a state written after the final decay: not decayed a second time
            final_decay_at, final_decayed = float("inf"), True
        best_state = extra.get("best_state")
        log(f"resumed from {args.resume} at iteration {it + 1}")

    def decay():
        nonlocal lr
        lr *= args.lr_factor
        for g in opt.param_groups:
            g["lr"] = lr

    while it < args.iters and not d.any(time.time() >= deadline):
        model.train()
        share = d.share(args.batch_size)  # of the step's global batch, drawn the same on every rank
        x, y = training_batch(slices, labels, index, step_rng(args.seed, it), args.batch_size * d.world_size)
        x, y = x[share], y[share]
        with d.autocast():
            loss = dice_ce_loss(model(torch.from_numpy(x).to(d.device)).float(), torch.from_numpy(y).to(d.device),
                                class_weights)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(d.mean(loss.item()))
        it += 1
        if d.any(time.time() >= final_decay_at):
            decay()
            final_decay_at, final_decayed = float("inf"), True
        if it % args.eval_every == 0 or it == args.iters or d.any(time.time() >= deadline):
            core.eval()
            score = d.agreed(validation_dice(core, val))
            if score > best:
                best, best_iter, since_best, since_decay = score, it, 0, 0
                best_state = copy.deepcopy(core.state_dict())
            else:
                since_best += 1
                since_decay += 1
            log(f"iter {it}: loss {np.mean(losses[-args.eval_every:]):.4f}  val Dice {score:.4f}  "
                f"(best {best:.4f} @ {best_iter})  lr {lr:.2e}  {time.time() - args.t_start:.0f} s")
            if since_best >= args.patience:
                break
            if since_decay >= args.lr_patience:
                decay()
                since_decay = 0
        if args.state_every and it % args.state_every == 0:
            save_state(args.out / "state.pt", d, model, opt, it, rng, scaler=scaler, extra={
                "iteration": it, "losses": losses, "lr": lr, "best": best, "best_iter": best_iter,
                "since_best": since_best, "since_decay": since_decay, "final_decayed": final_decayed,
                **({"best_state": best_state} if best_state is not None else {})})
    seconds = time.time() - args.t_start
    if best_state is not None:
        core.load_state_dict(best_state)
    if not d.is_main:
        d.close()
        return {"path": None, "meta": None, "losses": losses}
    meta = {"version": f"{args.variant}-{VERSION}", "variant": args.variant, "n_parameters": n_params,
            "date": time.strftime("%Y-%m-%d"), "data": data,
            "training_command": "python -m training.xnet.train " + " ".join(args.argv),
            "training": {"iterations": it, "best_iteration": best_iter, "best_val_dice": round(best, 4),
                         "seconds": round(seconds, 1), "data_seconds": round(t_data, 1),
                         "final_train_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
                         "optimiser": "Adam", "lr": args.lr, "lr_decay": f"x{args.lr_factor} after "
                         f"{args.lr_patience} evaluations without improvement and once with "
                         f"{args.final_decay:g} of the time budget left", "final_lr": lr, "batch_size": args.batch_size,
                         "eval_every": args.eval_every, "early_stopping_patience": args.patience,
                         "threads": args.threads, "processes": d.world_size,
                         "loss": f"soft Dice + cross-entropy (lesion class weight {args.lesion_weight:g})",
                         "sampling": "case-balanced, lesion slices 70 %"}}
    path = write_checkpoint({"format": 1, "config": config.to_dict(), "state_dict": core.state_dict(), "meta": meta},
                            args.out / f"{args.variant}.pt")
    update_manifest({args.variant: manifest_entry(path, config.to_dict(), meta)}, folder=args.out)
    log(f"wrote {path} (best val Dice {best:.4f} at iter {best_iter}, {it} iters, {seconds:.0f} s)")
    d.close()
    return {"path": path, "meta": meta, "losses": losses}


def manifest_entry(path: Path, config: dict, meta: dict, evaluation: Optional[dict] = None) -> dict:
    """The manifest entry of a checkpoint file (see the brief's list of fields)."""
    from training.common.weights_io import file_fields
    entry = {**file_fields(path),
             "version": meta["version"], "config": config, "n_parameters": meta["n_parameters"],
             "training_command": meta["training_command"], "data": meta["data"], "date": meta["date"],
             "training": meta["training"]}
    if evaluation is not None:
        entry["evaluation"] = evaluation
    return entry


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    result = train(args)
    rank = int(os.environ.get("RANK", "0"))
    args.out.mkdir(parents=True, exist_ok=True)  # every iteration's loss (mean over the processes), per rank
    (args.out / f"losses.rank{rank}.json").write_text(json.dumps(result["losses"]), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
