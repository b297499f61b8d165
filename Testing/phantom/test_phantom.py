"""The digital CTP phantom: shapes, determinism, physiology within the table of phantom/case.py, tracer kinetics
consistent with the perfusion formulas, truth masks consistent with the decision rule, noise, motion,
irregular sampling and the phantom folder."""
import json
import time

import numpy as np
import pytest

from AIFSelectorLib.constants import K_H, TISSUE_DENSITY_G_PER_ML
from AIFSelectorLib.io.ctp_io import read_nifti_series
from AIFSelectorLib.io.aif_csv import read_aif_csv
from AIFSelectorLib.thresholds.decision import core_penumbra
from AIFSelectorLib.maps.perfusion_maps import relative_maps
from AIFSelectorLib.phantom.case import TRUTH_FILES, PhantomCase, make_phantom, write_phantom
from AIFSelectorLib.phantom.anatomy import (ARTERY, CALCIFICATION, CORE, CSF, GM, LABELS, OLIGAEMIA, PENUMBRA,
                                            SKULL, VEIN, WM)
from AIFSelectorLib.io.volume_io import read_volume

SMALL = dict(shape_zyx=(4, 64, 64), spacing_mm=(3.6, 3.6, 6.0))
MAP_KEYS = ("cbf", "cbv", "mtt", "tmax", "ttp", "rcbf", "rcbv")
MASK_KEYS = ("core", "penumbra", "brain_mask", "artery_mask", "vein_mask", "lesion", "tissue_mask")


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    """The ISLES-like default case."""
    return make_phantom(0)


@pytest.fixture(scope="module")
def long_case() -> PhantomCase:
    """Noise-free, 1 s frames for a minute then 4 s frames up to ~11 min, so that every curve (the slow
    steady-state plateau of the AIF included) returns to baseline inside the acquisition."""
    times = np.r_[np.arange(0.0, 60.0, 1.0), np.arange(62.0, 700.0, 4.0)]
    return make_phantom(1, shape_zyx=(4, 128, 128), spacing_mm=(1.8, 1.8, 6.0), frame_times_s=times,
                        noise_hu=0.0)


def dice(a, b):
    return 2.0 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1)


def test_shapes_dtypes_times_geometry(case):
    s = case.series
    assert s.data.shape == (48, 8, 256, 256) and s.data.dtype == np.float32
    np.testing.assert_allclose(s.times_s, np.arange(48.0))
    assert s.geometry.spacing_mm == (0.9, 0.9, 6.0)
    assert case.aif_hu.shape == case.vof_hu.shape == (48,)
    for name in MAP_KEYS:
        assert case.truth[name].shape == (8, 256, 256) and case.truth[name].dtype == np.float32, name
    for name in MASK_KEYS:
        assert case.truth[name].dtype == bool and case.truth[name].shape == (8, 256, 256), name
    assert case.truth["labels"].dtype == np.uint8 and set(np.unique(case.truth["labels"])) <= set(LABELS)
    for img in (case.dwi, case.ncct, case.t1):
        assert img.shape == (8, 256, 256) and img.dtype == np.float32 and np.all(np.isfinite(img))
    params = json.loads(json.dumps(case.params))
    assert params["seed"] == 0 and params["residue_shape"] in ("exponential", "gamma", "box")
    # a different grid, frame count and interval are honoured too
    small = make_phantom(3, n_frames=30, dt_s=2.0, **SMALL)
    assert small.series.data.shape == (30, 4, 64, 64)
    np.testing.assert_allclose(small.series.times_s, 2.0 * np.arange(30))
    assert small.series.geometry.spacing_mm == (3.6, 3.6, 6.0)


def test_deterministic_per_seed_and_different_between_seeds():
    a, b, c = make_phantom(5, **SMALL), make_phantom(5, **SMALL), make_phantom(6, **SMALL)
    np.testing.assert_array_equal(a.series.data, b.series.data)
    for k in a.truth:
        np.testing.assert_array_equal(a.truth[k], b.truth[k])
    np.testing.assert_array_equal(a.dwi, b.dwi)
    assert a.params == b.params
    assert not np.array_equal(a.aif_hu, c.aif_hu)
    assert not np.array_equal(a.truth["labels"], c.truth["labels"])
    assert np.abs(a.series.data - c.series.data).mean() > 1.0


