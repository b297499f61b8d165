"""Trains pseudo-DWI + SLNet (or an ablation / the maps-only SLNet baseline) on 2D slices.

    python -m training.pseudodwi.train --out /tmp/pdwi [--mode end_to_end|sequential] [--slnet-inputs maps]
        [--synthesis-inputs fo|fo_fl|fo_fl_fh] [--no-se] [--slnet-norm batch] [--max-minutes 12] [--threads 1]

Optimiser defaults: Adam, learning rate 1e-4, weight decay 1e-5, 2D slices in mini-batches, as we recall
Wang et al. (MedIA 2020); the paper could not be consulted offline, so treat these as unverified. The
shipped CPU-sized runs use a larger rate, halved every 400 iterations (see reproduce.py).
The context encoder Phi_c is first trained on the real DWI slices (regressing the slice's lesion area
fraction, ``--context-iters``) and then frozen, so the context loss compares fixed lesion-context features.

Under ``torchrun --nproc_per_node N`` the stages run with DistributedDataParallel (each process draws its own
batches; global batch N x ``--batch-size``; the context encoder is pretrained identically on every process);
``--state-every N`` writes ``<out>/state.pt`` (stage, network, optimiser, schedule, step, every rank's random
state) and ``--resume`` continues from it (training.common.distributed).

Modes: 'end_to_end' minimises L = L_s + alpha L_g + beta L_e over every network at once; 'sequential'
trains Phi_e on L_e, then Phi_g on L_g (Phi_e frozen), then SLNet on L_s (both frozen), the iteration and
time budgets split 1/4, 1/4, 1/2. Early stopping on the validation Dice (whole cases, 3D) with
``--patience`` evaluations; the best state is saved as ``<out>/<name>.pt`` in the checkpoint format of
``AIFSelectorLib.models.weights``.
"""
import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .data import TRAIN_SEED0, VAL_SEED0, cached_phantoms, isles_samples, random_batch
from .losses import LossWeights, total_loss

PAPER_LR = 1e-4
PAPER_WEIGHT_DECAY = 1e-5


@dataclass
class TrainOptions:
    mode: str = "end_to_end"
    iters: int = 1500
    batch_size: int = 8
    crop: int = 96
    lr: float = PAPER_LR
    weight_decay: float = PAPER_WEIGHT_DECAY
    lr_decay_every: int = 0
    """Halve the learning rate every this many iterations (0: constant)."""
    eval_every: int = 100
    patience: int = 6
    max_minutes: float = 20.0
    context_iters: int = 150
    seed: int = 0
    losses: LossWeights = field(default_factory=LossWeights)


