"""The command line end to end, as a user runs it: phantom → files → run/aif/maps/demo → output folder."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AIFSelectorLib.io.aif_csv import read_aif_csv
from AIFSelectorLib.io.volume_io import read_volume
from StrokeLesionLib.cli import main
from StrokeLesionLib.case.output_folder import MARKER

OUTPUT_FILES = ["cbf", "cbv", "mtt", "tmax", "ttp", "rcbf", "rcbv", "brain_mask", "core", "penumbra"]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "phantom"
    assert main(["phantom", "--out", str(d), "--seed", "11"]) == 0
    return d


def test_phantom_command_writes_the_contract(phantom_dir):
    for name in ("ctp.nii.gz", "dwi.nii.gz", "ncct.nii.gz", "t1.nii.gz", "truth/aif.csv"):
        assert (phantom_dir / name).is_file(), name
    for name in OUTPUT_FILES + ["artery_mask", "vein_mask", "lesion"]:
        assert (phantom_dir / "truth" / f"{name}.nii.gz").is_file(), name
    image = sitk.ReadImage(str(phantom_dir / "ctp.nii.gz"))
    assert image.GetDimension() == 4 and image.GetSize()[3] == 48


def test_run_with_classic_aif(phantom_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(phantom_dir / "ctp.nii.gz"), "--aif", "classic", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "core" in printed and "penumbra" in printed and "mismatch" in printed
    for name in OUTPUT_FILES + ["aif_pvol", "vof_pvol"]:
        assert (out / f"{name}.nii.gz").is_file(), name
    assert (out / "report.png").stat().st_size > 10_000
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["aif"]["selector"] == "classic"
    assert set(report["aif"]["quality_flags"]) == {"truncated_bolus", "late_arrival", "low_peak", "saturation",
                                                   "outlier_samples", "vof_missing"}
    assert not report["aif"]["quality_flags"]["outlier_samples"] and not report["aif"]["quality_flags"]["vof_missing"]
    assert report["thresholds"]["core_rcbf"] == 0.38 and report["thresholds"]["tmax_s"] == 6.0

    cbf, g = read_volume(out / "cbf.nii.gz")
    _, truth_g = read_volume(phantom_dir / "truth" / "cbf.nii.gz")
    assert g.matches(truth_g)
    pvol, _ = read_volume(out / "aif_pvol.nii.gz")
    assert pvol.min() >= 0 and abs(pvol.sum() - 1) < 1e-4
    artery, _ = read_volume(phantom_dir / "truth" / "artery_mask.nii.gz")
    near_artery = ndimage.binary_dilation(artery > 0, np.ones((1, 5, 5), bool))  # partial-volume rim
    assert pvol[near_artery].sum() > 0.75, "classic AIF voxels should mostly lie on the phantom arteries"

    core, _ = read_volume(out / "core.nii.gz")
    voxel_ml = np.prod(g.spacing_mm) / 1000
    assert report["volumes_ml"]["core_ml"] == pytest.approx(core.sum() * voxel_ml, abs=0.01)
    times, aif, vof = read_aif_csv(out / "aif.csv")
    _, true_aif, true_vof = read_aif_csv(phantom_dir / "truth" / "aif.csv")
    assert len(times) == 48
    assert np.corrcoef(aif, true_aif)[0, 1] > 0.98 and np.corrcoef(vof, true_vof)[0, 1] > 0.97


def test_core_threshold_flag_changes_core(phantom_dir, tmp_path):
    vols = {}
    for thr in ("0.38", "0.30"):
        out = tmp_path / f"run{thr}"
        assert main(["run", str(phantom_dir / "ctp.nii.gz"), "--aif", "classic", "--method", "csvd",
                     "--core-rcbf", thr, "--out", str(out)]) == 0
        vols[thr] = json.loads((out / "report.json").read_text(encoding="utf-8"))["volumes_ml"]
    assert vols["0.30"]["core_ml"] < vols["0.38"]["core_ml"]
    assert vols["0.30"]["hypoperfused_ml"] == pytest.approx(vols["0.38"]["hypoperfused_ml"], abs=0.01)


def test_bayes_writes_uncertainty_maps_and_volume_ranges(phantom_dir, tmp_path):
    out = tmp_path / "bayes"
    assert main(["run", str(phantom_dir / "ctp.nii.gz"), "--aif", str(phantom_dir / "truth" / "aif.csv"),
                 "--method", "bayes", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["maps"]["deconvolution"] == "bayes" and report["maps"]["units"]["tmax_sd"] == "s"
    cbv, _ = read_volume(out / "cbv.nii.gz")
    tissue = cbv != 0  # the maps' tissue (a curve without enhancement has CBF 0 and a positive SD)
    for name in ("cbf_sd", "tmax_sd"):
        sd, _ = read_volume(out / f"{name}.nii.gz")
        assert np.all(sd[~tissue] == 0) and np.all(sd[tissue] >= 0) and np.median(sd[tissue]) > 0, name
    volumes, ranges = report["volumes_ml"], report["volume_ranges_ml"]
    for region in ("core_ml", "hypoperfused_ml", "penumbra_ml"):  # each range holds the volume the maps give
        low, high = ranges[region]
        assert low <= volumes[region] <= high and low < high, region
    assert ranges["control_ml"][0] < ranges["control_ml"][1]


def test_maps_from_true_aif_and_user_mask(phantom_dir, tmp_path):
    out = tmp_path / "maps"
    assert main(["maps", str(phantom_dir / "ctp.nii.gz"), "--aif", str(phantom_dir / "truth" / "aif.csv"),
                 "--mask", str(phantom_dir / "truth" / "brain_mask.nii.gz"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["aif"]["selector"] == "file"
    assert not (out / "aif_pvol.nii.gz").exists()
    brain, _ = read_volume(out / "brain_mask.nii.gz")
    truth_brain, _ = read_volume(phantom_dir / "truth" / "brain_mask.nii.gz")
    brain, truth_brain = brain > 0, truth_brain > 0
    assert not (brain & ~truth_brain).any()  # the user's mask, less its air, bone and CSF voxels
    dropped = int(np.count_nonzero(truth_brain & ~brain))  # the truth mask holds the ventricles and sulci
    assert dropped > 0 and any(w.startswith(f"{dropped} voxels") and "CSF" in w for w in report["warnings"])


def test_aif_command(phantom_dir, tmp_path):
    out = tmp_path / "aif"
    assert main(["aif", str(phantom_dir / "ctp.nii.gz"), "--aif", "classic", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "aif.csv", "aif_pvol.nii.gz", "report.json",
                                                     "vof_pvol.nii.gz"]


def test_overwrite_replaces_a_previous_output(phantom_dir, tmp_path):
    out = tmp_path / "again"
    assert main(["run", str(phantom_dir / "ctp.nii.gz"), "--aif", "classic", "--out", str(out)]) == 0
    assert main(["aif", str(phantom_dir / "ctp.nii.gz"), "--aif", "classic", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "cbf.nii.gz").exists() and (out / "aif.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".again")]


def test_demo_prints_results_beside_truth(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "estimate" in printed and "truth" in printed and "Dice" in printed
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    c = report["truth_comparison"]
    assert c["core_ml"]["truth"] > 0 and c["dice"]["penumbra"] > 0.7
    assert (out / "phantom" / "truth" / "core.nii.gz").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo")]


def test_progress_is_plain_lines_in_a_log(phantom_dir, tmp_path):
    """stderr redirected to a file (not a terminal): progress is plain 'maps: N %' lines, no bar redraws."""
    import subprocess
    import sys
    log = tmp_path / "run.log"
    with open(log, "w") as err:
        rc = subprocess.run([sys.executable, "-m", "StrokeLesionLib.cli", "run", str(phantom_dir / "ctp.nii.gz"),
                             "--aif", "classic", "--out", str(tmp_path / "res")], stderr=err,
                            stdout=subprocess.DEVNULL, timeout=600).returncode
    assert rc == 0
    text = log.read_text(encoding="utf-8")
    assert "\r" not in text and "|" not in text
    shown = [int(line.split()[1]) for line in text.splitlines() if line.startswith("maps:")]
    assert shown and shown[-1] == 100 and shown == sorted(set(shown)) and all(p % 25 == 0 for p in shown)


def test_one_report_schema(phantom_dir, tmp_path):
    """run and aif share the input and aif sections (version, shape, frame interval, quality flags; no
    empty note); volumes are rounded to 0.01 ml."""
    reports = {}
    for command in ("run", "aif"):
        out = tmp_path / command
        assert main([command, str(phantom_dir / "ctp.nii.gz"), "--aif", "classic", "--out", str(out)]) == 0
        reports[command] = json.loads((out / "report.json").read_text(encoding="utf-8"))
    run, aif = reports["run"], reports["aif"]
    for report in (run, aif):
        assert report["strokelesion_version"] and report["threads"]["cpu_cores_available"] >= 1
        assert "note" not in report["input"]
        assert report["input"]["frame_interval_s"] == 1.0 and len(report["input"]["shape_tzyx"]) == 4
    assert run["input"] == aif["input"]
    assert run["aif"] == aif["aif"]
    assert set(run["aif"]["quality_flags"]) == {"truncated_bolus", "late_arrival", "low_peak", "saturation",
                                                "outlier_samples", "vof_missing"}
    assert list(run["timings_s"]) == ["read", "prepare", "input_functions", "maps", "decision", "write", "figure"]
    assert all(v is None or round(v, 2) == v for k, v in run["volumes_ml"].items() if k.endswith("_ml"))
