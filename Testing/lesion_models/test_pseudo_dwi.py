"""Pseudo-DWI + SLNet: preprocessing (Ts/Te in seconds, MIP, 6-frame resampling), the distance weight map,
the networks, training smoke test, shipped weights and bad input."""
import shutil
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry  # noqa: E402
from AIFSelectorLib.errors import InputError  # noqa: E402
from AIFSelectorLib.models.weights import WeightsError, models_dir, read_manifest  # noqa: E402
from StrokeLesionLib.lesion_models.pseudodwi import preprocessing as pre  # noqa: E402
from AIFSelectorLib.models.blocks import SqueezeExcitation2d, SwitchableNorm2d  # noqa: E402
from StrokeLesionLib.lesion_models.pseudodwi.model import PseudoDWIConfig, PseudoDWINet  # noqa: E402

TINY = dict(extractor_widths=(4, 8), generator_widths=(4, 8), slnet_widths=(4, 8, 16), context_width=4)


def triangle_bolus(times_s, start=10.0, peak=20.0, end=30.0, height=50.0):
    """q(t): flat, linear rise start->peak, linear fall peak->end, flat again (HU)."""
    t = np.asarray(times_s, float)
    return np.interp(t, [t[0] - 1, start, peak, end, t[-1] + 1], [0.0, 0.0, height, 0.0, 0.0]) + 40.0


def series_from_curve(q, times_s, shape=(2, 6, 6)):
    data = np.broadcast_to(np.asarray(q, np.float32)[:, None, None, None], (len(q),) + shape).copy()
    return CTPSeries(data, times_s, VolumeGeometry((2.0, 2.0, 5.0)))


@pytest.mark.parametrize("dt_s,t0_s", [(1.0, 0.0), (2.0, 0.0), (1.5, 100.0)])
def test_perfusion_window_in_seconds(dt_s, t0_s):
    times = t0_s + np.arange(0, 60.0, dt_s)
    rng = np.random.default_rng(0)
    q = triangle_bolus(times, 10 + t0_s, 20 + t0_s, 30 + t0_s) + rng.normal(0, 0.05, len(times))
    w = pre.perfusion_window(q, times)
    tol = (pre.SMOOTHING_FRAMES // 2 + 2) * dt_s  # smoothing + an onset between frames
    assert 10 + t0_s - tol <= w.start_s <= 10 + t0_s + 1e-9
    assert 30 + t0_s - dt_s <= w.end_s <= 30 + t0_s + tol
    assert abs(w.peak_s - (20 + t0_s)) <= dt_s


def test_summed_intensity_uses_the_brain_only():
    data = np.ones((3, 1, 2, 2), np.float32) * np.arange(3)[:, None, None, None]
    data[:, 0, 0, 0] = 1000.0
    brain = np.array([[[False, True], [True, True]]])
    assert np.allclose(pre.summed_intensity(data, brain), 3 * np.arange(3))


def test_mip_and_six_frame_resampling():
    times = np.arange(0, 40.0, 2.0)
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1, (len(times), 2, 5, 5)).astype(np.float32)
    data[0] = 100.0  # outside the window: must not enter the MIP
    mip = pre.temporal_mip(data, times, 4.0, 20.0)
    assert np.array_equal(mip, data[2:11].max(axis=0))
    ramp = (times[:, None, None, None] * np.ones((1, 2, 5, 5))).astype(np.float32)
    f_o = pre.resample_window(ramp, times, 5.0, 25.0)
    assert f_o.shape == (pre.N_CROPPED_FRAMES, 2, 5, 5)
    assert np.allclose(f_o[:, 0, 0, 0], np.linspace(5.0, 25.0, pre.N_CROPPED_FRAMES), atol=1e-5)


def test_network_input_channels_and_map_scaling():
    times = np.arange(0, 50.0, 1.0)
    s = series_from_curve(triangle_bolus(times), times, (2, 8, 8))
    maps = {"cbf": np.full((2, 8, 8), 30.0), "cbv": np.full((2, 8, 8), 2.5), "mtt": np.full((2, 8, 8), 5.0),
            "tmax": np.full((2, 8, 8), 80.0)}
    brain = np.zeros((2, 8, 8), bool)
    brain[:, 2:6, 2:6] = True
    x, w = pre.network_input(s.data, s.times_s, maps, brain)
    assert x.shape == (pre.N_INPUT_CHANNELS, 2, 8, 8)
    assert np.allclose(x[:4, 0, 0, 0], [0.5, 0.5, 0.5, pre.MAP_CLIP])
    assert np.all(x[4:11][:, ~brain] == 0) and np.array_equal(x[-1] > 0, brain)


