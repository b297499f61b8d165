"""Run by test_distributed_training.py under ``torchrun --nproc_per_node 2``: AIFNet trained on tiny phantoms
with DistributedDataParallel (gloo on the CPU), writing a resumable state; the losses of every iteration go to
OUT/losses.rank<R>.json.

    torchrun --standalone --nproc_per_node 2 ddp_aifnet.py OUT ITERS STATE_EVERY [RESUME] [BATCH]

BATCH: samples per process and iteration (default 1); RESUME may be '' (none).
"""
import json
import sys
from pathlib import Path

import torch

from AIFSelectorLib.input_functions.aifnet.model import AIFNetConfig
from training.aifnet.data import phantom_sample
from training.aifnet.train import train_model
from training.common.distributed import setup


def main(out, iters, state_every, resume="", batch="1"):
    out = Path(out)
    torch.set_num_threads(1)
    d = setup("cpu")
    samples = [phantom_sample(1000 + i, shape_zyx=(2, 48, 48), n_frames=30, spacing_mm=(3.6, 3.6, 6.0))
               for i in range(4)]
    cfg = AIFNetConfig(n_frames=30, n_layers=2, base_width=4, max_width=8)
    result = train_model("aif", samples, [], cfg, iters=int(iters), lr=0.03, eval_every=int(iters),
                         log=lambda m: None, distributed=d, state_path=out / "state.pt",
                         state_every=int(state_every), resume=Path(resume) if resume else None,
                         batch_size=int(batch))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"losses.rank{d.rank}.json").write_text(json.dumps({"world_size": d.world_size,
                                                               "losses": result["losses"]}))
    d.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
