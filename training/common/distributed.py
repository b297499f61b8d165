"""Training across processes (``torchrun``) with DistributedDataParallel, and checkpoints that resume.

Every training entry point calls :func:`setup`: under ``torchrun --nproc_per_node N`` (which sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) it joins the process group, NCCL on GPUs and gloo on
the CPU, and :meth:`Distributed.wrap` puts the model in DistributedDataParallel, which averages the gradients
of every rank in each backward pass; alone it is a no-op (one process, the model as it is). The group is
joined once and left when the process ends: the scripts that train several models in turn (reproduce,
crossval, ablations) run every training on all ranks and keep the writing (checkpoints, manifests,
evaluations) to rank 0, in a work folder all ranks share (:func:`shared_tempdir`). A group left and joined
again in one process is not used: gloo's second rendezvous failed here once in two tries.

Samples: a distributed sampler of the global batch. At step k every rank draws the same global batch, of
per-rank batch x world size samples, from the step's own random stream (:func:`step_rng`: seed and k; a
sample's augmentation from seed, k and its place in the batch), and keeps its share (:meth:`Distributed.share`:
places rank x b to (rank + 1) x b). So N processes of batch b see, step by step, the samples that one
process of batch N x b sees, and with DDP's gradient averaging they take the same steps (tested for AIFNet to
float tolerance: two processes of batch 1 against one of batch 2). torch's DistributedSampler, which splits an
epoch's permutation, cannot express the trainers' sampling (with replacement, case-balanced, lesion-weighted);
this sampler keeps it and is stateless, so a resumed run draws exactly what the uninterrupted one drew. Batch
normalisation is the one exception to the equivalence: its statistics are per rank, unless the run is on CUDA,
where :meth:`Distributed.wrap` makes them global (SyncBatchNorm).

Decisions (early stopping, learning-rate decay, time limits) are taken on values every rank agrees on
(:meth:`Distributed.agreed`: rank 0's validation score; :meth:`Distributed.any`: a limit reached on any rank), so
no rank leaves the loop while another waits for it in a collective.

Mixed precision: :meth:`Distributed.autocast` and the GradScaler of :meth:`Distributed.scaler` run float16
on CUDA and change nothing on the CPU.

Resumable checkpoints (:func:`save_state`, :func:`load_state`): the model, the optimiser, the scheduler
and the scaler, the step, and the random states of every rank (torch, CUDA, numpy), written by rank 0
atomically and read with ``torch.load(weights_only=True)``; a run resumed from step k draws the same samples
and computes the same loss at step k + 1 as the run that wrote it.
"""
import atexit
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

RANK_SEED_STRIDE = 1000
"""Rank r's random stream starts at seed + RANK_SEED_STRIDE x r."""


@dataclass
class Distributed:
    """This process's place in a (possibly one-process) training run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module, find_unused: bool = False) -> torch.nn.Module:
        """The model on this rank's device, in DistributedDataParallel when several processes train (on CUDA
        with SyncBatchNorm: batch statistics of the global batch). find_unused: some parameters may take no part
        in a step's loss (staged training)."""
        model = model.to(self.device)
        if not self.active:
            return model
        if self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (the value itself alone)."""
        if not self.active:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def share(self, per_rank: int) -> slice:
        """This rank's places in a step's global batch of ``per_rank`` x world size samples."""
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def agreed(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (a validation score that decisions are taken on: with per-rank batch
        statistics the ranks' own scores can differ)."""
        return float(self.gather(float(value))[0])

    def any(self, condition: bool) -> bool:
        """True on every rank when ``condition`` holds on any rank (a time limit)."""
        return self.mean(float(bool(condition))) > 0

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def autocast(self):
        """float16 autocast on CUDA; nothing on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return nullcontext()

    def scaler(self):
        """A GradScaler for float16 on CUDA; a disabled one on the CPU (its calls pass through)."""
        return torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")

    def close(self) -> None:
        """The end of one training: waits for every rank (rank 0 has then written its files). The process group
        itself is left when the process ends (see the module doc)."""
        self.barrier()


def _leave_group() -> None:
    """At the process's end: leaves the process group, without waiting for the other ranks (a rank that ends on
    an error, or that only rank 0's evaluation outlives, must not block in a collective). Every training ends
    in :meth:`Distributed.close`'s barrier, so no rank tears gloo down while another still talks to it (which
    aborted a run once: 'terminate called without an active exception')."""
    if dist.is_initialized():
        dist.destroy_process_group()


def setup(device: str = "auto") -> Distributed:
    """Joins the torchrun process group when there is one (NCCL on CUDA, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    where = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(where)
    if world <= 1:
        return Distributed(device=where)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        atexit.register(_leave_group)
    return Distributed(rank=rank, world_size=world, local_rank=local, device=where, backend=backend)


def shared_tempdir(d: Distributed, prefix: str) -> Path:
    """A new temporary folder, made by rank 0, whose path every rank gets (the ranks of one machine share it;
    only rank 0 reads back what is written there)."""
    path = tempfile.mkdtemp(prefix=prefix) if d.is_main else None
    return Path(d.gather(path)[0])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the network itself)."""
    return model.module if hasattr(model, "module") else model


def step_rng(seed: int, step: int, *place: int) -> np.random.Generator:
    """The random stream of step ``step``'s global batch (or, with ``place``, of one sample in it): the same on
    every rank and whatever the number of ranks (see the module doc)."""
    return np.random.default_rng([int(seed), int(step), *map(int, place)])


def rank_rng(seed: int, d: Distributed) -> np.random.Generator:
    """This rank's own random stream, for what is not part of the global batch (see the module doc)."""
    return np.random.default_rng(seed + RANK_SEED_STRIDE * d.rank)


def _random_state(rng: Optional[np.random.Generator]) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state if rng is not None else {}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_state(path, d: Distributed, model, optimizer, step: int, rng: np.random.Generator, scheduler=None,
               scaler=None, extra: Optional[dict] = None) -> Optional[Path]:
    """Writes a resumable checkpoint (see the module doc) from rank 0; every rank must call it (the random
    states are gathered). Returns the path on rank 0."""
    states = d.gather(_random_state(rng))
    if not d.is_main:
        d.barrier()
        return None
    payload = {"format": "strokelesion-training-state-1", "step": int(step), "world_size": d.world_size,
               "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
               "optimizer": optimizer.state_dict(), "random": states, "extra": dict(extra or {})}
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    d.barrier()
    return path


def load_state(path, d: Distributed, model, optimizer, rng: np.random.Generator, scheduler=None,
               scaler=None) -> dict:
    """Restores what :func:`save_state` wrote (this rank's random states included); returns the payload
    (``step``, ``extra``). The run must have as many processes as the one that wrote it."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format") != "strokelesion-training-state-1":
        raise ValueError(f"{path} is not a strokelesion training state")
    if payload["world_size"] != d.world_size:
        raise ValueError(f"{path} was written by {payload['world_size']} processes; this run has {d.world_size}")
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and "scheduler" in payload:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and "scaler" in payload:
        scaler.load_state_dict(payload["scaler"])
    state = payload["random"][d.rank]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if rng is not None:
        rng.bit_generator.state = state["numpy"]
    return payload