@pytest.mark.parametrize("which", ["case", "long_case"])
def test_tissue_values_within_design_table(which, request):
    pc = request.getfixturevalue(which)
    t, lab, tm = pc.truth, pc.truth["labels"], pc.truth["tissue_mask"]
    table = {GM: dict(cbf=(50, 70), cbv=(4, 5), mtt=(4, 5)), WM: dict(cbf=(20, 25), cbv=(1.8, 2.5), mtt=(5, 6)),
             PENUMBRA: dict(cbf=(15, 35), cbv=(3, 5), mtt=(8, 14)), CORE: dict(cbf=(0, 10), cbv=(0, 2))}
    for code, ranges in table.items():
        m = (lab == code) & tm
        assert m.sum() > 5, LABELS[code]
        for name, (lo, hi) in ranges.items():
            med = np.median(t[name][m])
            assert lo <= med <= hi, (LABELS[code], name, med)
            # MTT is quantised to 0.1 s inside the feasible range, so CBV may step out by a hair
            assert np.all((t[name][m] >= lo - 0.06) & (t[name][m] <= hi + 0.06)), (LABELS[code], name)
    assert np.all(t["tmax"][((lab == GM) | (lab == WM)) & tm] < 6.0)
    assert np.all(t["tmax"][((lab == PENUMBRA) | (lab == CORE)) & tm] > 6.0)
    np.testing.assert_allclose(t["cbf"][tm] * t["mtt"][tm] / 60.0, t["cbv"][tm], rtol=1e-4)
    assert np.all(t["ttp"][tm] > pc.params["bolus"]["arrival_s"])
    for name in MAP_KEYS:
        assert np.all(t[name][~tm] == 0), name


def test_cbv_from_curves_matches_truth(long_case):
    """CBV = kH/rho * int C_t / int AIF * 100 (perfusion_maps) recovers the true CBV from the series."""
    pc = long_case
    tm = pc.truth["tissue_mask"]
    t_s = pc.series.times_s
    tissue = pc.series.data[:, tm].astype(np.float64)
    enh = (tissue - tissue[0]).T
    aif = pc.aif_hu - pc.aif_hu[0]
    cbv = K_H / TISSUE_DENSITY_G_PER_ML * np.trapezoid(enh, t_s, axis=1) / np.trapezoid(aif, t_s) * 100.0
    np.testing.assert_allclose(cbv, pc.truth["cbv"][tm], rtol=0.02)
    np.testing.assert_allclose(pc.truth["cbf"][tm], pc.truth["cbv"][tm] / pc.truth["mtt"][tm] * 60.0, rtol=1e-4)
    # enhancement of tissue only starts after the bolus arrives, and peaks at the true TTP
    arrival = pc.params["bolus"]["arrival_s"]
    assert np.all(np.abs(enh[:, t_s < arrival]) < 1e-3)
    ttp = t_s[np.argmax(enh, axis=1)]
    assert np.median(np.abs(ttp - pc.truth["ttp"][tm])) <= 0.75


def test_aif_vof_equal_area(long_case):
    t_s = long_case.series.times_s
    a = np.trapezoid(long_case.aif_hu - long_case.aif_hu[0], t_s)
    v = np.trapezoid(long_case.vof_hu - long_case.vof_hu[0], t_s)
    assert abs(v / a - 1.0) < 0.02


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_aif_and_vof_shape(seed, case):
    pc = case if seed == 0 else make_phantom(seed, **SMALL)
    t_s, aif, vof = pc.series.times_s, pc.aif_hu, pc.vof_hu
    base = aif[0]
    assert 35.0 <= base <= 45.0 and vof[0] == base
    peak = aif.max() - base
    assert 200.0 <= peak <= 500.0
    arrival = t_s[np.argmax(aif - base > 0.01 * peak)]
    assert 5.0 <= arrival <= 13.0 and 5.0 <= pc.params["bolus"]["arrival_s"] <= 12.0
    # the first pass fits in 48 s: the AIF has fallen well below its peak by the end
    assert aif[-1] - base < 0.5 * peak
    # recirculation: the AIF does not simply decay back to baseline after the first pass
    assert np.all(aif[t_s > t_s[np.argmax(aif)] + 10] - base > 0.02 * peak)
    # the VOF is later and broader (lower) than the AIF
    assert 3.0 <= t_s[np.argmax(vof)] - t_s[np.argmax(aif)] <= 10.0
    assert vof.max() < aif.max()


