"""The paper's ablations on phantom data, each trained for the same short budget, and their held-out table:

    python -m training.pseudodwi.ablations [--minutes 3] [--out /tmp/pseudodwi-ablations] [--only no_se ...]

Rows: the full network (end to end), SLNet without squeeze-and-excitation, without switchable
normalisation (batch normalisation instead), synthesis inputs F_o and F_o + F_l (instead of
F_o + F_l + F_h), the synthesis loss without the context term and without the lesion weighting, the
segmentation loss without the hardness weighting, sequential instead of end-to-end training, and SLNet on
the maps alone. These runs are not shipped; they use the training and evaluation of ``train``/``evaluate``.
"""
import argparse
import sys
from pathlib import Path

ABLATIONS = {
    "full": [],
    "no_se": ["--no-se"],
    "no_sn": ["--slnet-norm", "batch"],
    "input_fo": ["--synthesis-inputs", "fo"],
    "input_fo_fl": ["--synthesis-inputs", "fo_fl"],
    "no_context_loss": ["--no-context-loss"],
    "unweighted_synthesis": ["--unweighted-synthesis"],
    "no_hardness": ["--no-hardness"],
    "sequential": ["--mode", "sequential"],
    "maps_only": ["--slnet-inputs", "maps"],
}
LABELS = {"full": "pseudo-DWI + SLNet (full)", "no_se": "SLNet without SE", "no_sn": "SLNet without SN",
          "input_fo": "synthesis from F_o", "input_fo_fl": "synthesis from F_o + F_l",
          "no_context_loss": "synthesis loss without context", "unweighted_synthesis": "synthesis loss, A = 1",
          "no_hardness": "segmentation loss, plain GDL", "sequential": "sequential training",
          "maps_only": "SLNet on CTP maps only"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.pseudodwi.ablations", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training budget of each run")
    p.add_argument("--out", type=Path, default=Path("/tmp/pseudodwi-ablations"))
    p.add_argument("--cache", type=Path, default=Path("/tmp/pseudodwi-cache"))
    p.add_argument("--only", nargs="+", choices=tuple(ABLATIONS), default=list(ABLATIONS))
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--eval-cases", type=int, default=20)
    args = p.parse_args(argv)
    from training.common.distributed import setup
    from . import evaluate, train
    from .reproduce import COMMON
    d = setup()  # under torchrun every rank trains; rank 0 evaluates
    for name in [n for n in args.only if not (args.out / f"{n}.pt").exists()]:  # decided before any training
        train.main(COMMON + ["--n-train", str(args.n_train), "--iters", "100000", "--max-minutes",
                                str(args.minutes), "--out", str(args.out), "--name", name, "--cache", str(args.cache)]
                   + ABLATIONS[name])
    if not d.is_main:
        return 0
    evaluate.ROW_LABELS.update(LABELS)
    evaluate.main(["--models", str(args.out), "--names", *args.only, "--n-cases", str(args.eval_cases),
                   "--cache", str(args.cache), "--json", str(args.out / "evaluation.json")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
