"""Training across processes: two-process DistributedDataParallel runs under torchrun (gloo, CPU) of every
trainer (AIFNet, X-Net, SEAN, pseudo-DWI): both ranks finish, the loss goes down, and a run resumed from a checkpoint computes the same
losses as the run that wrote it (the next iteration's included)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent


def torchrun(args, timeout=600, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE.parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def losses(folder):
    ranks = [json.loads((Path(folder) / f"losses.rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    return [r["losses"] if isinstance(r, dict) else r for r in ranks]


def test_aifnet_trains_on_two_processes_and_resumes(tmp_path):
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    torchrun([HERE / "ddp_aifnet.py", first, 30, 20])
    a0, a1 = losses(first)
    assert len(a0) == 30 and a0 == a1  # both ranks finished, and agree on the (averaged) loss
    assert np.mean(a0[-8:]) < 0.8 * np.mean(a0[:8]), a0
    assert json.loads((first / "losses.rank0.json").read_text(encoding="utf-8"))["world_size"] == 2
    torchrun([HERE / "ddp_aifnet.py", resumed, 30, 0, first / "state.pt"])
    b0, _ = losses(resumed)
    assert b0[:20] == a0[:20]  # restored from the state
    assert np.allclose(b0[20:], a0[20:], rtol=0, atol=1e-6), (a0[20:], b0[20:])  # the next losses


def test_two_processes_take_the_steps_of_one_process_with_their_global_batch(tmp_path):
    """The distributed sampler: 2 processes of batch 1 and 1 process of batch 2 see the same samples at each
    step, and DDP's averaged gradient is the batch's: the same losses to float tolerance."""
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun([HERE / "ddp_aifnet.py", two, 12, 0, "", 1])
    torchrun([HERE / "ddp_aifnet.py", one, 12, 0, "", 2], processes=1)
    a0, _ = losses(two)
    b0 = json.loads((one / "losses.rank0.json").read_text(encoding="utf-8"))["losses"]
    assert len(a0) == len(b0) == 12
    assert np.allclose(a0, b0, rtol=0, atol=1e-5), (a0, b0)
    assert not np.allclose(a0[1:], a0[:-1])  # the loss moved: a real training, not a constant


def test_xnet_trains_on_two_processes_and_resumes(tmp_path):
    common = ["-m", "training.xnet.train", "--n-train", 2, "--n-val", 1, "--widths", 4, 8, "--grid-size", 32,
              "--batch-size", 2, "--iters", 24, "--eval-every", 8, "--max-minutes", 8, "--lr", 0.01,
              "--device", "cpu", "--quiet"]
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    torchrun(common + ["--out", first, "--state-every", 16])
    a0, a1 = losses(first)
    assert len(a0) == 24 and a0 == a1
    assert np.mean(a0[-6:]) < np.mean(a0[:6]), a0
    assert (first / "xnet.pt").exists() and (first / "manifest.json").exists()
    torchrun(common + ["--out", resumed, "--resume", first / "state.pt"])
    b0, _ = losses(resumed)
    assert np.allclose(b0[16:], a0[16:], rtol=0, atol=1e-6), (a0[16:], b0[16:])


def test_a_state_of_another_world_size_is_refused(tmp_path):
    import torch
    from training.aifnet.train import train_model
    from training.aifnet.data import phantom_sample
    from AIFSelectorLib.input_functions.aifnet.model import AIFNetConfig
    state = tmp_path / "state.pt"
    samples = [phantom_sample(1000, shape_zyx=(2, 48, 48), n_frames=30, spacing_mm=(3.6, 3.6, 6.0))]
    cfg = AIFNetConfig(n_frames=30, n_layers=2, base_width=4, max_width=8)
    torch.set_num_threads(1)
    train_model("aif", samples, [], cfg, iters=2, state_path=state, state_every=2, log=lambda m: None)
    payload = torch.load(state, weights_only=True)
    payload["world_size"] = 2
    torch.save(payload, state)
    with pytest.raises(ValueError, match="written by 2 processes"):
        train_model("aif", samples, [], cfg, iters=4, resume=state, log=lambda m: None)


def test_sean_trains_on_two_processes_and_resumes_its_segmenter(tmp_path):
    out = tmp_path / "sean"
    common = ["-m", "training.sean.train", "--out", out, "--n-train", 2, "--n-val", 1, "--widths", 4, 8,
              "--partitions", 2, 2, "--align-iters", 6, "--iters", 12, "--eval-every", 4, "--batch-size", 2,
              "--device", "cpu"]
    torchrun(common + ["--state-every", 8])
    a0, a1 = losses(out)
    assert len(a0) == 12 and a0 == a1
    assert (out / "sean.pt").exists() and (out / "sean_alignment.pt").exists()
    torchrun(common + ["--resume", out / "state.pt", "--name", "sean_resumed"])  # the segmenter, from step 8
    b0, _ = losses(out)
    assert np.allclose(b0, a0, rtol=0, atol=1e-6), (a0, b0)


def test_pseudodwi_trains_on_two_processes_and_resumes(tmp_path):
    common = ["-m", "training.pseudodwi.train", "--cache", tmp_path / "cache", "--n-train", 2, "--n-val", 1,
              "--slnet-widths", 4, 8, "--synthesis-widths", 4, 8, "--iters", 24, "--batch-size", 2, "--crop", 32,
              "--eval-every", 8, "--context-iters", 4, "--device", "cpu", "--lr", 1e-3]
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    torchrun(common + ["--out", first, "--state-every", 16])
    a0, a1 = losses(first)
    assert len(a0) == 24 and a0 == a1
    assert np.mean(a0[-6:]) < np.mean(a0[:6]), a0
    torchrun(common + ["--out", resumed, "--resume", first / "state.pt"])
    b0, _ = losses(resumed)
    assert np.allclose(b0, a0, rtol=0, atol=1e-6), (a0, b0)


def test_crossval_trains_every_fold_on_two_processes_and_reports_once(tmp_path):
    """An orchestrating entry point (several trainings in one process) under torchrun: every fold trains on
    both ranks in one process group, and rank 0 alone reports."""
    report = tmp_path / "cv.json"
    done = torchrun(["-m", "training.aifnet.crossval", "--kind", "vof", "--folds", 2, "--n-cases", 4, "--iters", 6,
                     "--base-width", 4, "--max-width", 8, "--layers", 2, "--json", report])
    result = json.loads(report.read_text(encoding="utf-8"))
    assert [f["fold"] for f in result["folds"]] == [0, 1] and result["overall"]["n"] == 4
    assert done.stdout.count("2-fold VOF r") == 1  # one report, from rank 0