def test_distance_weight_map_by_hand():
    from training.pseudodwi.losses import distance_weight_map
    lesion = np.zeros((2, 1, 80), bool)
    lesion[0, 0, 10] = True
    a = distance_weight_map(lesion, (1.0, 1.0), w=1.5, distance_mm=50.0)
    assert a[0, 0, 10] == pytest.approx(1.5)
    assert a[0, 0, 35] == pytest.approx(1.25)   # 25 mm away: 1 + 0.5 * (1 - 25/50)
    assert a[0, 0, 70] == pytest.approx(1.0)    # beyond D
    assert np.all(a[1] == 1.0)                  # slice without lesion
    b = distance_weight_map(lesion, (2.0, 2.0), w=1.5, distance_mm=50.0)
    assert b[0, 0, 35] == pytest.approx(1.0)    # 50 mm with 2 mm voxels


@pytest.mark.parametrize("synthesis,slnet_inputs", [("fo_fl_fh", "pdwi_maps"), ("fo_fl", "pdwi_maps"),
                                                     ("fo", "pdwi"), ("fo_fl_fh", "maps")])
def test_network_shapes(synthesis, slnet_inputs):
    net = PseudoDWINet(PseudoDWIConfig(synthesis_inputs=synthesis, slnet_inputs=slnet_inputs, **TINY)).eval()
    out = net(torch.randn(2, pre.N_INPUT_CHANNELS, 36, 44))
    assert out["logits"].shape == (2, 2, 36, 44)
    assert ("pseudo_dwi" in out) == (slnet_inputs != "maps")
    if "pseudo_dwi" in out:
        assert out["pseudo_dwi"].shape == (2, 1, 36, 44)
    assert ("features" in out) == (synthesis == "fo_fl_fh" and slnet_inputs != "maps")


def test_gradients_reach_the_first_layers():
    from training.pseudodwi.losses import LossWeights, total_loss
    torch.manual_seed(0)
    net = PseudoDWINet(PseudoDWIConfig(**TINY))
    x = torch.randn(3, pre.N_INPUT_CHANNELS, 32, 32)
    x[:, -1] = 1.0
    lesion = torch.zeros(3, 32, 32, dtype=torch.long)
    lesion[:, 10:16, 10:16] = 1
    out = net(x)
    terms = total_loss(out, torch.rand(3, 1, 32, 32), lesion, torch.ones(3, 1, 32, 32), net.context, LossWeights())
    terms["total"].backward()
    for sub in (net.extractor, net.generator, net.slnet):
        g = sub.down[0][0].weight.grad
        assert g is not None and float(g.abs().sum()) > 0


def test_sn_and_se_switches_change_the_network():
    x = torch.randn(2, pre.N_INPUT_CHANNELS, 32, 32)
    outs = {}
    for name, kw in {"paper": {}, "no_se": {"slnet_se": False}, "no_sn": {"slnet_norm": "batch"}}.items():
        torch.manual_seed(0)
        net = PseudoDWINet(PseudoDWIConfig(slnet_inputs="maps", **kw, **TINY)).eval()
        kinds = {type(m) for m in net.slnet.modules()}
        assert (SqueezeExcitation2d in kinds) == (name != "no_se")
        assert (SwitchableNorm2d in kinds) == (name != "no_sn")
        with torch.no_grad():
            outs[name] = net(x)["logits"]
    assert not torch.allclose(outs["paper"], outs["no_se"])
    assert not torch.allclose(outs["paper"], outs["no_sn"])


def test_switchable_norm_mixes_instance_layer_and_batch_statistics():
    sn = SwitchableNorm2d(3)
    x = torch.randn(4, 3, 5, 5) * 7 + 3
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([50.0, 0.0, 0.0]))
        sn.var_weight.copy_(torch.tensor([50.0, 0.0, 0.0]))
    ref = torch.nn.functional.instance_norm(x, eps=sn.eps)
    assert torch.allclose(sn(x), ref, atol=1e-4)


