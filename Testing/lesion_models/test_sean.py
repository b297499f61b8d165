"""SEAN (non-contrast CT infarct): the symmetry alignment (loss landscape, sign convention, warps), the
HybridUnet with symmetry-enhanced attention, training smoke tests of both stages, the shipped weights
(held-out Dice and angle error), corrupt weights and bad input."""
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from AIFSelectorLib.errors import InputError  # noqa: E402
from AIFSelectorLib.models.weights import WeightsError, models_dir, read_manifest  # noqa: E402
from AIFSelectorLib.phantom.case import make_phantom  # noqa: E402
from StrokeLesionLib.lesion_models.sean.alignment import (AlignmentConfig, AlignmentNet, alignment_grid_slices,  # noqa: E402
                                            alignment_losses, normalise_ncct, warp_volumes)
from StrokeLesionLib.lesion_models.sean.model import HybridUNet, SEANConfig, SymmetryEnhancedAttention, slice_stacks  # noqa: E402

TINY = dict(grid_size=64, grid_spacing_mm=3.6, widths=(4, 8, 16), partitions=(4, 2))
SPACING = (1.8, 1.8, 6.0)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def rotated_case():
    """A phantom NCCT whose head is turned by about 12 deg (the sign and size checked)."""
    for seed in range(40):
        case = make_phantom(seed, shape_zyx=(8, 128, 128), n_frames=12, spacing_mm=SPACING, noise_hu=3.0,
                            lesion_variety=True, head_rotation_max_deg=15.0)
        if abs(case.params["anatomy"]["head_rotation_deg"]) > 9.0:
            return case
    raise AssertionError("no phantom with a head rotation above 9 deg in 40 seeds")


def _alignment_slices(case, config=AlignmentConfig()):
    x, bg = normalise_ncct(case.ncct, config.hu_window)
    bg_t = torch.tensor([bg], dtype=torch.float32)
    return alignment_grid_slices(torch.from_numpy(x)[None], bg_t, SPACING[:2], config), bg_t


def test_symmetry_loss_is_minimal_at_the_true_angle(rotated_case):
    """Loss landscape: with the true head centre, the symmetry L1 over angles is minimal within 1.5 deg of
    params['anatomy']['head_rotation_deg'] (same sign: the convention of sean_alignment)."""
    anatomy = rotated_case.params["anatomy"]
    true = anatomy["head_rotation_deg"]
    slices, bg = _alignment_slices(rotated_case)
    angles = np.arange(-20.0, 20.01, 0.5)
    poses = torch.tensor([[a, *anatomy["head_shift_mm"]] for a in angles], dtype=torch.float32)
    losses = [alignment_losses(slices, p[None], bg, AlignmentConfig())["symmetry"].item() for p in poses]
    best = angles[int(np.argmin(losses))]
    assert abs(best - true) <= 1.5
    assert losses[int(np.argmin(np.abs(angles + true)))] > 1.5 * min(losses)  # the opposite sign is clearly worse


def test_restoration_is_exact_at_identity_and_warps_invert():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(np.pad(rng.random((1, 2, 24, 24)).astype(np.float32), ((0, 0), (0, 0), (20, 20), (20, 20))))
    from StrokeLesionLib.lesion_models.sean.alignment import gaussian_blur
    smooth = gaussian_blur(img, 2.0)
    pose = torch.tensor([[9.0, 4.0, -3.0]])
    sp = (2.0, 2.0)
    fwd = warp_volumes(smooth, pose, (64, 64), sp, sp)
    back = warp_volumes(fwd, pose, (64, 64), sp, sp, inverse=True)
    assert float((back - smooth).abs().max()) < 0.05 * float(smooth.max())
    assert float((fwd - smooth).abs().max()) > 0.2 * float(smooth.max())  # the pose did move the image
    terms = alignment_losses(img, torch.zeros(1, 3), torch.zeros(1), AlignmentConfig(grid_size=64, grid_spacing_mm=2.0))
    assert terms["restoration"].item() < 1e-6


