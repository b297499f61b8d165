"""Trains SEAN: the symmetry alignment network first (unsupervised), then the HybridUnet segmenter on the
aligned images.

    python -m training.sean.train --out DIR [--name sean] [--data phantom | --data aisd --root DIR]
        [--attention symmetric|self|none] [--no-alignment] [--alignment-from MODELS_DIR]
        [--max-minutes 10] [--threads 1]

Stage 1 (skipped with --no-alignment or --alignment-from): AlignmentNet on whole cases resampled to its
grid, loss = symmetry L1 + restoration L1 (+ a tiny shift penalty); no pose labels. Stage 2: every case
is resampled onto the segmenter's grid with its estimated pose (identity with --no-alignment), the
HybridUnet learns generalised Dice + cross-entropy on 2T+1-slice stacks; early stopping on the mean 3D
validation Dice (aligned grid), the best state is kept.

Under ``torchrun --nproc_per_node N`` both stages run with DistributedDataParallel (each process draws its own
batches; the global batch is N times ``--batch-size``; training.common.distributed); time limits, early stopping
and evaluations are decided together. ``--state-every N`` writes ``<out>/state.pt`` (the stage, its network,
optimiser, schedule, step and every rank's random state); ``--resume <out>/state.pt`` continues that stage (a
segmenter stage resumes with the alignment network that stage 1 wrote to ``<out>``).

Optimiser: Adam (betas 0.9/0.999): stage 1 lr 1e-3 halved every third of its iterations; stage 2 lr 2e-3
halved every ``--lr-decay-every`` (400) iterations, batches of 6 slice stacks (``--lesion-fraction``, half
of them holding infarct), the infarct class weighted ``--lesion-weight`` (1) in the cross-entropy. The shipped
weights use weight 3 and 70 % infarct stacks (``training.sean.reproduce``; see the model card). The paper's
exact optimiser settings could not be looked up here (no copy of its full text offline); Adam is the
assumption. Outputs ``<out>/<name>.pt`` (and ``<out>/<alignment-name>.pt`` when
stage 1 ran) in the checkpoint format of ``AIFSelectorLib.models.weights``.
"""
import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .data import TRAIN_SEED0, VAL_SEED0, aisd_cases, alignment_batch, phantom_cases, segmentation_batch

VERSION = "1.1"


@dataclass
class TrainOptions:
    align_iters: int = 600
    align_lr: float = 1e-3
    align_batch: int = 4
    align_minutes: float = 2.0
    augment_angle_deg: float = 8.0
    augment_shift_mm: float = 8.0
    seg_iters: int = 3000
    lr: float = 2e-3
    lr_decay_every: int = 400
    batch_size: int = 6
    seg_minutes: float = 8.0
    lesion_fraction: float = 0.5
    lesion_weight: float = 1.0
    eval_every: int = 100
    patience: int = 6
    seed: int = 0


def normalised_cases(cases: Sequence[dict], hu_window) -> List[dict]:
    """Adds 'x' (normalised (z, y, x)) and 'background' to each case (see sean_alignment.normalise_ncct)."""
    from StrokeLesionLib.lesion_models.sean.alignment import normalise_ncct
    out = []
    for c in cases:
        x, bg = normalise_ncct(c["ncct"], hu_window)
        out.append({**c, "x": x, "background": float(bg)})
    return out


def alignment_grid_volumes(cases: Sequence[dict], config) -> List[np.ndarray]:
    """Every case's normalised volume resampled onto the alignment grid, (z, s, s) float32."""
    import torch
    from StrokeLesionLib.lesion_models.sean.alignment import alignment_grid_slices
    out = []
    with torch.no_grad():
        for c in cases:
            x = torch.from_numpy(c["x"])[None]
            bg = torch.tensor([c["background"]])
            out.append(alignment_grid_slices(x, bg, c["spacing_xyz"][:2], config)[0].numpy())
    return out


def estimate_poses(net, cases: Sequence[dict]) -> np.ndarray:
    """(n, 3) poses (angle_deg, tx_mm, ty_mm) of the cases."""
    from StrokeLesionLib.lesion_models.sean.inference import estimate_pose
    return np.stack([estimate_pose(net, c["x"], c["background"], c["spacing_xyz"][:2]) for c in cases])


def angle_errors(net, cases: Sequence[dict]) -> np.ndarray:
    """|estimated - true| rotation (deg) of the cases with a known true angle."""
    known = [c for c in cases if np.isfinite(c["angle_deg"])]
    if not known:
        return np.zeros(0)
    poses = estimate_poses(net, known)
    return np.abs(poses[:, 0] - np.array([c["angle_deg"] for c in known]))