def test_same_input_same_output():
    torch.manual_seed(3)
    net = PseudoDWINet(PseudoDWIConfig(**TINY)).eval()
    x = torch.randn(2, pre.N_INPUT_CHANNELS, 24, 24)
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["pseudo_dwi"], b["pseudo_dwi"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_agree():
    torch.manual_seed(4)
    net = PseudoDWINet(PseudoDWIConfig(**TINY)).eval()
    x = torch.randn(2, pre.N_INPUT_CHANNELS, 32, 32)
    with torch.no_grad():
        cpu = net(x)["logits"]
        gpu = net.cuda()(x.cuda())["logits"].cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3)


# ------------------------------------------------------------------------------------------- training

def _tiny_phantom_samples(seeds):
    from AIFSelectorLib.phantom.case import make_phantom
    from StrokeLesionLib.case.pipeline import RunOptions, run_case
    from training.pseudodwi.data import make_sample
    out = []
    for s in seeds:
        case = make_phantom(s, shape_zyx=(3, 64, 64), n_frames=40, spacing_mm=(3.6, 3.6, 6.0))
        r = run_case(case.series, RunOptions(aif="classic"))
        out.append(make_sample(case.series, r.perfusion.maps, r.prepared.brain, case.dwi, case.truth["lesion"],
                               f"phantom-{s}"))
    return out


def test_training_smoke_loss_goes_down():
    from training.pseudodwi.data import random_batch
    from training.pseudodwi.losses import LossWeights, total_loss
    from training.pseudodwi.train import TrainOptions, run_training
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    samples = _tiny_phantom_samples([10000, 10001])
    torch.manual_seed(0)
    net = PseudoDWINet(PseudoDWIConfig(**TINY))
    fixed = {k: torch.from_numpy(v) for k, v in random_batch(samples, np.random.default_rng(9), 6, 48).items()}

    def fixed_loss():
        net.train()
        with torch.no_grad():
            return float(total_loss(net(fixed["x"]), fixed["dwi"], fixed["lesion"], fixed["weight_map"], None,
                                    LossWeights(gamma=0.0))["total"])

    before = fixed_loss()
    opts = TrainOptions(iters=40, batch_size=6, crop=48, lr=3e-3, context_iters=5, eval_every=40, max_minutes=1.0)
    res = run_training(net, samples, samples[:1], opts)
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)
    assert res["iters_done"] == 40 and 0.0 <= res["best_val_dice"] <= 1.0
    assert not any(p.requires_grad for p in net.context.parameters())  # Phi_c frozen after its pre-training
    assert time.perf_counter() - t0 < 60


def test_sequential_training_trains_each_stage_only():
    from training.pseudodwi.train import TrainOptions, run_training
    samples = _tiny_phantom_samples([10002])
    torch.manual_seed(1)
    net = PseudoDWINet(PseudoDWIConfig(**TINY))
    slnet0 = {k: v.clone() for k, v in net.slnet.state_dict().items()}
    res = run_training(net, samples, [], TrainOptions(mode="sequential", iters=8, batch_size=2, crop=32, lr=1e-3,
                                                      context_iters=2, eval_every=100))
    stages = [h[1] for h in res["history"]]
    assert stages == ["extractor"] * 2 + ["generator"] * 2 + ["segmenter"] * 4
    assert any(not torch.equal(slnet0[k], v) for k, v in net.slnet.state_dict().items())


# ----------------------------------------------------------------------------------- shipped weights

def _shipped(name):
    entry = read_manifest().get("models", {}).get(name)
    if entry is None:
        pytest.fail(f"no '{name}' entry in the shipped model manifest")
    return entry


@pytest.fixture(scope="module")
def held_out_cases():
    from AIFSelectorLib.phantom.case import make_phantom
    from StrokeLesionLib.case.pipeline import RunOptions, run_case
    from training.pseudodwi.data import EVAL_SEED0, phantom_kwargs
    out = []
    for seed in range(EVAL_SEED0, EVAL_SEED0 + 4):
        case = make_phantom(seed, **phantom_kwargs(seed))
        r = run_case(case.series, RunOptions(aif="aifnet", device="cpu"))
        out.append((case, r))
    return out


