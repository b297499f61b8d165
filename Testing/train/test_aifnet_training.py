"""AIFNet training smoke test: a few iterations on tiny phantom cases make the loss go down (< 60 s)."""
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from AIFSelectorLib.input_functions.aifnet.model import AIFNetConfig  # noqa: E402
from training.aifnet.augmentation import augment, scale_peak_to_baseline, shift_bolus  # noqa: E402
from training.aifnet.data import phantom_sample, read_annotations  # noqa: E402
from training.aifnet.losses import pearson_loss, pearson_r  # noqa: E402
from training.aifnet.train import predict_sample, train_model  # noqa: E402


def _mean_loss(model, samples, kind="aif"):
    return float(np.mean([1 - np.corrcoef(predict_sample(model, s)[0], s[kind])[0, 1] for s in samples]))


def test_training_smoke_loss_goes_down():
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    samples = [phantom_sample(1000 + i, shape_zyx=(2, 48, 48), n_frames=30, spacing_mm=(3.6, 3.6, 6.0))
               for i in range(3)]
    cfg = AIFNetConfig(n_frames=30, n_layers=2, base_width=4, max_width=8)
    untrained = train_model("aif", samples, [], cfg, iters=1, lr=0.0, log=lambda m: None)["model"]
    before = _mean_loss(untrained, samples)
    res = train_model("aif", samples, [], cfg, iters=60, lr=0.03, eval_every=60, log=lambda m: None)
    after = _mean_loss(res["model"], samples)
    assert after < before * 0.8, (before, after)
    assert time.perf_counter() - t0 < 60


def test_pearson_loss():
    a = torch.linspace(0, 1, 20)[None]
    assert float(pearson_r(a, 3 * a + 7)) == pytest.approx(1.0, abs=1e-5)
    assert float(pearson_loss(a, -a)) == pytest.approx(2.0, abs=1e-5)


def test_augmentation_shift_and_scale():
    x = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    c = np.arange(10, dtype=np.float32)
    xd, cd = shift_bolus(x, 3, c)
    np.testing.assert_array_equal(cd, [0, 0, 0, 0, 1, 2, 3, 4, 5, 6])
    xa, ca = shift_bolus(x, -2, c)
    np.testing.assert_array_equal(ca, [2, 3, 4, 5, 6, 7, 8, 9, 9, 9])
    assert xd.shape == x.shape and xa.shape == x.shape
    xs, cs = scale_peak_to_baseline(x + 40, 2.0, 2, c + 40)
    np.testing.assert_allclose(cs, 40.5 + 2 * (c - 0.5))
    s = augment({"x": x + 40, "aif": c + 40, "vof": c + 40, "artery_mask": np.zeros((1, 2, 2), bool)},
                np.random.default_rng(0))
    assert s["x"].shape == x.shape and s["aif"].shape == c.shape


def test_annotation_csv(tmp_path):
    p = tmp_path / "annotations.csv"
    p.write_text("case,function,z,y,x\ncase_1,aif,3,101,87\ncase_1,vof,5,190,128\n")
    assert read_annotations(p) == {"case_1": {"aif": (3, 101, 87), "vof": (5, 190, 128)}}
    p.write_text("case,function,z,y,x\ncase_1,artery,3,101,87\n")
    with pytest.raises(ValueError, match="aif or vof"):
        read_annotations(p)


def test_isles2018_reader_with_annotations(tmp_path):
    from AIFSelectorLib.io.ctp_io import series_from_array
    from AIFSelectorLib.io.volume_io import write_series_nifti
    from training.aifnet.data import isles_samples
    rng = np.random.default_rng(0)
    data = (40 + 5 * rng.standard_normal((20, 2, 16, 16))).astype(np.float32)
    data[:, 1, 5, 6] += np.linspace(0, 300, 20, dtype=np.float32)
    name = "SMIR.Brain.XX.O.CT_4DPWI.345565"
    folder = tmp_path / "TRAINING" / "case_7" / name
    folder.mkdir(parents=True)
    write_series_nifti(folder / f"{name}.nii", series_from_array(data, dt_s=1.0))
    csv = tmp_path / "annotations.csv"
    csv.write_text("case,function,z,y,x\ncase_7,aif,1,5,6\n")
    (s,) = list(isles_samples(tmp_path / "TRAINING", csv))
    assert s["x"].shape == data.shape and s["vof"] is None
    np.testing.assert_allclose(s["aif"], data[:, 1, 5, 6], atol=1e-3)


def test_onnx_export_of_the_shipped_weights_checks_and_registers_its_graph(tmp_path):
    """training.aifnet.export_onnx on a copy of the shipped models: graphs whose onnxruntime logits equal torch's
    within the tolerance, manifest entries naming the checkpoint they came from, and inference loads them."""
    import shutil
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from AIFSelectorLib.input_functions.aifnet.networks import load_networks
    from AIFSelectorLib.models.weights import models_dir, read_manifest, sha256_of
    from training.aifnet.export_onnx import LOGIT_TOLERANCE, main as export_main
    folder = tmp_path / "models"
    shutil.copytree(models_dir(), folder)
    for f in folder.glob("*.onnx"):
        f.unlink()
    assert export_main(["--models", str(folder)]) == 0
    manifest = read_manifest(folder)["models"]
    for kind in ("aif", "vof"):
        entry = manifest[f"{kind}_onnx"]
        assert entry["exported_from"] == {"model": kind, "sha256": manifest[kind]["sha256"]}
        assert sha256_of(folder / entry["file"]) == entry["sha256"]
        assert entry["check_max_abs_logit_difference"] <= LOGIT_TOLERANCE
        assert entry["receptive_radius_zyx"] == ([4, 5, 5] if kind == "aif" else [1, 2, 2])
    networks, _, _ = load_networks("cpu", folder)
    assert [n.runtime for n in networks] == ["onnxruntime", "onnxruntime"]