def random_pose(slices, background, rng: np.random.Generator, config, angle_deg: float, shift_mm: float):
    """Augmentation of stage 1: every case of (B, Z, s, s) turned and shifted by a random pose (angle
    uniform in +/- ``angle_deg``, shifts in +/- ``shift_mm``), the background kept outside."""
    import torch
    from StrokeLesionLib.lesion_models.sean.alignment import warp_volumes
    b = slices.shape[0]
    pose = np.stack([rng.uniform(-angle_deg, angle_deg, b), rng.uniform(-shift_mm, shift_mm, b),
                     rng.uniform(-shift_mm, shift_mm, b)], 1)
    sp = config.spacing_xy
    bg = background[:, None, None, None]
    with torch.no_grad():
        return warp_volumes(slices - bg, torch.from_numpy(pose.astype(np.float32)), slices.shape[-2:], sp, sp) + bg


@dataclass
class Run:
    """Where a stage runs: the process group, a resumable state file and how often, a state to resume."""

    distributed: object = None
    state_path: Optional[Path] = None
    state_every: int = 0
    resume: Optional[dict] = None
    """The payload of training.common.distributed.load_state's file, for the stage it names."""


def _stage_setup(run: Optional[Run], seed: int, net):
    """(distributed context, rng, the wrapped network, the network) of a stage."""
    from training.common.distributed import Distributed, rank_rng, unwrap
    d = (run.distributed if run is not None else None) or Distributed()
    rng = rank_rng(seed, d) if d.active else np.random.default_rng(seed)
    model = d.wrap(net)
    return d, rng, model, unwrap(model)


def _resume_stage(run: Optional[Run], stage: str, d, model, opt, rng, sched, scaler) -> Optional[dict]:
    """The saved extra of ``stage`` after restoring it, or None when the run does not resume this stage."""
    from training.common.distributed import load_state
    if run is None or run.resume is None or run.resume["extra"].get("stage") != stage:
        return None
    return load_state(run.resume["path"], d, model, opt, rng, sched, scaler)["extra"]


def _save_stage(run: Optional[Run], it: int, d, model, opt, rng, sched, scaler, extra: dict) -> None:
    from training.common.distributed import save_state
    if run is not None and run.state_path is not None and run.state_every and it % run.state_every == 0:
        save_state(run.state_path, d, model, opt, it, rng, sched, scaler, extra={"iteration": it, **extra})