def test_vessels_partial_volume_and_confounders(case):
    d, t = case.series.data, case.truth
    lab = t["labels"]
    base = case.aif_hu[0]
    peak = case.aif_hu.max() - base
    art, vein = t["artery_mask"], t["vein_mask"]
    assert 50 < art.sum() < 2000 and 100 < vein.sum() < 3000
    assert np.array_equal(art, lab == ARTERY) and np.array_equal(vein, lab == VEIN)
    pre = d[:4].mean(axis=0)
    art_peak = (d[:, art] - pre[art]).max(axis=0)
    # most arterial voxels are partial-volume mixtures: lower than the true AIF, but clearly arterial
    assert np.median(art_peak) < 0.9 * peak and np.median(art_peak) > 0.25 * peak
    # the sinus centre carries the full VOF
    vof_peak = case.vof_hu.max() - base
    vein_peak = (d[:, vein] - pre[vein]).max(axis=0)
    assert abs(np.percentile(vein_peak, 90) - vof_peak) < 0.15 * vof_peak
    # vessels, CSF, calcifications are out of the tissue mask; bone and calcifications are bright, static
    for code in (ARTERY, VEIN, CSF, SKULL, CALCIFICATION):
        assert not np.any(t["tissue_mask"] & (lab == code))
    skull = lab == SKULL
    assert 700 <= np.median(pre[skull]) <= 1500
    calc = lab == CALCIFICATION
    assert calc.any() and np.median(pre[calc]) > 120
    assert abs(np.mean(d[-1][calc] - pre[calc])) < 5.0
    csf = (lab == CSF) & t["brain_mask"]
    assert 0 <= np.median(pre[csf]) <= 15


@pytest.mark.parametrize("seed", [0, 7])
def test_truth_masks_follow_the_decision_rule(seed, case):
    pc = case if seed == 0 else make_phantom(seed)
    t = pc.truth
    tm = t["tissue_mask"]
    maps = {k: t[k].copy() for k in ("cbf", "cbv", "tmax")}
    relative_maps(maps, tm)
    np.testing.assert_allclose(maps["rcbf"], t["rcbf"], rtol=1e-5)
    core, pen = core_penumbra(maps["rcbf"], maps["tmax"], tm)
    assert np.array_equal(core, t["core"]) and np.array_equal(pen, t["penumbra"])
    lab = t["labels"]
    assert t["core"].sum() > 0 and t["penumbra"].sum() > 0
    assert dice(t["core"], t["lesion"]) >= 0.95
    assert np.array_equal(t["lesion"], lab == CORE)
    assert dice(t["penumbra"], (lab == PENUMBRA) & tm) >= 0.95
    # classes agree with the rule with a margin, not by a hair
    assert np.all(t["rcbf"][(lab == CORE) & tm] <= 0.30)
    assert np.all(t["rcbf"][(lab == PENUMBRA) & tm] >= 0.45)
    assert np.all(t["tmax"][((lab == CORE) | (lab == PENUMBRA)) & tm] >= 6.9)
    assert np.all(t["tmax"][((lab == GM) | (lab == WM) | (lab == OLIGAEMIA)) & tm] <= 5.1)
    assert not np.any(t["lesion"] & ~t["brain_mask"])
    # one hemisphere only
    xs = np.nonzero(t["lesion"].any(axis=(0, 1)))[0]
    assert xs.max() < 128 or xs.min() >= 128


def test_noise_sigma_before_bolus(case):
    d, t = case.series.data, case.truth
    pre = case.series.times_s < case.params["bolus"]["arrival_s"]
    assert pre.sum() >= 5
    flat = (t["labels"] == WM) & t["tissue_mask"]
    x = d[pre][:, flat].astype(np.float64)
    sd = np.sqrt(np.sum((x - x.mean(axis=0)) ** 2) / (x.size - x.shape[1]))
    assert abs(sd - 5.0) < 0.25
    quiet = make_phantom(2, noise_hu=0.0, **SMALL)
    pre_q = quiet.series.times_s < quiet.params["bolus"]["arrival_s"]
    np.testing.assert_array_equal(quiet.series.data[pre_q][0], quiet.series.data[pre_q][-1])