def test_alignment_net_shapes_identity_at_start_and_gradients(rotated_case):
    torch.manual_seed(0)
    net = AlignmentNet(AlignmentConfig())
    slices, bg = _alignment_slices(rotated_case)
    pose = net(slices, bg)
    assert pose.shape == (1, 3) and torch.all(pose == 0)
    alignment_losses(slices, net(slices, bg), bg, net.config)["total"].backward()
    assert net.out.weight.grad.abs().sum() > 0  # then, after a step, the first layer too:
    torch.optim.SGD(net.parameters(), lr=1e-2).step()
    net.zero_grad()
    alignment_losses(slices, net(slices, bg), bg, net.config)["total"].backward()
    assert net.encoder[0].weight.grad.abs().sum() > 0


def test_hybrid_unet_shapes_softmax_and_gradients():
    torch.manual_seed(0)
    cfg = SEANConfig(context_slices=2, **TINY)
    net = HybridUNet(cfg)
    x = torch.randn(3, 1, 5, 64, 64)
    logits = net(x)
    assert logits.shape == (3, 2, 64, 64)
    probs = torch.softmax(logits, 1)
    assert torch.allclose(probs.sum(1), torch.ones(3, 64, 64), atol=1e-5)
    logits[:, 1].mean().backward()
    assert net.encoder[0][0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        net(torch.randn(1, 1, 3, 64, 64))
    with pytest.raises(ValueError):
        SEANConfig(grid_size=64, widths=(4, 8, 16), partitions=(3, 2))
    stacks = slice_stacks(torch.arange(4.0)[:, None, None].expand(4, 2, 2), 1)
    assert stacks.shape == (4, 1, 3, 2, 2) and stacks[0, 0, :, 0, 0].tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("mirrored", [True, False])
def test_symmetry_attention_reads_the_mirrored_partition(mirrored):
    """Changing the mirrored partition (left half, top rows) changes the output of the partition at the
    right half, top rows only when the mirrored keys and values are on."""
    torch.manual_seed(0)
    sea = SymmetryEnhancedAttention(8, (2, 2), reduction=2, mirrored=mirrored).eval()
    with torch.no_grad():
        sea.gamma.fill_(1.0)
    x = torch.randn(1, 8, 8, 8)
    y0 = sea(x)
    x2 = x.clone()
    x2[:, :, :4, :4] += 3.0 * torch.randn(1, 8, 4, 4)  # partition (0, 0)
    y1 = sea(x2)
    changed = (y1 - y0)[:, :, :4, 4:].abs().max().item()  # partition (0, 1), its mirror image
    assert (changed > 1e-3) if mirrored else (changed < 1e-6)
    assert (y1 - y0)[:, :, 4:, :].abs().max().item() < 1e-6  # the bottom partitions never see it


def test_same_input_same_output():
    torch.manual_seed(1)
    net = HybridUNet(SEANConfig(**TINY)).eval()
    x = torch.randn(2, 1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_agree():
    torch.manual_seed(2)
    net = HybridUNet(SEANConfig(**TINY)).eval()
    x = torch.randn(2, 1, 3, 64, 64)
    with torch.no_grad():
        cpu = torch.softmax(net(x), 1)
        gpu = torch.softmax(net.cuda()(x.cuda()), 1).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_cases():
    from training.sean.data import SPACING_MM
    from training.sean.train import normalised_cases
    cases = []
    for seed in (10000, 10001, 10002, 10003):
        c = make_phantom(seed, shape_zyx=(6, 64, 64), n_frames=12, spacing_mm=(3.6, 3.6, 6.0), noise_hu=3.0,
                         lesion_variety=True, head_rotation_max_deg=15.0)
        cases.append({"ncct": c.ncct, "lesion": c.truth["lesion"], "spacing_xyz": (3.6, 3.6, SPACING_MM[2]),
                      "angle_deg": c.params["anatomy"]["head_rotation_deg"], "name": str(seed)})
    return normalised_cases(cases, SEANConfig().hu_window)


def test_alignment_training_smoke(tiny_cases):
    from training.sean.train import TrainOptions, train_alignment
    opts = TrainOptions(align_iters=80, align_batch=4, align_minutes=1.0, augment_angle_deg=0.0, augment_shift_mm=0.0)
    _, info = train_alignment(tiny_cases, tiny_cases[:2], AlignmentConfig(), opts)
    h = info["history"]
    assert np.mean(h[-10:]) < 0.8 * np.mean(h[:10])


def test_segmenter_training_smoke(tiny_cases):
    from training.sean.train import TrainOptions, aligned_volumes, train_segmenter
    cfg = SEANConfig(**TINY)
    poses = np.array([[c["angle_deg"], 0.0, 0.0] for c in tiny_cases])
    vols, labs = aligned_volumes(tiny_cases, poses, cfg)
    assert vols[0].shape == (6, 64, 64) and any(lab.any() for lab in labs)
    opts = TrainOptions(seg_iters=40, batch_size=4, lr=3e-3, eval_every=40, seg_minutes=1.0)
    net, info = train_segmenter(cfg, vols, labs, vols[:1], labs[:1], opts)
    h = info["history"]
    assert np.mean(h[-8:]) < np.mean(h[:8])
    assert 0.0 <= info["best_val_dice"] <= 1.0


# ------------------------------------------------------------------------------------------ shipped weights

def _shipped():
    entries = read_manifest().get("models", {})
    if "sean" not in entries or "sean_alignment" not in entries:
        pytest.skip("no shipped SEAN weights")
    return entries


def test_shipped_weights_held_out_dice_and_angle():
    """Six held-out phantom cases (seeds 30000+) through segment_sean; the margins allow for the smaller
    sample than the manifest's evaluation."""
    from StrokeLesionLib.metrics import dice
    from StrokeLesionLib.lesion_models.sean.inference import segment_sean
    from training.sean.data import phantom_cases
    entries = _shipped()
    measured = entries["sean"]["evaluation"]["SEAN"]["dice"]["mean"]
    scores, errors = [], []
    for c in phantom_cases(range(30000, 30006)):
        mask, extras, info = segment_sean(c["ncct"], c["spacing_xyz"], device="cpu")
        assert mask.shape == c["ncct"].shape and mask.dtype == bool
        assert extras["infarct_probability"].shape == c["ncct"].shape
        scores.append(dice(mask, c["lesion"]))
        errors.append(abs(info["rotation_deg"] - c["angle_deg"]))
    assert np.mean(scores) >= measured - 0.12
    assert np.mean(errors) <= 1.5 and np.max(errors) <= 3.0  # measured: mean 0.52, max 1.43 deg (n = 20)


def test_corrupt_weights_raise_weights_error(tmp_path, rotated_case):
    from StrokeLesionLib.lesion_models.sean.inference import segment_sean
    entries = _shipped()
    shutil.copy(models_dir() / "manifest.json", tmp_path / "manifest.json")
    for name in ("sean", "sean_alignment"):
        shutil.copy(models_dir() / entries[name]["file"], tmp_path / entries[name]["file"])
    path = tmp_path / entries["sean"]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupted"):
        segment_sean(rotated_case.ncct, SPACING, device="cpu", folder=tmp_path)
    (tmp_path / entries["sean_alignment"]["file"]).unlink()
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(WeightsError):
        segment_sean(rotated_case.ncct, SPACING, device="cpu", folder=tmp_path)


@pytest.mark.parametrize("what", ["2d", "4d", "nan", "mri", "spacing"])
def test_bad_input_raises_input_error(what, rotated_case):
    from StrokeLesionLib.lesion_models.sean.inference import segment_sean
    image, spacing = rotated_case.ncct.copy(), SPACING
    if what == "2d":
        image = image[0]
    elif what == "4d":
        image = np.stack([image, image])
    elif what == "nan":
        image[2, 50, 50] = np.nan
    elif what == "mri":
        image = rotated_case.t1
    else:
        spacing = (1.8, 0.0, 6.0)
    with pytest.raises(InputError) as err:
        segment_sean(image, spacing, device="cpu")
    assert "\n" not in str(err.value)