def pretrain_context(context, samples, opts: TrainOptions, log=None) -> None:
    """Phi_c + a linear head regress each real DWI slice's lesion area fraction; Phi_c is then frozen."""
    import torch
    if context is None:
        return
    rng = np.random.default_rng(opts.seed + 1)
    head = torch.nn.Linear(context.net[-2].out_channels, 1)
    opt = torch.optim.Adam(list(context.parameters()) + list(head.parameters()), lr=1e-3)
    context.train()
    for it in range(opts.context_iters):
        b = random_batch(samples, rng, opts.batch_size, opts.crop)
        frac = torch.from_numpy(b["lesion"].mean(axis=(1, 2)).astype(np.float32)) * 10.0
        loss = ((head(context(torch.from_numpy(b["dwi"])))[:, 0] - frac) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (it + 1) % 50 == 0:
            log(f"context encoder {it + 1}: loss {loss.item():.4f}")
    for p in context.parameters():
        p.requires_grad_(False)
    context.eval()


def validation_dice(model, samples) -> float:
    """Mean 3D Dice of (p > 0.5) inside the brain over the validation cases."""
    from StrokeLesionLib.metrics import dice
    from StrokeLesionLib.lesion_models.pseudodwi.inference import predict_slices
    scores = []
    for s in samples:
        prob, _ = predict_slices(model, s["x"])
        scores.append(dice((prob > 0.5) & (s["x"][-1] > 0), s["lesion"]))
    return float(np.mean(scores)) if scores else float("nan")


def stage_modules(model, stage: str):
    """The sub-networks a stage trains."""
    if stage == "extractor":
        return [model.extractor]
    if stage == "generator":
        return [model.generator]
    if stage == "segmenter":
        return [model.slnet]
    return [m for m in (model.extractor, model.generator, model.slnet) if m is not None]


def stages_of(model, mode: str) -> List[tuple]:
    """[(stage, fraction of the budget)] for the mode and network."""
    if mode == "end_to_end" or not model.config.synthesises:
        return [("end_to_end", 1.0)]
    if model.extractor is None:
        return [("generator", 1 / 3), ("segmenter", 2 / 3)]
    return [("extractor", 0.25), ("generator", 0.25), ("segmenter", 0.5)]


def run_training(model, train_samples: Sequence[dict], val_samples: Sequence[dict], opts: TrainOptions,
                 log: Optional[Callable] = None, distributed=None, state_path: Optional[Path] = None,
                 state_every: int = 0, resume: Optional[Path] = None) -> Dict[str, object]:
    """Trains ``model`` in place (ending with its best validation state) and returns the history:
    'history' [(iteration, stage, total loss)], 'best_val_dice', 'best_iter', 'iters_done', 'seconds'.
    distributed: this process's place in a torchrun run (default: alone); state_path, state_every: a resumable
    state every ``state_every`` iterations; resume: such a state to continue from."""
    import torch
    from training.common.distributed import Distributed, load_state, rank_rng, save_state, step_rng
    d = distributed or Distributed()
    t_start = time.perf_counter()
    rng = rank_rng(opts.seed, d) if d.active else np.random.default_rng(opts.seed)
    torch.manual_seed(opts.seed)
    saved = torch.load(resume, map_location="cpu", weights_only=True)["extra"] if resume is not None else None
    if saved is None:
        pretrain_context(model.context, train_samples, opts, log)
    elif model.context is not None:  # the state holds the pretrained encoder: frozen, as after pretraining
        for p in model.context.parameters():
            p.requires_grad_(False)
        model.context.eval()
    wrapped = d.wrap(model, find_unused=opts.mode == "sequential")  # a stage leaves other networks out
    history, best = [], {"dice": -1.0, "iter": 0, "state": None}
    it_total = 0
    budget_s = opts.max_minutes * 60.0
    frac_left = 1.0
    for stage_index, (stage, frac) in enumerate(stages_of(model, opts.mode)):
        modules = stage_modules(model, stage)
        params = [p for m in modules for p in m.parameters()]
        opt = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
        sched = (torch.optim.lr_scheduler.StepLR(opt, opts.lr_decay_every, 0.5) if opts.lr_decay_every else None)
        scaler = d.scaler()
        n_iters = max(1, int(round(opts.iters * frac)))
        stage_end = time.perf_counter() + frac / frac_left * (budget_s - (time.perf_counter() - t_start))
        frac_left -= frac
        segmenting = stage in ("end_to_end", "segmenter")
        bad, first = 0, 1
        if saved is not None:
            if stage_index < saved["stage_index"]:
                continue  # done before the state was written: its weights are in the state
            extra = load_state(resume, d, wrapped, opt, rng, sched, scaler)["extra"]
            history, it_total, bad, first = list(extra["history"]), int(extra["it_total"]), int(extra["bad"]), \
                int(extra["iteration"]) + 1
            best = {"dice": float(extra["best_dice"]), "iter": int(extra["best_iter"]),
                    "state": extra.get("best_state")}
            saved = None
            if log:
                log(f"resumed {stage} at iteration {first} from {resume}")
        for it in range(first, n_iters + 1):
            model.eval()
            for m in modules:
                m.train()
            global_batch = random_batch(train_samples, step_rng(opts.seed, it_total + 1),
                                        opts.batch_size * d.world_size, opts.crop)  # the same on every rank
            b = {k: torch.from_numpy(v[d.share(opts.batch_size)]).to(d.device) for k, v in global_batch.items()}
            with d.autocast():
                out = wrapped(b["x"])
                terms = total_loss(out, b["dwi"], b["lesion"], b["weight_map"], model.context, opts.losses, stage)
            opt.zero_grad()
            scaler.scale(terms["total"]).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            it_total += 1
            history.append((it_total, stage, d.mean(terms["total"].item())))
            out_of_time = d.any(time.perf_counter() > stage_end)
            if segmenting and val_samples and (it % opts.eval_every == 0 or it == n_iters or out_of_time):
                score = d.agreed(validation_dice(model, val_samples))
                if score > best["dice"]:
                    best = {"dice": score, "iter": it_total,
                            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                    bad = 0
                else:
                    bad += 1
                if log:
                    recent = np.mean([h[2] for h in history[-opts.eval_every:]])
                    log(f"{stage} iter {it_total}: loss {recent:.4f}  "
                        + " ".join(f"{k} {v.item():.3f}" for k, v in terms.items() if k != "total")
                        + f"  val Dice {score:.3f} (best {best['dice']:.3f} @ {best['iter']})  "
                        f"{time.perf_counter() - t_start:.0f} s")
                if bad >= opts.patience:
                    break
            elif log and it % opts.eval_every == 0:
                log(f"{stage} iter {it_total}: loss {np.mean([h[2] for h in history[-opts.eval_every:]]):.4f}  "
                    f"{time.perf_counter() - t_start:.0f} s")
            if state_path is not None and state_every and it_total % state_every == 0:
                save_state(state_path, d, wrapped, opt, it_total, rng, sched, scaler, extra={
                    "stage_index": stage_index, "stage": stage, "iteration": it, "it_total": it_total,
                    "history": history, "bad": bad, "best_dice": best["dice"], "best_iter": best["iter"],
                    **({"best_state": best["state"]} if best["state"] is not None else {})})
            if out_of_time:
                break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {"history": history, "best_val_dice": best["dice"], "best_iter": best["iter"], "iters_done": it_total,
            "seconds": time.perf_counter() - t_start}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.pseudodwi.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default=None, help="checkpoint name (default: pseudodwi, or slnet_maps for maps only)")
    p.add_argument("--data", choices=("phantom", "isles2018"), default="phantom")
    p.add_argument("--root", type=Path, help="ISLES 2018 TRAINING folder (--data isles2018)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="ISLES 2018 cases held out for validation")
    p.add_argument("--cache", type=Path, default=Path("/tmp/pseudodwi-cache"))
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--n-val", type=int, default=6)
    p.add_argument("--mode", choices=("end_to_end", "sequential"), default="end_to_end")
    p.add_argument("--slnet-inputs", choices=("pdwi_maps", "pdwi", "maps"), default="pdwi_maps")
    p.add_argument("--synthesis-inputs", choices=("fo", "fo_fl", "fo_fl_fh"), default="fo_fl_fh")
    p.add_argument("--slnet-norm", choices=("switchable", "batch", "instance", "none"), default="switchable")
    p.add_argument("--no-se", action="store_true", help="SLNet without squeeze-and-excitation")
    p.add_argument("--slnet-widths", type=int, nargs="+", default=[12, 24, 48, 64])
    p.add_argument("--synthesis-widths", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--no-context-loss", action="store_true", help="gamma = 0 (synthesis loss ablation)")
    p.add_argument("--unweighted-synthesis", action="store_true", help="A = 1 (w = 1; synthesis loss ablation)")
    p.add_argument("--no-hardness", action="store_true", help="plain generalised Dice (segmentation loss ablation)")
    p.add_argument("--iters", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--lr", type=float, default=PAPER_LR)
    p.add_argument("--weight-decay", type=float, default=PAPER_WEIGHT_DECAY)
    p.add_argument("--lr-decay-every", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--context-iters", type=int, default=150)
    p.add_argument("--max-minutes", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cuda: one GPU per process under torchrun (NCCL, float16 autocast); cpu: gloo")
    p.add_argument("--state-every", type=int, default=0, help="iterations between resumable states (0: none)")
    p.add_argument("--resume", type=Path, help="a state.pt to continue from (same number of processes)")
    return p


def main(argv=None) -> Dict[str, object]:
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(max(1, args.threads))
    from AIFSelectorLib.errors import InputError
    from training.common.weights_io import file_fields, update_manifest, write_checkpoint
    from StrokeLesionLib.lesion_models.pseudodwi.model import PseudoDWIConfig, PseudoDWINet, parameter_counts
    from training.common.distributed import setup
    d = setup(args.device)

    def log(msg):
        if d.is_main:
            print(msg, flush=True)

    config = PseudoDWIConfig(synthesis_inputs=args.synthesis_inputs, slnet_inputs=args.slnet_inputs,
                             slnet_norm=args.slnet_norm, slnet_se=not args.no_se,
                             slnet_widths=tuple(args.slnet_widths), extractor_widths=tuple(args.synthesis_widths),
                             generator_widths=tuple(args.synthesis_widths))
    weights = LossWeights(gamma=0.0 if args.no_context_loss else LossWeights.gamma,
                          hardness=0.0 if args.no_hardness else LossWeights.hardness)
    opts = TrainOptions(mode=args.mode, iters=args.iters, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
                        weight_decay=args.weight_decay, lr_decay_every=args.lr_decay_every,
                        eval_every=args.eval_every, patience=args.patience, max_minutes=args.max_minutes,
                        context_iters=args.context_iters, seed=args.seed, losses=weights)
    t0 = time.perf_counter()
    if d.active and not d.is_main:
        d.barrier()  # rank 0 fills the phantom cache first; the others then read it
    if args.data == "phantom":
        train_seeds = list(range(TRAIN_SEED0, TRAIN_SEED0 + args.n_train))
        val_seeds = list(range(VAL_SEED0, VAL_SEED0 + args.n_val))
        train = cached_phantoms(train_seeds, args.cache, log)
        val = cached_phantoms(val_seeds, args.cache, log)
    else:
        if args.root is None:
            raise InputError("--data isles2018 needs --root DIR")
        cases = isles_samples(args.root, log)
        n_val = max(1, int(round(args.val_fraction * len(cases))))
        train, val = cases[n_val:], cases[:n_val]
        train_seeds, val_seeds = [s["name"] for s in train], [s["name"] for s in val]
    if d.active and d.is_main:
        d.barrier()
    if args.unweighted_synthesis:
        for s in train:
            s["weight_map"] = np.ones_like(s["weight_map"])
    data_s = time.perf_counter() - t0
    log(f"data: {len(train)} training, {len(val)} validation cases ({data_s:.0f} s)")
    torch.manual_seed(args.seed)  # the initial weights too come from the seed (they did not before)
    model = PseudoDWINet(config)
    counts = parameter_counts(model)
    log(f"parameters: {counts}")
    result = run_training(model, train, val, opts, log, distributed=d,
                          state_path=args.out / "state.pt" if args.state_every else None,
                          state_every=args.state_every, resume=args.resume)
    name = args.name or ("slnet_maps" if args.slnet_inputs == "maps" else "pseudodwi")
    args.out.mkdir(parents=True, exist_ok=True)  # every iteration's loss (mean over the processes), per rank
    (args.out / f"losses.rank{d.rank}.json").write_text(json.dumps([h[2] for h in result["history"]]),
                                                         encoding="utf-8")
    if not d.is_main:
        d.close()
        return {}
    command = "python -m training.pseudodwi.train " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"version": f"{name}-dev", "n_parameters": counts["inference"], "parameter_counts": counts,
            "training_command": command,
            "data": args.data, "train_seeds": [train_seeds[0], train_seeds[-1]] if train_seeds else [],
            "val_seeds": [val_seeds[0], val_seeds[-1]] if val_seeds else [],
            "best_val_dice": result["best_val_dice"], "best_iter": result["best_iter"],
            "iters_done": result["iters_done"], "train_seconds": round(result["seconds"], 1),
            "data_seconds": round(data_s, 1), "optimizer": "Adam", "lr": opts.lr, "weight_decay": opts.weight_decay,
            "batch_size": opts.batch_size, "crop": opts.crop, "mode": opts.mode, "threads": args.threads,
            "processes": d.world_size,
            "losses": weights.to_dict(), "date": time.strftime("%Y-%m-%d")}
    path = write_checkpoint({"format": 1, "config": config.to_dict(), "state_dict": model.state_dict(), "meta": meta},
                            args.out / f"{name}.pt")
    update_manifest({name: {**file_fields(path),
                            "version": meta["version"], "config": config.to_dict(),
                            "n_parameters": counts["inference"], "training_command": meta["training_command"]}},
                    folder=args.out)
    (args.out / f"{name}_history.json").write_text(json.dumps(result["history"]) + "\n", encoding="utf-8")
    log(f"saved {args.out / (name + '.pt')}: best validation Dice {result['best_val_dice']:.3f} at iteration "
        f"{result['best_iter']} ({result['iters_done']} iterations, {result['seconds']:.0f} s)")
    d.close()
    return {"checkpoint": args.out / f"{name}.pt", **meta}


if __name__ == "__main__":
    main()
    sys.exit(0)