def test_look_alikes_show_the_lesion(case):
    t = case.truth
    les = t["lesion"] & t["tissue_mask"]
    other = (t["labels"] == WM) & t["tissue_mask"]
    assert case.dwi[les].mean() > 1.5 * case.dwi[other].mean()
    assert case.t1[les].mean() < 0.7 * case.t1[other].mean()
    dark = np.mean(case.series.data[0][les] - case.ncct[les])
    assert 1.5 <= dark <= 7.5
    assert np.median(case.ncct[t["labels"] == SKULL]) > 700


def test_motion_moves_frames():
    still = make_phantom(4, noise_hu=0.0, **SMALL)
    moved = make_phantom(4, noise_hu=0.0, motion=True, **SMALL)
    np.testing.assert_array_equal(moved.series.data[0], still.series.data[0])
    diff = np.abs(moved.series.data - still.series.data).reshape(len(still.series.times_s), -1).max(axis=1)
    assert (diff[1:] > 1.0).mean() > 0.5
    walk = np.asarray(moved.params["motion_per_frame"])
    assert walk.shape == (48, 3) and np.abs(walk[:, :2]).max() <= 2.0 and np.abs(walk[:, 2]).max() <= 1.5
    for k in moved.truth:
        np.testing.assert_array_equal(moved.truth[k], still.truth[k])


def test_irregular_frame_times_are_honoured(tmp_path):
    times = np.r_[np.arange(0.0, 30.0, 1.0), np.arange(31.0, 61.0, 3.0)]
    irr = make_phantom(8, frame_times_s=times, **SMALL)
    uni = make_phantom(8, n_frames=61, dt_s=1.0, **SMALL)
    np.testing.assert_array_equal(irr.series.times_s, times)
    assert irr.series.data.shape[0] == len(times) and not irr.series.is_uniform
    at = np.searchsorted(uni.series.times_s, times)
    np.testing.assert_allclose(irr.aif_hu, uni.aif_hu[at], atol=1e-6)
    np.testing.assert_allclose(irr.vof_hu, uni.vof_hu[at], atol=1e-6)
    for k in ("cbf", "tmax", "ttp", "core"):
        np.testing.assert_allclose(irr.truth[k], uni.truth[k], atol=1e-4)
    out = write_phantom(irr, tmp_path / "irr")
    s = read_nifti_series(out / "ctp.nii.gz")
    assert s.is_uniform and s.dt_s == pytest.approx(1.0) and s.times_s[-1] == pytest.approx(times[-1])
    t_csv, aif, _ = read_aif_csv(out / "truth" / "aif.csv")
    np.testing.assert_allclose(t_csv, times)
    assert "resampled" in json.loads((out / "truth" / "params.json").read_text(encoding="utf-8"))["ctp_file"]["note"]


def test_write_phantom_folder(tmp_path):
    pc = make_phantom(9, **SMALL)
    out = write_phantom(pc, tmp_path / "case")
    s = read_nifti_series(out / "ctp.nii.gz")
    assert s.data.shape == pc.series.data.shape and s.dt_s == pytest.approx(1.0)
    np.testing.assert_allclose(s.data, pc.series.data, atol=1e-3)
    assert s.geometry.matches(pc.series.geometry)
    for name in ("dwi", "ncct", "t1"):
        arr, geo = read_volume(out / f"{name}.nii.gz")
        assert arr.shape == (4, 64, 64) and geo.matches(pc.series.geometry)
        np.testing.assert_allclose(arr, getattr(pc, name), atol=1e-3)
    for name in TRUTH_FILES:
        arr, geo = read_volume(out / "truth" / f"{name}.nii.gz")
        assert geo.matches(pc.series.geometry), name
        np.testing.assert_allclose(arr.astype(np.float64), pc.truth[name].astype(np.float64), atol=1e-4)
    header = (out / "truth" / "aif.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "time_s,aif_hu,vof_hu"
    t_csv, aif, vof = read_aif_csv(out / "truth" / "aif.csv", times_s=pc.series.times_s)
    np.testing.assert_allclose(aif, pc.aif_hu, rtol=1e-8)
    np.testing.assert_allclose(vof, pc.vof_hu, rtol=1e-8)
    params = json.loads((out / "truth" / "params.json").read_text(encoding="utf-8"))
    assert params["seed"] == 9 and params["bolus"]["aif_peak_hu"] > 0
    assert not list(out.rglob(".*"))  # no temporary files left behind


def test_small_case_is_fast():
    make_phantom(10, **SMALL)
    t0 = time.perf_counter()
    make_phantom(11, shape_zyx=(4, 64, 64))
    assert time.perf_counter() - t0 < 1.5
