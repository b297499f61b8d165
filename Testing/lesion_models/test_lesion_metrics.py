"""lesion_metrics against cases computed by hand (cubes offset by known voxels on an anisotropic grid,
images with known noise) and against a brute-force surface-distance computation."""
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from AIFSelectorLib.errors import InputError
from StrokeLesionLib import metrics as lm

SPACING_XYZ = (0.5, 1.0, 3.0)  # mm; arrays are (z, y, x)


def cube(shape=(10, 10, 12), start=(2, 2, 2), size=4):
    m = np.zeros(shape, dtype=bool)
    z, y, x = start
    m[z:z + size, y:y + size, x:x + size] = True
    return m


def test_overlap_of_cubes_offset_by_two_voxels_in_x():
    a, b = cube(), cube(start=(2, 2, 4))  # 64 voxels each, 32 shared
    assert lm.dice(a, b) == pytest.approx(0.5)
    assert lm.precision(b, a) == pytest.approx(0.5)
    assert lm.recall(b, a) == pytest.approx(0.5)
    small = cube(size=2)  # 8 voxels inside a
    assert lm.precision(small, a) == pytest.approx(1.0)
    assert lm.recall(small, a) == pytest.approx(8 / 64)
    assert lm.relative_volume_error(small, a) == pytest.approx(8 / 64 - 1)


def test_surface_distances_of_offset_cubes_by_hand():
    # A = x 2..5, B = x 4..7 (same y, z). A's far face x=2 (16 voxels) is 2 x-voxels = 1.0 mm from B's face
    # x=4; A's ring at x=3 (12) and the 4 face-centre voxels at x=5 (inside B) are 0.5 mm away; the 24 others
    # lie on B's surface. By symmetry the same holds for B: sum 24 mm over 56 surface voxels each side.
    a, b = cube(), cube(start=(2, 2, 4))
    d_ab, d_ba = lm.surface_distances_mm(a, b, SPACING_XYZ)
    assert d_ab.size == d_ba.size == 56
    assert sorted(np.round(d_ab, 9)) == [0.0] * 24 + [0.5] * 16 + [1.0] * 16
    assert lm.hausdorff_mm(a, b, SPACING_XYZ) == pytest.approx(1.0)
    assert lm.hausdorff_mm(a, b, SPACING_XYZ, percentile=50) == pytest.approx(0.5)
    assert lm.assd_mm(a, b, SPACING_XYZ) == pytest.approx(48 / 112)


def test_spacing_is_x_y_z_and_applies_to_the_right_axes():
    a = cube()
    shifted_z = cube(start=(3, 2, 2))  # one slice further: 3 mm
    shifted_y = cube(start=(2, 3, 2))  # one row: 1 mm
    assert lm.hausdorff_mm(a, shifted_z, SPACING_XYZ) == pytest.approx(3.0)
    assert lm.hausdorff_mm(a, shifted_y, SPACING_XYZ) == pytest.approx(1.0)
    assert lm.hausdorff_mm(a, shifted_y, (1.0, 2.5, 1.0)) == pytest.approx(2.5)


def test_distances_match_brute_force_on_random_blobs():
    rng = np.random.default_rng(3)
    from scipy import ndimage
    a = ndimage.gaussian_filter(rng.random((8, 20, 24)), 2) > 0.52
    b = ndimage.gaussian_filter(rng.random((8, 20, 24)), 2) > 0.52
    assert a.any() and b.any()
    sampling = np.array(SPACING_XYZ[::-1])
    pa = np.argwhere(lm.surface(a)) * sampling
    pb = np.argwhere(lm.surface(b)) * sampling
    d = cdist(pa, pb)
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    assert lm.hausdorff_mm(a, b, SPACING_XYZ) == pytest.approx(max(d_ab.max(), d_ba.max()))
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert lm.hausdorff_mm(a, b, SPACING_XYZ, 95) == pytest.approx(hd95)
    assert lm.assd_mm(a, b, SPACING_XYZ) == pytest.approx(np.concatenate([d_ab, d_ba]).mean())