def train_alignment(train: Sequence[dict], val: Sequence[dict], config, opts: TrainOptions,
                    log: Optional[Callable] = None, run: Optional[Run] = None):
    """Stage 1 (unsupervised). Returns (net, history dict)."""
    import torch
    from StrokeLesionLib.lesion_models.sean.alignment import AlignmentNet, alignment_losses
    from training.common.distributed import step_rng
    torch.manual_seed(opts.seed)
    d, rng, model, net = _stage_setup(run, opts.seed, AlignmentNet(config))
    volumes = alignment_grid_volumes(train, config)
    backgrounds = [c["background"] for c in train]
    opt = torch.optim.Adam(model.parameters(), lr=opts.align_lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, max(1, opts.align_iters // 3), 0.5)
    scaler = d.scaler()
    t0 = time.perf_counter()
    history, it = [], 0
    saved = _resume_stage(run, "alignment", d, model, opt, rng, sched, scaler)
    if saved is not None:
        history, it = list(saved["history"]), int(saved["iteration"])
    n_slices = min(v.shape[0] for v in volumes)
    for it in range(it + 1, opts.align_iters + 1):
        model.train()
        # the step's global batch, drawn the same on every rank; this rank's share of it
        step = step_rng(opts.seed, it)
        x, bg = (torch.from_numpy(a) for a in alignment_batch(volumes, backgrounds, step,
                                                               opts.align_batch * d.world_size, min(6, n_slices)))
        x = random_pose(x, bg, step, config, opts.augment_angle_deg, opts.augment_shift_mm)
        share = d.share(opts.align_batch)
        x, bg = x[share].to(d.device), bg[share].to(d.device)
        with d.autocast():
            terms = alignment_losses(x, model(x, bg), bg, config)
        opt.zero_grad()
        scaler.scale(terms["total"]).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        history.append(d.mean(terms["total"].item()))
        if log and it % 50 == 0:
            log(f"alignment {it}: loss {np.mean(history[-50:]):.4f} (symmetry {terms['symmetry'].item():.4f}, "
                f"restoration {terms['restoration'].item():.4f})")
        _save_stage(run, it, d, model, opt, rng, sched, scaler, {"stage": "alignment", "history": history})
        if d.any(time.perf_counter() - t0 > opts.align_minutes * 60.0):
            break
    net.eval()
    err = angle_errors(net, val)
    info = {"iters_done": it, "seconds": round(time.perf_counter() - t0, 1), "loss_first": history[0],
            "loss_last": float(np.mean(history[-20:])), "val_angle_error_mean_deg": float(err.mean()) if err.size
            else None, "val_angle_error_max_deg": float(err.max()) if err.size else None,
            "optimizer": "Adam", "lr": opts.align_lr, "batch_size": opts.align_batch, "history": history}
    if log:
        log(f"alignment done: {it} iterations, {info['seconds']} s, validation angle error "
            f"{info['val_angle_error_mean_deg']} deg mean, {info['val_angle_error_max_deg']} max")
    return net, info


def aligned_volumes(cases: Sequence[dict], poses: np.ndarray, config):
    """(volumes, labels): every case on the segmenter's grid under its pose, (z, s, s) float32 and bool."""
    import torch
    from StrokeLesionLib.lesion_models.sean.alignment import warp_volumes
    grid = (config.grid_size, config.grid_size)
    sp = (config.grid_spacing_mm, config.grid_spacing_mm)
    vols, labs = [], []
    with torch.no_grad():
        for c, pose in zip(cases, poses):
            p = torch.from_numpy(np.asarray(pose, np.float32))[None]
            x = torch.from_numpy(c["x"])[None]
            vols.append(warp_volumes(x, p, grid, sp, c["spacing_xyz"][:2], c["background"])[0].numpy())
            les = torch.from_numpy(c["lesion"].astype(np.float32))[None]
            labs.append(warp_volumes(les, p, grid, sp, c["spacing_xyz"][:2])[0].numpy() > 0.5)
    return vols, labs


def validation_dice(net, volumes, labels) -> float:
    """Mean 3D Dice (p > 0.5) on the segmenter's grid."""
    import torch
    from StrokeLesionLib.metrics import dice
    from StrokeLesionLib.lesion_models.sean.inference import aligned_probability
    scores = [dice(aligned_probability(net, torch.from_numpy(v)).numpy() > 0.5, lab) for v, lab in zip(volumes, labels)]
    return float(np.mean(scores)) if scores else float("nan")


def train_segmenter(config, train_vols, train_labs, val_vols, val_labs, opts: TrainOptions,
                    log: Optional[Callable] = None, run: Optional[Run] = None):
    """Stage 2. Returns (net in its best validation state, history dict)."""
    import torch
    from StrokeLesionLib.lesion_models.sean.model import HybridUNet
    from training.common.distributed import step_rng
    from training.lesion_data.segmentation_losses import generalised_dice_loss, one_hot, weighted_cross_entropy
    torch.manual_seed(opts.seed + 1)
    d, rng, model, net = _stage_setup(run, opts.seed + 1, HybridUNet(config))
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, opts.lr_decay_every, 0.5) if opts.lr_decay_every else None
    scaler = d.scaler()
    t0 = time.perf_counter()
    history, best, bad, it = [], {"dice": -1.0, "iter": 0, "state": None}, 0, 0
    saved = _resume_stage(run, "segmenter", d, model, opt, rng, sched, scaler)
    if saved is not None:
        history, bad, it = list(saved["history"]), int(saved["bad"]), int(saved["iteration"])
        best = {"dice": float(saved["best_dice"]), "iter": int(saved["best_iter"]), "state": saved.get("best_state")}
    for it in range(it + 1, opts.seg_iters + 1):
        model.train()
        x, y = (torch.from_numpy(a[d.share(opts.batch_size)]).to(d.device) for a in segmentation_batch(
            train_vols, train_labs, step_rng(opts.seed + 1, it), config.context_slices,
            opts.batch_size * d.world_size, opts.lesion_fraction))
        with d.autocast():
            logits = model(x).float()
            loss = (generalised_dice_loss(torch.softmax(logits, 1), one_hot(y, 2))
                    + weighted_cross_entropy(logits, y, (1.0, opts.lesion_weight)))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if sched is not None:
            sched.step()
        history.append(d.mean(loss.item()))
        out_of_time = d.any(time.perf_counter() - t0 > opts.seg_minutes * 60.0)
        if val_vols and (it % opts.eval_every == 0 or it == opts.seg_iters or out_of_time):
            score = d.agreed(validation_dice(net, val_vols, val_labs))
            if score > best["dice"]:
                best = {"dice": score, "iter": it,
                        "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}
                bad = 0
            else:
                bad += 1
            if log:
                log(f"segmenter {it}: loss {np.mean(history[-opts.eval_every:]):.4f}, validation Dice {score:.3f} "
                    f"(best {best['dice']:.3f} at {best['iter']}), {time.perf_counter() - t0:.0f} s")
            if bad >= opts.patience:
                break
        _save_stage(run, it, d, model, opt, rng, sched, scaler, {
            "stage": "segmenter", "history": history, "bad": bad, "best_dice": best["dice"], "best_iter": best["iter"],
            **({"best_state": best["state"]} if best["state"] is not None else {})})
        if out_of_time:
            break
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    net.eval()
    info = {"iters_done": it, "best_iter": best["iter"], "best_val_dice": best["dice"],
            "seconds": round(time.perf_counter() - t0, 1), "loss_first": history[0],
            "loss_last": float(np.mean(history[-20:])), "optimizer": "Adam", "lr": opts.lr,
            "lr_decay_every": opts.lr_decay_every, "batch_size": opts.batch_size,
            "lesion_weight": opts.lesion_weight, "lesion_fraction": opts.lesion_fraction, "history": history}
    return net, info


def save_checkpoint(net, path: Path, meta: dict) -> None:
    from training.common.weights_io import write_checkpoint
    from AIFSelectorLib.models.blocks import count_parameters
    meta = {**meta, "n_parameters": count_parameters(net), "date": time.strftime("%Y-%m-%d")}
    write_checkpoint({"format": 1, "config": net.config.to_dict(), "state_dict": net.state_dict(), "meta": meta}, path)


def load_cases(args, log) -> Dict[str, List[dict]]:
    if args.data == "phantom":
        train = phantom_cases(range(TRAIN_SEED0, TRAIN_SEED0 + args.n_train))
        val = phantom_cases(range(VAL_SEED0, VAL_SEED0 + args.n_val))
        seeds = {"train_seeds": [TRAIN_SEED0, TRAIN_SEED0 + args.n_train - 1],
                 "val_seeds": [VAL_SEED0, VAL_SEED0 + args.n_val - 1]}
    else:
        if args.root is None:
            raise SystemExit("--data aisd needs --root DIR")
        train, val = aisd_cases(args.root, "train"), aisd_cases(args.root, "val")
        seeds = {"train_cases": [c["name"] for c in train], "val_cases": [c["name"] for c in val]}
    log(f"{len(train)} training and {len(val)} validation cases ({args.data})")
    return {"train": train, "val": val, "meta": seeds}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m training.sean.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="sean", help="segmenter checkpoint name (<out>/<name>.pt)")
    p.add_argument("--alignment-name", default="sean_alignment")
    p.add_argument("--data", choices=("phantom", "aisd"), default="phantom")
    p.add_argument("--root", type=Path)
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--n-val", type=int, default=6)
    p.add_argument("--attention", choices=("symmetric", "self", "none"), default="symmetric")
    p.add_argument("--no-alignment", action="store_true", help="ablation: segment the images as acquired")
    p.add_argument("--alignment-from", type=Path, help="a models folder whose manifest holds the alignment network")
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 48])
    p.add_argument("--context-slices", type=int, default=1, help="T: 2T+1 adjacent slices")
    p.add_argument("--partitions", type=int, nargs=2, default=[4, 2], metavar=("P", "Q"))
    p.add_argument("--align-iters", type=int, default=600)
    p.add_argument("--align-fraction", type=float, default=0.2, help="share of --max-minutes for stage 1")
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay-every", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--lesion-weight", type=float, default=1.0, help="cross-entropy weight of the infarct class")
    p.add_argument("--lesion-fraction", type=float, default=0.5, help="share of slice stacks holding infarct")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--max-minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cuda: one GPU per process under torchrun (NCCL, float16 autocast); cpu: gloo")
    p.add_argument("--state-every", type=int, default=0, help="iterations between resumable states (0: none)")
    p.add_argument("--resume", type=Path, help="a state.pt to continue from (same number of processes)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from AIFSelectorLib.models.weights import load_checkpoint
    from StrokeLesionLib.lesion_models.sean.alignment import AlignmentConfig, build_alignment
    from StrokeLesionLib.lesion_models.sean.model import SEANConfig
    from training.common.distributed import setup
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    d = setup(args.device)
    resume = None
    if args.resume is not None:
        resume = {"path": args.resume, "extra": torch.load(args.resume, map_location="cpu", weights_only=True)["extra"]}
    run = Run(d, args.out / "state.pt" if args.state_every else None, args.state_every, resume)

    def log(msg):
        if d.is_main:
            print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    seg_cfg = SEANConfig(context_slices=args.context_slices, widths=tuple(args.widths),
                         partitions=tuple(args.partitions), attention=args.attention, aligned=not args.no_alignment)
    data = load_cases(args, log)
    train = normalised_cases(data["train"], seg_cfg.hu_window)
    val = normalised_cases(data["val"], seg_cfg.hu_window)
    resumes_segmenter = resume is not None and resume["extra"].get("stage") == "segmenter"
    train_alignment_here = not args.no_alignment and args.alignment_from is None and not resumes_segmenter
    align_minutes = args.max_minutes * args.align_fraction if train_alignment_here else 0.0
    opts = TrainOptions(align_iters=args.align_iters, align_minutes=align_minutes, seg_iters=args.iters, lr=args.lr,
                        lr_decay_every=args.lr_decay_every, batch_size=args.batch_size, eval_every=args.eval_every,
                        patience=args.patience, seed=args.seed, lesion_weight=args.lesion_weight,
                        lesion_fraction=args.lesion_fraction)
    command = "python -m training.sean.train " + " ".join(str(a) for a in (argv if argv is not None else sys.argv[1:]))
    result = {"data": data["meta"]}
    if args.no_alignment:
        train_poses, val_poses = np.zeros((len(train), 3)), np.zeros((len(val), 3))
    else:
        if train_alignment_here:
            align, info = train_alignment(train, val, AlignmentConfig(hu_window=seg_cfg.hu_window), opts, log, run)
            history = info.pop("history")
            if d.is_main:
                save_checkpoint(align, args.out / f"{args.alignment_name}.pt",
                                {"version": f"{args.alignment_name}-{VERSION}", "training_command": command,
                                 **data["meta"], **info, "loss_history_every_10": history[::10],
                                 "threads": args.threads, "processes": d.world_size})
            d.barrier()
            result["alignment"] = info
        elif resumes_segmenter and args.alignment_from is None:  # the alignment stage 1 of this run wrote
            saved = torch.load(args.out / f"{args.alignment_name}.pt", map_location="cpu", weights_only=True)
            align = build_alignment(saved["config"])
            align.load_state_dict(saved["state_dict"])
            align.eval()
        else:
            align, _ = load_checkpoint(args.alignment_name, build_alignment, folder=args.alignment_from,
                                       label="SEAN alignment")
        train_poses, val_poses = estimate_poses(align, train), estimate_poses(align, val)
    train_vols, train_labs = aligned_volumes(train, train_poses, seg_cfg)
    val_vols, val_labs = aligned_volumes(val, val_poses, seg_cfg)
    opts.seg_minutes = max(0.1, args.max_minutes - (time.perf_counter() - t_start) / 60.0)
    log(f"segmenter: attention {seg_cfg.attention}, aligned {seg_cfg.aligned}, {opts.seg_minutes:.1f} min")
    net, info = train_segmenter(seg_cfg, train_vols, train_labs, val_vols, val_labs, opts, log, run)
    history = info.pop("history")
    args.out.mkdir(parents=True, exist_ok=True)  # every iteration's loss (mean over the processes), per rank
    (args.out / f"losses.rank{d.rank}.json").write_text(json.dumps(history), encoding="utf-8")
    result["segmenter"] = info
    if d.is_main:
        save_checkpoint(net, args.out / f"{args.name}.pt",
                        {"version": f"{args.name}-{VERSION}", "training_command": command, **data["meta"], **info,
                         "loss_history_every_10": history[::10], "threads": args.threads,
                         "processes": d.world_size, "total_train_seconds": round(time.perf_counter() - t_start, 1)})
        log(f"saved {args.out / (args.name + '.pt')}: best validation Dice {info['best_val_dice']:.3f}")
        print(json.dumps({k: {kk: vv for kk, vv in v.items()} for k, v in result.items()}, default=str))
    d.close()
    return result


if __name__ == "__main__":
    main()
