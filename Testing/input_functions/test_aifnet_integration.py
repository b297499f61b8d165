"""AIFNet in the pipeline: shipped weights, Pvol volumes, fallback to the classic selector, command line."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from AIFSelectorLib.input_functions.aifnet import inference as inf, networks  # noqa: E402
from AIFSelectorLib.models import weights  # noqa: E402
from AIFSelectorLib.prepare.prepared import prepare  # noqa: E402
from AIFSelectorLib.phantom.case import make_phantom  # noqa: E402
from AIFSelectorLib.input_functions.policy import select_input_functions  # noqa: E402
from StrokeLesionLib.case.pipeline import RunOptions, report_dict, run_case  # noqa: E402

SHIPPED = weights.models_dir()
needs_weights = pytest.mark.skipif(not (SHIPPED / "manifest.json").is_file(), reason="no shipped AIFNet weights")


@pytest.fixture(scope="module")
def small_case():
    return make_phantom(9500, shape_zyx=(4, 96, 96), n_frames=44, spacing_mm=(1.8, 1.8, 6.0))


@pytest.fixture(scope="module")
def prepared(small_case):
    return prepare(small_case.series)


@pytest.fixture
def broken_models(tmp_path, monkeypatch):
    """A copy of the shipped models folder, used instead of it; the test breaks it as it likes."""
    folder = tmp_path / "models"
    shutil.copytree(SHIPPED, folder)
    monkeypatch.setenv("STROKELESION_MODELS_DIR", str(folder))
    return folder


@needs_weights
def test_shipped_weights_match_manifest_and_load():
    manifest = weights.read_manifest()
    for kind in ("aif", "vof"):
        entry = manifest["models"][kind]
        path = SHIPPED / entry["file"]
        assert weights.sha256_of(path) == entry["sha256"]
        assert path.stat().st_size < 3_000_000
        model, info = networks.load_model(kind)
        assert info["sha256"] == entry["sha256"]
        assert model.config.n_layers == (5 if kind == "aif" else 2)


@needs_weights
def test_aifnet_gives_pvol_with_the_input_shape(small_case, prepared):
    f = inf.select_aifnet(small_case.series, device="cpu", n_baseline=prepared.bolus.n_baseline)
    assert f.method == "aifnet"
    for pvol in (f.aif_pvol, f.vof_pvol):
        assert pvol.shape == small_case.series.shape_zyx
        assert pvol.min() >= 0 and pvol.sum() == pytest.approx(1.0, abs=1e-4)
    assert np.corrcoef(f.aif_hu, small_case.aif_hu)[0, 1] > 0.9
    assert np.corrcoef(f.vof_hu, small_case.vof_hu)[0, 1] > 0.9
    assert set(f.details["models"]) == {"aifnet_aif", "aifnet_vof"}


@needs_weights
def test_shorter_series_than_the_network_works(small_case):
    s = small_case.series
    short = s.with_data(s.data[:25], s.times_s[:25])
    f = inf.select_aifnet(short, device="cpu")
    assert f.aif_hu.shape == (25,) and f.aif_pvol.shape == s.shape_zyx


@needs_weights
def test_corrupted_weights_fall_back_to_classic_with_warning(prepared, broken_models):
    path = broken_models / "aifnet_aif.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="corrupted"):
        networks.load_model("aif")
    f = select_input_functions(prepared, "aifnet")
    assert f.method == "classic"
    assert any("AIFNet unavailable" in w and "corrupted" in w for w in f.warnings)


@needs_weights
def test_missing_weights_fall_back_to_classic_with_warning(prepared, broken_models):
    (broken_models / "aifnet_vof.pt").unlink()
    f = select_input_functions(prepared, "aifnet")
    assert f.method == "classic"
    assert any("not found" in w for w in f.warnings)


def test_missing_manifest_is_a_weights_error(tmp_path):
    with pytest.raises(weights.WeightsError, match="manifest"):
        networks.load_model("aif", tmp_path)


@needs_weights
def test_pipeline_default_is_aifnet_and_reports_models(small_case, tmp_path):
    assert RunOptions().aif == "aifnet"
    result = run_case(small_case.series, RunOptions())
    report = report_dict(result)
    assert report["aif"]["selector"] == "aifnet"
    assert report["models"]["aifnet_aif"]["sha256"] == weights.read_manifest()["models"]["aif"]["sha256"]
    assert result.functions.aif_pvol.shape == small_case.series.shape_zyx
    classic = run_case(small_case.series, RunOptions(aif="classic"))
    assert classic.functions.method == "classic"


@needs_weights
def test_cli_aif_command_writes_pvols_and_warns_on_fallback(small_case, tmp_path, broken_models, capsys):
    from AIFSelectorLib.io.volume_io import read_volume, write_series_nifti
    from StrokeLesionLib.cli import main
    ctp = write_series_nifti(tmp_path / "ctp.nii.gz", small_case.series)
    (broken_models / "aifnet_aif.pt").write_bytes(b"not a checkpoint")
    assert main(["aif", str(ctp), "--out", str(tmp_path / "out")]) == 0
    assert "warning: AIFNet unavailable" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["aif"]["selector"] == "classic"
    assert any("AIFNet unavailable" in w for w in report["aif"]["warnings"])
    shutil.copytree(SHIPPED, broken_models, dirs_exist_ok=True)
    assert main(["aif", str(ctp), "--out", str(tmp_path / "out2"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "out2" / "report.json").read_text(encoding="utf-8"))
    assert report["aif"]["selector"] == "aifnet" and report["aif"]["warnings"] == []
    pvol, _ = read_volume(tmp_path / "out2" / "aif_pvol.nii.gz")
    assert pvol.shape == small_case.series.shape_zyx
    assert (tmp_path / "out2" / "vof_pvol.nii.gz").is_file()


def test_slab_wise_pvol_equals_one_whole_volume_pass():
    """Series larger than the networks' memory budget run in tiles (z-slabs split into rows, with halos of the
    receptive radii); the Pvol must not depend on the tiles."""
    case = make_phantom(seed=4, shape_zyx=(24, 48, 48), n_frames=30, noise_hu=3.0)  # 2 slabs x 3 rows of tiles
    model, _ = networks.load_model("aif")
    whole = inf.predict_pvol(model, case.series, max_voxels=10 ** 9)
    slabbed = inf.predict_pvol(model, case.series, max_voxels=3 * 48 * 48)
    assert inf.z_halo(model) >= 4
    np.testing.assert_allclose(slabbed, whole, rtol=1e-4, atol=1e-9)
    assert float(whole.sum()) == pytest.approx(1.0, abs=1e-5)
    vof_model, _ = networks.load_model("vof")  # both networks on each slab's shared input: each as if alone
    both = inf.predict_pvols([model, vof_model], case.series, max_voxels=3 * 48 * 48)
    np.testing.assert_array_equal(both[0], slabbed)
    # the VOF network alone has smaller halos, so other tiles: the same Pvol within float32 rounding
    np.testing.assert_allclose(both[1], inf.predict_pvol(vof_model, case.series, max_voxels=3 * 48 * 48),
                               rtol=1e-5, atol=1e-12)


def test_air_beyond_the_head_window_gets_no_probability(monkeypatch):
    """The networks run on the head's in-plane window: outside it the Pvol is 0, and inside the head it is the
    whole-field pass's Pvol renormalised (the head's logits do not change)."""
    case = make_phantom(seed=4, shape_zyx=(4, 128, 128), n_frames=30, noise_hu=3.0, spacing_mm=(1.8, 1.8, 6.0))
    s = case.series
    model, _ = networks.load_model("aif")
    ys, xs = inf.head_window(s, (1, 1), (inf.HEAD_MARGIN, inf.HEAD_MARGIN))
    assert (ys.stop - ys.start) * (xs.stop - xs.start) < 0.8 * 128 * 128  # the field holds air around the head
    pvol = inf.predict_pvol(model, s)
    outside = np.ones(s.shape_zyx, bool)
    outside[:, ys, xs] = False
    assert np.all(pvol[outside] == 0) and float(pvol.sum()) == pytest.approx(1.0, abs=1e-5)
    head = np.asarray(s.data[0]) > inf.HEAD_HU
    monkeypatch.setattr(inf, "HEAD_HU", -np.inf)  # every voxel reads as head: the whole field
    whole = inf.predict_pvol(model, s)
    assert np.all(whole > 0)
    np.testing.assert_allclose(pvol[head] / pvol[head].sum(), whole[head] / whole[head].sum(), rtol=1e-4, atol=1e-12)


def test_fine_matrix_is_pooled_to_the_trained_voxel_size():
    """A 0.45 mm in-plane series (a 512 matrix) is seen by the network as 0.9 mm blocks: the same AIF as the
    0.9 mm series it was upsampled from, and a Pvol spread evenly over each 2x2 block, summing to 1."""
    case = make_phantom(seed=6, shape_zyx=(6, 64, 64), n_frames=30, noise_hu=3.0, spacing_mm=(0.9, 0.9, 6.0))
    s = case.series
    geometry = dataclasses.replace(s.geometry, spacing_mm=(0.45, 0.45, 6.0))
    fine = dataclasses.replace(s, data=s.data.repeat(2, axis=2).repeat(2, axis=3), geometry=geometry)
    assert inf.pool_factors(fine.geometry.spacing_mm) == (2, 2) and inf.pool_factors(s.geometry.spacing_mm) == (1, 1)
    model, _ = networks.load_model("aif")
    coarse_pvol = inf.predict_pvol(model, s)
    fine_pvol = inf.predict_pvol(model, fine)
    assert float(fine_pvol.sum()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(fine_pvol.reshape(6, 64, 2, 64, 2).sum(axis=(2, 4)), coarse_pvol, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(inf.dense_weighted_curve(fine, fine_pvol), inf.dense_weighted_curve(s, coarse_pvol),
                               rtol=1e-4)


def test_checkpoints_are_written_whole(tmp_path):
    """write_checkpoint: the file appears only complete (no temporary left) and reads back with weights_only."""
    from training.common.weights_io import write_checkpoint
    path = write_checkpoint({"format": 1, "config": {"widths": [2]}, "state_dict": {"w": torch.ones(2)},
                            "meta": {"version": "t"}}, tmp_path / "new" / "m.pt")
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]
    back = torch.load(path, weights_only=True)
    assert back["meta"]["version"] == "t" and torch.equal(back["state_dict"]["w"], torch.ones(2))


@needs_weights
def test_onnxruntime_gives_torchs_input_functions_without_torch(small_case, monkeypatch):
    """The shipped ONNX exports through onnxruntime against the torch networks they came from: the same curves
    and Pvols within float32 rounding, and the CPU path imports no torch."""
    import subprocess
    import sys
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv(networks.RUNTIME_ENV, "torch")
    torch_functions = inf.select_aifnet(small_case.series, device="cpu")
    monkeypatch.setenv(networks.RUNTIME_ENV, "onnxruntime")
    onnx_functions = inf.select_aifnet(small_case.series, device="cpu")
    assert (torch_functions.details["runtime"], onnx_functions.details["runtime"]) == ("torch", "onnxruntime")
    np.testing.assert_allclose(onnx_functions.aif_hu, torch_functions.aif_hu, rtol=0, atol=1e-3)
    np.testing.assert_allclose(onnx_functions.vof_hu, torch_functions.vof_hu, rtol=0, atol=1e-3)
    for a, b in ((onnx_functions.aif_pvol, torch_functions.aif_pvol), (onnx_functions.vof_pvol, torch_functions.vof_pvol)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(b.max()))
    shipped = weights.read_manifest()["models"]
    models = onnx_functions.details["models"]
    assert models["aifnet_aif"]["sha256"] == shipped["aif"]["sha256"]  # the weights the graph was exported from
    assert models["aifnet_aif"]["graph_sha256"] == shipped["aif_onnx"]["sha256"]
    code = ("import sys; from AIFSelectorLib.phantom.case import make_phantom; "
            "from AIFSelectorLib.input_functions.aifnet.inference import select_aifnet; "
            "f = select_aifnet(make_phantom(1, shape_zyx=(2, 64, 64), n_frames=40).series, 'auto'); "
            "print(f.details['runtime'], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items() if k != networks.RUNTIME_ENV})
    assert done.stdout.split() == ["onnxruntime", "False"], done.stderr[-2000:]


@needs_weights
def test_a_graph_not_exported_from_the_shipped_weights_is_refused(small_case, broken_models):
    pytest.importorskip("onnxruntime")
    manifest = json.loads((broken_models / "manifest.json").read_text(encoding="utf-8"))
    manifest["models"]["aif_onnx"]["exported_from"]["sha256"] = "0" * 64  # a graph of other weights
    (broken_models / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(weights.WeightsError, match="exported from other weights"):
        networks.load_networks("cpu")
    shutil.copy(SHIPPED / "manifest.json", broken_models / "manifest.json")
    graph = bytearray((broken_models / "aifnet_vof.onnx").read_bytes())
    graph[len(graph) // 2] ^= 0xFF
    (broken_models / "aifnet_vof.onnx").write_bytes(bytes(graph))
    with pytest.raises(weights.WeightsError, match="aifnet_vof.onnx is corrupted or modified"):
        networks.load_networks("cpu")


@needs_weights
def test_without_a_runtime_the_policy_falls_back_to_classic():
    """Neither onnxruntime nor torch importable (here: torch forced, and blocked): a WeightsError, so the
    selection policy gives the classic selector's functions with a warning, not a crash."""
    import subprocess
    import sys
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is blocked by the test')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from AIFSelectorLib.phantom.case import make_phantom; "
            "from AIFSelectorLib.prepare.prepared import prepare; "
            "from AIFSelectorLib.input_functions.policy import select_input_functions; "
            "f = select_input_functions(prepare(make_phantom(1, shape_zyx=(2, 64, 64), n_frames=40).series), 'aifnet'); "
            "print(f.method, any('onnxruntime (CPU) or torch' in w for w in f.warnings))")
    env = dict(__import__("os").environ, **{networks.RUNTIME_ENV: "torch"})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.stdout.split() == ["classic", "True"], done.stderr[-2000:]