def test_empty_mask_conventions():
    empty, a = np.zeros((4, 5, 6), bool), cube(shape=(4, 5, 6), start=(1, 1, 1), size=2)
    assert lm.dice(empty, empty) == 1.0
    assert lm.dice(a, empty) == 0.0
    assert lm.precision(empty, empty) == 1.0 and lm.recall(empty, empty) == 1.0
    assert math.isnan(lm.precision(empty, a))  # nothing predicted
    assert lm.recall(empty, a) == 0.0
    assert math.isnan(lm.recall(a, empty))  # no lesion to find
    assert lm.precision(a, empty) == 0.0
    assert lm.relative_volume_error(empty, empty) == 0.0
    assert math.isnan(lm.relative_volume_error(a, empty))
    for pair in ((a, empty), (empty, a), (empty, empty)):
        assert math.isnan(lm.hausdorff_mm(*pair, SPACING_XYZ))
        assert math.isnan(lm.assd_mm(*pair, SPACING_XYZ))
    m = lm.segmentation_metrics(empty, a, SPACING_XYZ)
    assert m["dice"] == 0.0 and math.isnan(m["hausdorff_mm"]) and m["pred_ml"] == 0.0


def test_segmentation_metrics_collects_everything_with_volumes_in_ml():
    a, b = cube(), cube(start=(2, 2, 4))
    m = lm.segmentation_metrics(a, b, SPACING_XYZ)
    assert m["dice"] == pytest.approx(0.5)
    assert m["hausdorff_mm"] == pytest.approx(1.0)
    assert m["hausdorff95_mm"] == pytest.approx(lm.hausdorff_mm(a, b, SPACING_XYZ, 95))
    assert m["assd_mm"] == pytest.approx(48 / 112)
    assert m["relative_volume_error"] == 0.0
    assert m["pred_ml"] == pytest.approx(64 * 0.5 * 1.0 * 3.0 / 1000)
    assert m["truth_ml"] == pytest.approx(m["pred_ml"])


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="shape"):
        lm.dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(InputError, match="spacing"):
        lm.hausdorff_mm(cube(), cube(), (1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        lm.assd_mm(cube(), cube(), (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="percentile"):
        lm.hausdorff_mm(cube(), cube(), SPACING_XYZ, 101)
    img = np.random.default_rng(0).random((3, 8, 8))
    with pytest.raises(InputError, match="NaN"):
        lm.psnr(np.full_like(img, np.nan), img)
    with pytest.raises(InputError, match="empty"):
        lm.ssim(img, img, mask=np.zeros(img.shape, bool))
    with pytest.raises(InputError, match="data range"):
        lm.psnr(img, np.ones_like(img))


def test_ssim_identical_is_one_and_constant_offset_matches_formula():
    rng = np.random.default_rng(1)
    img = rng.normal(100, 20, (4, 32, 32))
    assert lm.ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert lm.psnr(img, img) == float("inf")
    # two flat images: the structure and contrast terms are C2/C2 = 1, luminance is
    # (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) with C1 = (0.01 L)^2 = 1 for L = 100
    a, b = np.full((2, 16, 16), 60.0), np.full((2, 16, 16), 50.0)
    assert lm.ssim(a, b, data_range=100.0) == pytest.approx((2 * 50 * 60 + 1) / (50 ** 2 + 60 ** 2 + 1))


def test_ssim_falls_with_noise_and_lesion_local_ssim_sees_only_the_lesion():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:48, :48]
    ref = np.stack([100 + 50 * np.sin(xx / 5.0) * np.cos(yy / 7.0)] * 3)
    noise = rng.normal(0, 1, ref.shape)
    values = [lm.ssim(ref + s * noise, ref) for s in (1, 5, 20)]
    assert 1 > values[0] > values[1] > values[2]
    lesion = np.zeros(ref.shape, bool)
    lesion[:, 30:40, 30:40] = True
    box = lm.lesion_box(lesion, (0, 2, 2))
    assert box.sum() == 3 * 14 * 14
    degraded = ref + 20 * noise * box
    local, whole = lm.ssim(degraded, ref, mask=box), lm.ssim(degraded, ref)
    assert local < whole < 1
    assert lm.ssim(degraded, ref, mask=~lm.lesion_box(lesion, (0, 8, 8))) == pytest.approx(1.0, abs=1e-9)


def test_psnr_of_known_noise():
    ref = np.zeros((2, 16, 16))
    ref[:, ::2] = 100.0  # data range L = 100
    signs = np.where(np.indices(ref.shape).sum(axis=0) % 2 == 0, 1.0, -1.0)
    assert lm.psnr(ref + 1.0 * signs, ref) == pytest.approx(40.0)  # 20 log10(100 / 1)
    assert lm.psnr(ref + 10.0 * signs, ref) == pytest.approx(20.0)
    region = np.zeros(ref.shape, bool)
    region[:, :4] = True  # a quarter of the image
    noisy = ref + 2.0 * signs * region
    assert lm.psnr(noisy, ref, mask=region) == pytest.approx(20 * np.log10(100 / 2))
    assert lm.psnr(noisy, ref) == pytest.approx(10 * np.log10(100 ** 2 / (4 * 0.25)))
    assert lm.psnr(ref + signs, ref, data_range=50.0) == pytest.approx(20 * np.log10(50))


def test_synthesis_metrics_and_lesion_box_on_a_slice():
    rng = np.random.default_rng(4)
    ref = rng.normal(50, 10, (2, 24, 24))
    lesion = np.zeros(ref.shape, bool)
    lesion[1, 10:12, 10:12] = True
    m = lm.synthesis_metrics(ref + rng.normal(0, 2, ref.shape), ref, lesion)
    assert set(m) == {"ssim", "psnr_db", "ssim_lesion", "psnr_lesion_db"}
    assert 0 < m["ssim"] < 1 and m["psnr_db"] > 20
    assert set(lm.synthesis_metrics(ref, ref)) == {"ssim", "psnr_db"}
    box2d = lm.lesion_box(lesion[1], (0, 1, 1))
    assert box2d.shape == (24, 24) and box2d.sum() == 16
    with pytest.raises(InputError, match="empty"):
        lm.lesion_box(np.zeros((3, 3), bool))


def test_evaluation_table_layout_mean_sd_and_nan_cases():
    from training.lesion_data.evaluation_tables import (PARAMETERS_COLUMN, SEGMENTATION_COLUMNS, Column,
                                                        format_table, mean_sd)
    assert mean_sd([0.5, 0.7, float("nan")]) == (pytest.approx(0.6), pytest.approx(np.std([0.5, 0.7], ddof=1)), 2)
    assert mean_sd([0.4]) == (0.4, 0.0, 1)
    a, b = cube(), cube(start=(2, 2, 4))
    empty = np.zeros_like(a)
    full = [lm.segmentation_metrics(a, a, SPACING_XYZ), lm.segmentation_metrics(b, a, SPACING_XYZ)]
    for m in full:
        m["n_parameters"] = 123456
    missed = [lm.segmentation_metrics(empty, a, SPACING_XYZ), lm.segmentation_metrics(b, a, SPACING_XYZ)]
    columns = SEGMENTATION_COLUMNS[:4] + (Column("dice", "Dice %", 1, 100.0), PARAMETERS_COLUMN)
    text = format_table([("SLNet (maps only)", missed), ("pseudo-DWI + SLNet", full)], columns, title="Table 5")
    lines = text.splitlines()
    assert lines[0] == "Table 5" and lines[1] == lines[3] == lines[-1] and set(lines[1]) == {"-"}
    assert lines[2].split()[:2] == ["Method", "Dice"]
    sd = np.std([1.0, 0.5], ddof=1)
    assert f"0.750 +/- {sd:.3f}" in lines[5] and f"75.0 +/- {100 * sd:.1f}" in lines[5] and "123,456" in lines[5]
    assert "n/a" in lines[4]  # no parameter count given for that row
    assert "1.0 +/- 0.0 (n=1)" in lines[4]  # HD95: the empty prediction has none
    assert len({len(line) for line in lines[1:4]}) == 1
    md = format_table([("X-Net", full)], columns[:1], markdown=True).splitlines()
    assert md[0] == "| Method | Dice |" and md[2].startswith("| X-Net | 0.750 +/- ")


def test_evaluation_report_is_written_whole_with_numpy_values(tmp_path):
    import json
    from training.lesion_data.evaluation_tables import write_report
    path = tmp_path / "new" / "report.json"
    write_report(path, {"dice": np.float32(0.5), "n": 3, "cases": [np.float64(0.25)]})
    assert json.loads(path.read_text(encoding="utf-8")) == {"dice": 0.5, "n": 3, "cases": [0.25]}
    with pytest.raises(TypeError):
        write_report(path, {"bad": object()})
    assert json.loads(path.read_text(encoding="utf-8"))["n"] == 3  # the failed write left the old report
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_evaluation_summary_leaves_out_undefined_values():
    from training.lesion_data.evaluation_tables import summary
    cases = [{"dice": 0.5, "hd": float("nan")}, {"dice": 0.7}, {"dice": 0.9, "hd": 4.0}]
    out = summary(cases, ("dice", "hd", "assd"))
    assert out["dice"]["mean"] == pytest.approx(0.7) and out["dice"]["sd"] == pytest.approx(0.2)
    assert out["dice"]["n"] == 3 and out["hd"] == {"mean": 4.0, "sd": 0.0, "n": 1} and "assd" not in out
