"""5-fold cross-validation of AIFNet on phantom cases (and annotated ISLES 2018 cases).

    python -m training.aifnet.crossval --kind aif [--folds 5 --n-cases 40 --iters 1500]

The cases are split into folds; for each fold the model is trained on the others (one of which minus
its share serves as the early-stopping validation split) and tested on the held-out fold. Prints the
Pearson r of the predicted curve against the reference per fold and overall (mean, sd, p5, p95).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from AIFSelectorLib.input_functions.aifnet.model import AIFNetConfig

from .data import TRAIN_SEED0, cached_phantoms, isles_samples
from .metrics import pearson, summary
from training.common.distributed import setup

from .train import DEFAULT_LAYERS, predict_sample, train_model


def folds_of(n: int, k: int, seed: int = 0):
    idx = np.random.default_rng(seed).permutation(n)
    return [idx[i::k] for i in range(k)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.aifnet.crossval", description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("aif", "vof"), required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--n-cases", type=int, default=40, help="phantom cases (training seeds 1000+)")
    p.add_argument("--isles-root", type=Path)
    p.add_argument("--isles-csv", type=Path)
    p.add_argument("--cache", type=Path)
    p.add_argument("--iters", type=int, default=1500)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--base-width", type=int, default=8)
    p.add_argument("--max-width", type=int, default=32)
    p.add_argument("--layers", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    d = setup()  # under torchrun every fold trains on all ranks (DDP); rank 0 reports
    say = (lambda m: print(m, flush=True)) if d.is_main else (lambda m: None)  # noqa: E731
    cases = cached_phantoms(range(TRAIN_SEED0, TRAIN_SEED0 + args.n_cases), args.cache)
    if args.isles_root and args.isles_csv:
        cases += list(isles_samples(args.isles_root, args.isles_csv))
    cases = [c for c in cases if c.get(args.kind) is not None]
    n_frames = min(int(c["x"].shape[0]) for c in cases)
    per_fold, all_r = [], []
    for k, test_idx in enumerate(folds_of(len(cases), args.folds)):
        rest = [i for i in range(len(cases)) if i not in set(test_idx)]
        n_val = max(1, min(len(rest) // args.folds, len(rest) - 1))
        val, train = [cases[i] for i in rest[:n_val]], [cases[i] for i in rest[n_val:]]
        cfg = AIFNetConfig(n_frames=n_frames, n_layers=args.layers or DEFAULT_LAYERS[args.kind],
                           base_width=args.base_width, max_width=args.max_width or None, kind=args.kind)
        res = train_model(args.kind, train, val, cfg, iters=args.iters, lr=args.lr, momentum=args.momentum,
                          seed=k, log=lambda m: say(f"fold {k}: {m}"), distributed=d)
        rs = [pearson(predict_sample(res["model"], cases[i])[0], cases[i][args.kind]) for i in test_idx]
        all_r += rs
        per_fold.append({"fold": k, "n_test": len(rs), "r": summary(rs)})
        say(f"fold {k}: test r mean {np.mean(rs):.4f} (n={len(rs)})")
    total = summary(all_r)
    if not d.is_main:
        return 0
    print(f"{args.folds}-fold {args.kind.upper()} r: mean {total['mean']:.4f} sd {total['sd']:.4f} "
          f"p5 {total['p5']:.4f} p95 {total['p95']:.4f} (n={total['n']})")
    if args.json:
        args.json.write_text(json.dumps({"kind": args.kind, "folds": per_fold, "overall": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
