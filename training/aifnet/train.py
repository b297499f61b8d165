"""Train one AIFNet model (AIF or VOF) on phantom cases (and optionally annotated ISLES 2018 cases).

    python -m training.aifnet.train --kind aif --out runs/aif [--n-train 48 --n-val 8 --iters 3000]
    torchrun --nproc_per_node 2 -m training.aifnet.train --kind aif --out runs/aif [--state-every 100]
    python -m training.aifnet.train --kind aif --out runs/aif --resume runs/aif/state.pt

Under torchrun every process trains on its share of each step's global batch (``--batch-size`` per process x
the number of processes, drawn the same on every rank; training.common.distributed) and DistributedDataParallel
averages the gradients, so N processes of batch b take the steps one process of batch N x b takes;
``--state-every N`` writes a resumable state (model, optimiser, schedule, step) to ``<out>/state.pt``.

Pearson-correlation loss (the mean over the batch), SGD with momentum, batch size 1 by default (the shipped
weights were trained so), perfusion-specific augmentation, early
stopping on the validation split (best validation mean r kept). Writes ``<out>/aifnet_<kind>.pt``
(config + state_dict + training metadata) and ``<out>/history.json``.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from AIFSelectorLib.input_functions.aifnet.config import AIFNetConfig, network_frames
from AIFSelectorLib.models.blocks import count_parameters
from training.common.distributed import Distributed, load_state, save_state, setup, step_rng, unwrap
from training.common.weights_io import write_checkpoint

from .ablation import build_model, segmentation_loss
from .augmentation import augment
from .data import TRAIN_SEED0, VAL_SEED0, cached_phantoms, isles_samples
from .losses import pearson_loss

DEFAULT_LAYERS = {"aif": 5, "vof": 2}


def _to_tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def predict_sample(model, sample, device="cpu"):
    """(curve (t,), pvol (z, y, x)) of the model on a whole sample, full-length series (no grad)."""
    cfg = model.config
    xin = network_frames(sample["x"], sample["times_s"], cfg.n_frames, cfg.dt_s)
    with torch.no_grad():
        curve, pvol = model(_to_tensor(xin)[None].to(device), _to_tensor(sample["x"])[None].to(device))
    return curve[0].cpu().numpy(), pvol[0].cpu().numpy()


def validation_r(model, samples, kind: str) -> float:
    model.eval()
    rs = []
    for s in samples:
        if s.get(kind) is None:
            continue
        curve, _ = predict_sample(model, s, next(model.parameters()).device)
        rs.append(float(np.corrcoef(curve, s[kind])[0, 1]))
    model.train()
    return float(np.mean(rs)) if rs else float("nan")


def train_model(kind: str, train: List[Dict], val: List[Dict], config: Optional[AIFNetConfig] = None,
                variant: str = "pvol", iters: int = 3000, lr: float = 0.01, momentum: float = 0.9,
                eval_every: int = 100, patience: int = 8, seed: int = 0, max_minutes: Optional[float] = None,
                normalise_gradient: bool = True, log=print, distributed: Optional[Distributed] = None,
                state_path: Optional[Path] = None, state_every: int = 0, resume: Optional[Path] = None,
                batch_size: int = 1) -> Dict:
    """Trains and returns {'model', 'history', 'best_val_r', 'iters_done', 'seconds', 'losses'}.

    config: network configuration; by default K=5 (aif) / 2 (vof), n_frames = the shortest training series.
    distributed: this process's place in a torchrun run (default: alone). batch_size: samples per process and
    iteration (the loss is their mean). state_path, state_every: a resumable state every ``state_every``
    iterations; resume: such a state to continue from. 'losses': the loss of every iteration (mean over the
    processes). Iteration k's samples come from step_rng(seed, k): the same global batch whatever the number
    of processes.
    """
    train = [s for s in train if s.get(kind) is not None]
    if not train:
        raise ValueError(f"no training samples with a {kind} reference curve")
    n_frames = min(int(s["x"].shape[0]) for s in train)
    if config is None:
        config = AIFNetConfig(n_frames=n_frames, n_layers=DEFAULT_LAYERS[kind], kind=kind)
    if config.n_frames > n_frames:
        raise ValueError(f"the network takes {config.n_frames} frames, the shortest training series has {n_frames}")
    d = distributed or Distributed()
    if d.active and variant == "segmentation":
        raise ValueError("the segmentation ablation calls the network's logits directly, outside "
                         "DistributedDataParallel: train it in one process")
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = d.wrap(build_model(config, variant))
    core = unwrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iters), eta_min=lr * 0.05)
    scaler = d.scaler()
    history = {"iter": [], "train_loss": [], "val_r": []}
    best = {"r": -np.inf, "state": None, "iter": 0}
    bad, running, losses, t0 = 0, [], [], time.perf_counter()
    T = config.n_frames
    first = 1
    if resume is not None:
        extra = load_state(resume, d, model, opt, None, sched, scaler)["extra"]
        first = int(extra["iteration"]) + 1
        history, bad, running, losses = extra["history"], int(extra["bad"]), list(extra["running"]), list(extra["losses"])
        best = {"r": float(extra["best_r"]), "state": extra.get("best_state"), "iter": int(extra["best_iter"])}
        log(f"[{kind}] resumed from {resume} at iteration {first}")
    model.train()
    it = first - 1
    for it in range(first, iters + 1):
        picks = step_rng(seed, it).integers(len(train), size=batch_size * d.world_size)  # the global batch
        places = range(*d.share(batch_size).indices(len(picks)))
        samples = [augment(train[int(picks[j])], step_rng(seed, it, j)) for j in places]
        x = torch.stack([_to_tensor(s["x"][:T]) for s in samples]).to(d.device)
        target = torch.stack([_to_tensor(s[kind][:T]) for s in samples]).to(d.device)
        with d.autocast():
            if variant == "segmentation":
                masks = [np.ascontiguousarray(s["artery_mask" if kind == "aif" else "vein_mask"]) for s in samples]
                logits = core.logits(x)
                loss = sum(segmentation_loss(logits[i:i + 1], torch.from_numpy(m)[None].to(d.device))
                           for i, m in enumerate(masks)) / len(masks)
            elif variant == "regression":
                loss = pearson_loss(model(x), target)
            else:
                pred, _ = model(x)
                loss = pearson_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # the gradient as computed, for its norm
        if normalise_gradient:
            # SGD with momentum on the unit-normalised gradient: the softmax over ~10^5 voxels makes the
            # raw gradient ~1e-4 at the start (arteries are ~0.1 % of the voxels), too small for plain SGD
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            if float(gn) > 0:
                for q in model.parameters():
                    if q.grad is not None:
                        q.grad.mul_(1.0 / float(gn))
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        step_loss = d.mean(float(loss.detach()))
        running.append(step_loss)
        losses.append(step_loss)
        if it % eval_every == 0 or it == iters:
            vr = d.agreed(validation_r(core, val, kind)) if (val and variant != "regression") else float("nan")
            tl = float(np.mean(running))
            running = []
            history["iter"].append(it)
            history["train_loss"].append(tl)
            history["val_r"].append(vr)
            log(f"[{kind}] iter {it:5d}  train loss {tl:.4f}  val r {vr:.4f}  "
                f"({time.perf_counter() - t0:.0f} s)")
            score = vr if np.isfinite(vr) else -tl
            if score > best["r"]:
                best = {"r": score, "state": {k: v.detach().clone() for k, v in core.state_dict().items()},
                        "iter": it}
                bad = 0
            else:
                bad += 1
                if bad >= patience:
                    log(f"[{kind}] early stop at iter {it} (best val r {best['r']:.4f} at iter {best['iter']})")
                    break
            if max_minutes is not None and d.any(time.perf_counter() - t0 > 60 * max_minutes):
                log(f"[{kind}] time budget reached at iter {it}")
                break
        if state_path is not None and state_every and it % state_every == 0:
            save_state(state_path, d, model, opt, it, None, sched, scaler, extra={
                "iteration": it, "history": history, "bad": bad, "running": running, "losses": losses,
                "best_r": float(best["r"]), "best_iter": int(best["iter"]),
                **({"best_state": best["state"]} if best["state"] is not None else {})})
    if best["state"] is not None:
        core.load_state_dict(best["state"])
    core.eval()
    return {"model": core, "history": history, "best_val_r": float(best["r"]), "best_iter": best["iter"],
            "iters_done": it, "seconds": time.perf_counter() - t0, "config": config, "losses": losses}


def save_checkpoint(path, result: Dict, extra: Optional[Dict] = None) -> Path:
    """config + state_dict + metadata (plain types only, loadable with torch.load(weights_only=True))."""
    model = result["model"]
    meta = {"best_val_r": result["best_val_r"], "best_iter": result["best_iter"],
            "iters_done": result["iters_done"], "train_seconds": round(result["seconds"], 1),
            "n_parameters": count_parameters(model)}
    meta.update(extra or {})
    return write_checkpoint({"format": "aifnet-v1", "config": model.config.to_dict(),
                             "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                             "meta": meta}, path)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m training.aifnet.train", description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("aif", "vof"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variant", choices=("pvol", "regression", "segmentation"), default="pvol")
    p.add_argument("--n-train", type=int, default=48, help="phantom training cases (seeds 1000+)")
    p.add_argument("--n-val", type=int, default=8, help="phantom validation cases (seeds 5000+)")
    p.add_argument("--isles-root", type=Path, help="ISLES 2018 TRAINING folder (case_N subfolders)")
    p.add_argument("--isles-csv", type=Path, help="annotation CSV case,function,z,y,x (see data.py)")
    p.add_argument("--cache", type=Path, help="folder caching generated phantoms (.npz)")
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--raw-gradient", action="store_true",
                   help="plain SGD on the raw gradient (default: unit-normalised gradient, see train_model)")
    p.add_argument("--layers", type=int, help="K (default 5 for aif, 2 for vof)")
    p.add_argument("--base-width", type=int, default=8)
    p.add_argument("--max-width", type=int, default=32, help="0: no cap (the paper's widths with --base-width 16)")
    p.add_argument("--n-frames", type=int, help="frames the network sees (default: shortest training series)")
    p.add_argument("--batch-size", type=int, default=1, help="samples per process and iteration")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cuda: one GPU per process under torchrun (NCCL, float16 autocast); cpu: gloo")
    p.add_argument("--state-every", type=int, default=0, help="iterations between resumable states (0: none)")
    p.add_argument("--resume", type=Path, help="a state.pt to continue from (same number of processes)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    d = setup(args.device)
    log = (lambda m: print(m, flush=True)) if d.is_main else (lambda m: None)  # noqa: E731
    t0 = time.perf_counter()
    train = cached_phantoms(range(TRAIN_SEED0, TRAIN_SEED0 + args.n_train), args.cache, log=log)
    val = cached_phantoms(range(VAL_SEED0, VAL_SEED0 + args.n_val), args.cache, log=log)
    if args.isles_root and args.isles_csv:
        isles = list(isles_samples(args.isles_root, args.isles_csv))
        n_val = max(1, len(isles) // 5)
        val += isles[:n_val]
        train += isles[n_val:]
    log(f"data ready in {time.perf_counter() - t0:.0f} s: {len(train)} train, {len(val)} val")
    n_frames = args.n_frames or min(int(s["x"].shape[0]) for s in train)
    config = AIFNetConfig(n_frames=n_frames, n_layers=args.layers or DEFAULT_LAYERS[args.kind],
                          base_width=args.base_width, max_width=args.max_width or None, kind=args.kind)
    result = train_model(args.kind, train, val, config, variant=args.variant, iters=args.iters, lr=args.lr,
                         momentum=args.momentum, eval_every=args.eval_every, patience=args.patience,
                         seed=args.seed, max_minutes=args.max_minutes,
                         normalise_gradient=not args.raw_gradient, log=log, distributed=d,
                         state_path=args.out / "state.pt" if args.state_every else None,
                         state_every=args.state_every, resume=args.resume, batch_size=args.batch_size)
    (args.out / f"losses.rank{d.rank}.json").parent.mkdir(parents=True, exist_ok=True)
    (args.out / f"losses.rank{d.rank}.json").write_text(json.dumps(result["losses"]))
    if not d.is_main:
        d.close()
        return 0
    cmd = "python -m training.aifnet.train " + " ".join(argv if argv is not None else sys.argv[1:])
    extra = {"training_command": cmd, "train_seeds": [TRAIN_SEED0, TRAIN_SEED0 + args.n_train - 1],
             "val_seeds": [VAL_SEED0, VAL_SEED0 + args.n_val - 1], "variant": args.variant,
             "lr": args.lr, "momentum": args.momentum, "batch_size": args.batch_size, "processes": d.world_size,
             "optimizer": "SGD, Nesterov momentum, " + ("raw" if args.raw_gradient else "unit-normalised") + " gradient",
             "date": time.strftime("%Y-%m-%d"), "isles_cases": bool(args.isles_root and args.isles_csv)}
    path = save_checkpoint(args.out / f"aifnet_{args.kind}.pt", result, extra)
    (args.out / "history.json").write_text(json.dumps(result["history"], indent=1))
    log(f"wrote {path} ({count_parameters(result['model'])} parameters, best val r {result['best_val_r']:.4f}, "
        f"{result['seconds']:.0f} s)")
    d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