def test_shipped_weights_held_out_dice(held_out_cases):
    from StrokeLesionLib.metrics import dice
    from StrokeLesionLib.lesion_models.pseudodwi.inference import segment_pseudo_dwi
    entry = _shipped("pseudodwi")
    measured = entry["evaluation"]["pseudodwi"]["dice"]["mean"]
    scores = []
    for case, r in held_out_cases:
        mask, extras, info = segment_pseudo_dwi(case.series, r.perfusion.maps, r.prepared.brain, device="cpu")
        assert mask.dtype == bool and mask.shape == case.series.shape_zyx
        assert extras["pseudo_dwi"].dtype == np.float32 and extras["pseudo_dwi"].shape == mask.shape
        assert info["sha256"] == entry["sha256"] and info["perfusion_end_s"] > info["perfusion_start_s"]
        scores.append(dice(mask, case.truth["lesion"]))
    assert np.mean(scores) >= measured - 0.15, scores


def test_corrupt_weights_raise_weights_error(tmp_path, held_out_cases):
    from StrokeLesionLib.lesion_models.pseudodwi.inference import segment_pseudo_dwi
    entry = _shipped("pseudodwi")
    shutil.copy2(models_dir() / "manifest.json", tmp_path / "manifest.json")
    data = bytearray((models_dir() / entry["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / entry["file"]).write_bytes(bytes(data))
    case, r = held_out_cases[0]
    with pytest.raises(WeightsError):
        segment_pseudo_dwi(case.series, r.perfusion.maps, r.prepared.brain, device="cpu", folder=tmp_path)
    (tmp_path / entry["file"]).unlink()
    with pytest.raises(WeightsError):
        segment_pseudo_dwi(case.series, r.perfusion.maps, r.prepared.brain, device="cpu", folder=tmp_path)


def test_bad_input_raises_input_error(held_out_cases):
    from StrokeLesionLib.lesion_models.pseudodwi.inference import segment_pseudo_dwi
    case, r = held_out_cases[0]
    maps, brain = r.perfusion.maps, r.prepared.brain
    with pytest.raises(InputError, match="CTP series"):
        segment_pseudo_dwi(case.series.data[0], maps, brain)
    with pytest.raises(InputError, match="missing: tmax"):
        segment_pseudo_dwi(case.series, {k: v for k, v in maps.items() if k != "tmax"}, brain)
    with pytest.raises(InputError, match="map 'cbf' has shape"):
        segment_pseudo_dwi(case.series, {**maps, "cbf": maps["cbf"][:, :-1]}, brain)
    with pytest.raises(InputError, match="brain mask"):
        segment_pseudo_dwi(case.series, maps, brain[1:])
    with pytest.raises(InputError, match="NaN"):
        segment_pseudo_dwi(case.series, {**maps, "mtt": np.full_like(maps["mtt"], np.nan)}, brain)


def test_train_cli_on_isles2018_layout(tmp_path):
    """--data isles2018: phantom cases written as ISLES 2018 case folders (CT_4DPWI, the four maps, MR_DWI,
    OT) train through the same CLI and leave a checkpoint and a manifest entry."""
    from AIFSelectorLib.phantom.case import make_phantom
    from AIFSelectorLib.io.volume_io import write_series_nifti, write_volume
    from training.pseudodwi import train
    root = tmp_path / "ISLES2018_Training" / "TRAINING"
    for n, seed in enumerate((10003, 10004), start=1):
        case = make_phantom(seed, shape_zyx=(2, 64, 64), n_frames=30, spacing_mm=(3.6, 3.6, 6.0))
        folder = root / f"case_{n}"
        images = {"CT_CBF": case.truth["cbf"], "CT_CBV": case.truth["cbv"], "CT_MTT": case.truth["mtt"],
                  "CT_Tmax": case.truth["tmax"], "MR_DWI": case.dwi, "OT": case.truth["lesion"].astype(np.uint8)}
        for i, (modality, image) in enumerate(images.items()):
            name = f"SMIR.Brain.XX.O.{modality}.{100 * n + i}"
            write_volume(folder / name / f"{name}.nii", image, case.series.geometry)
        name = f"SMIR.Brain.XX.O.CT_4DPWI.{100 * n + 9}"
        write_series_nifti(folder / name / f"{name}.nii", case.series)
    out = tmp_path / "out"
    meta = train.main(["--data", "isles2018", "--root", str(root.parent), "--out", str(out), "--iters", "2",
                       "--batch-size", "2", "--crop", "32", "--context-iters", "1", "--eval-every", "2",
                       "--val-fraction", "0.5", "--slnet-widths", "4", "8", "--synthesis-widths", "4", "8"])
    assert meta["data"] == "isles2018" and meta["train_seeds"] == ["case_2", "case_2"]
    assert (out / "pseudodwi.pt").is_file() and "pseudodwi" in read_manifest(out)["models"]
