"""`strokelesion batch --reference isles2018`: agreement tables on a small cohort in the ISLES 2018 layout made
from phantoms (their true CBF, CBV, MTT and Tmax stand in for the scanner's maps, their true core for OT),
and the statistics against textbook values."""
import csv

import numpy as np
import pytest

from AIFSelectorLib.io.volume_io import write_series_nifti, write_volume
from AIFSelectorLib.phantom.case import make_phantom
from StrokeLesionLib.case.agreement import bland_altman, icc_a1
from StrokeLesionLib.cli import main


def isles_entry(case_folder, modality, image_id):
    name = f"SMIR.Brain.XX.O.{modality}.{image_id}"
    (case_folder / name).mkdir(parents=True)
    return case_folder / name / f"{name}.nii"


@pytest.fixture(scope="module")
def isles_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("isles") / "TRAINING"
    for i in range(4):
        case = make_phantom(seed=40 + i, shape_zyx=(4, 64, 64), n_frames=30)
        folder = root / f"case_{i + 1}"
        write_series_nifti(isles_entry(folder, "CT_4DPWI", 1000 + 10 * i), case.series)
        g = case.series.geometry
        for modality, key in (("CT_CBF", "cbf"), ("CT_CBV", "cbv"), ("CT_MTT", "mtt"), ("CT_Tmax", "tmax")):
            write_volume(isles_entry(folder, modality, 1001 + 10 * i + len(modality)), case.truth[key], g)
        write_volume(isles_entry(folder, "OT", 1009 + 10 * i), case.truth["core"].astype(np.uint8), g)
    return root


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_batch_compares_every_case_with_the_datasets_maps_and_labels(isles_cohort, tmp_path, capsys):
    out = tmp_path / "results"
    # the small phantoms' cores are 0.05-0.1 ml: no island removal, on both sides of the comparison
    assert main(["batch", str(isles_cohort), "--out", str(out), "--aif", "classic", "--workers", "2",
                 "--min-island-ml", "0", "--reference", "isles2018"]) == 0
    rows = read_csv(out / "agreement.csv")
    assert [r["case_id"] for r in rows] == [f"case_{i}" for i in range(1, 5)]
    for r in rows:
        # the truth maps under the same rule give the true core, so the reference's Dice against OT is high
        assert float(r["reference_core_dice_vs_ot"]) > 0.9
        assert 0.0 <= float(r["core_dice_vs_ot"]) <= 1.0
        assert float(r["core_minus_ot_ml"]) == pytest.approx(float(r["core_ml"]) - float(r["ot_ml"]), abs=1e-3)
    summary = {r["measure"]: r for r in read_csv(out / "agreement_summary.csv")}
    assert set(summary) == {"core", "tmax_over_threshold"}
    for r in summary.values():
        assert int(r["n_cases"]) == 4
        assert -1.0 <= float(r["icc_a1"]) <= 1.0
        assert float(r["loa_low_ml"]) <= float(r["bias_ml"]) <= float(r["loa_high_ml"])
    dices = sorted(float(r["core_dice_vs_ot"]) for r in rows)
    assert float(summary["core"]["median_dice_vs_ot"]) == pytest.approx(np.median(dices), abs=1e-3)
    assert (out / "agreement.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "agreement with isles2018, core: ICC(A,1)" in printed


def test_icc_and_bland_altman_against_known_values():
    # Shrout & Fleiss (1979) ratings of 6 targets by judges 1 and 2: ICC(2,1) computed by hand from their table
    x, y = [9, 6, 8, 7, 10, 6], [2, 1, 4, 1, 5, 2]
    data = np.column_stack([x, y]).astype(float)
    n, k = data.shape
    grand = data.mean()
    msr = k * ((data.mean(1) - grand) ** 2).sum() / (n - 1)
    msc = n * ((data.mean(0) - grand) ** 2).sum() / (k - 1)
    mse = (((data - grand) ** 2).sum() - msr * (n - 1) - msc * (k - 1)) / ((n - 1) * (k - 1))
    assert icc_a1(x, y) == pytest.approx((msr - mse) / (msr + mse + 2 * (msc - mse) / n))
    assert icc_a1([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert icc_a1([1, 2, 3, 4], [2, 3, 4, 5]) < 1.0  # a constant offset is disagreement
    assert icc_a1([1.0], [1.0]) is None
    ba = bland_altman([10, 12, 14], [9, 12, 15])
    assert ba["bias_ml"] == pytest.approx(0.0)
    assert ba["loa_high_ml"] == pytest.approx(1.96 * 1.0) and ba["loa_low_ml"] == pytest.approx(-1.96)
