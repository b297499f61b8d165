"""Phantom variety for the lesion models (``make_phantom(lesion_variety=True, head_rotation_max_deg=...)``):
lesion sites, sides, counts and sizes vary across seeds; the recorded head rotation is the one in the image
(sign: a positive angle turns the head's left-right axis from +x towards +y, clockwise in a (y, x) array
shown with row 0 at the top); lesions lie in brain tissue and follow the decision rule; thin and thick
slices work; the default case keeps its one MCA lesion and its random stream."""
import json

import numpy as np
import pytest

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.thresholds.decision import core_penumbra
from AIFSelectorLib.maps.perfusion_maps import relative_maps
from AIFSelectorLib.phantom.case import make_phantom
from AIFSelectorLib.phantom.anatomy import ARTERY, CORE, CSF, GM, PENUMBRA, WM
from AIFSelectorLib.phantom.lesions import SITES

# an adult head (230 mm field of view), thick slices, a few frames: cheap cases
ADULT = dict(shape_zyx=(6, 96, 96), spacing_mm=(2.4, 2.4, 8.0), n_frames=10)
VARIETY_SEEDS = range(10000, 10036)


@pytest.fixture(scope="module")
def variety_cases():
    return [make_phantom(s, lesion_variety=True, **ADULT) for s in VARIETY_SEEDS]


def principal_axis_deg(mask: np.ndarray, spacing_xyz) -> float:
    """Angle [deg] of the long (anterior-posterior) axis of a (z, y, x) mask, measured as the head rotation
    is: the long axis points along (x, y) = (-sin a, cos a) in mm."""
    _, y, x = np.nonzero(mask)
    pts = np.stack([x * spacing_xyz[0], y * spacing_xyz[1]]).astype(np.float64)
    w, v = np.linalg.eigh(np.cov(pts))
    vx, vy = v[:, np.argmax(w)]
    if vy < 0:
        vx, vy = -vx, -vy
    return float(np.degrees(np.arctan2(-vx, vy)))


def test_default_case_keeps_one_mca_lesion_and_its_stream():
    base = make_phantom(3, **ADULT)
    assert base.params["lesion_variety"] is False and base.params["head_rotation_max_deg"] == 8.0
    lesions = base.params["lesions"]
    assert len(lesions) == 1 and lesions[0]["site"] == "mca"
    assert lesions[0]["side"] == base.params["anatomy"]["lesion_side"]
    assert abs(base.params["anatomy"]["head_rotation_deg"]) <= 8.0
    voxel_ml = base.series.geometry.voxel_volume_ml
    assert lesions[0]["volume_ml"] == pytest.approx(base.truth["lesion"].sum() * voxel_ml, rel=0.15)
    # the rotation range scales the one rotation draw and leaves every other draw where it was
    half = make_phantom(3, head_rotation_max_deg=4.0, **ADULT)
    assert half.params["anatomy"]["head_rotation_deg"] == pytest.approx(
        0.5 * base.params["anatomy"]["head_rotation_deg"], abs=1e-5)
    assert half.params["bolus"] == base.params["bolus"]
    assert half.params["anatomy"]["head_shift_mm"] == base.params["anatomy"]["head_shift_mm"]
    assert half.params["lesions"][0]["core_radius_mm"] == lesions[0]["core_radius_mm"]
    np.testing.assert_array_equal(half.aif_hu, base.aif_hu)
    assert not np.array_equal(half.truth["brain_mask"], base.truth["brain_mask"])


def test_sites_sides_counts_and_sizes_vary(variety_cases):
    lesions = [les for c in variety_cases for les in c.params["lesions"]]
    assert {les["site"] for les in lesions} == set(SITES)
    assert {les["side"] for les in lesions} == {"left", "right"}
    counts = [len(c.params["lesions"]) for c in variety_cases]
    assert set(counts) == {1, 2, 3}
    volumes = np.array([les["volume_ml"] for les in lesions])
    assert volumes.min() < 5.0 and volumes.max() > 100.0, volumes
    assert volumes.min() >= 0.9  # a core cut down below 1 ml by the slab is drawn again
    for c in variety_cases:
        union_ml = c.truth["lesion"].sum() * c.series.geometry.voxel_volume_ml
        own = [les["volume_ml"] for les in c.params["lesions"]]
        # vessels >= 50 % cover a few core voxels; overlapping lesions count once in the union
        assert 0.8 * max(own) <= union_ml <= sum(own) + 1e-6
        # every lesion's core holds its recorded centre, mapped through the recorded head pose
        pose = c.params["anatomy"]
        a = np.radians(pose["head_rotation_deg"])
        centre_xyz = np.array(pose["head_shift_mm"] + [-pose["slab_centre_above_head_centre_mm"]])
        origin, spacing = np.array(c.series.geometry.origin_mm), np.array(c.params["spacing_mm_xyz"])
        for les in c.params["lesions"]:
            assert les["site"] in SITES and les["side"] in ("left", "right")
            xh, yh, zh = les["centre_head_mm"]
            assert (1 if les["side"] == "left" else -1) * xh > 0
            world = centre_xyz + [np.cos(a) * xh - np.sin(a) * yh, np.sin(a) * xh + np.cos(a) * yh, zh]
            i, j, k = np.round((world - origin) / spacing).astype(int)
            assert c.truth["lesion"][k, j, i] or c.truth["labels"][k, j, i] == ARTERY, les


def test_lesions_lie_in_brain_tissue_and_follow_the_decision_rule(variety_cases):
    for c in variety_cases[:12]:
        t = c.truth
        lab, tm = t["labels"], t["tissue_mask"]
        assert t["lesion"].any() and np.array_equal(t["lesion"], lab == CORE)
        assert not np.any(t["lesion"] & ~t["brain_mask"])
        assert not np.any(t["lesion"] & (lab == CSF))
        maps = {k: t[k].copy() for k in ("cbf", "cbv", "tmax")}
        relative_maps(maps, tm)
        core, pen = core_penumbra(maps["rcbf"], maps["tmax"], tm)
        assert np.array_equal(core, t["core"]) and np.array_equal(pen, t["penumbra"])
        assert np.array_equal(t["core"], t["lesion"] & tm)
        assert np.array_equal(t["penumbra"], (lab == PENUMBRA) & tm)


@pytest.mark.parametrize("variety", [False, True])
def test_recorded_rotation_is_the_image_rotation(variety):
    errors = []
    for seed in range(6):
        c = make_phantom(seed, lesion_variety=variety, head_rotation_max_deg=25.0,
                         shape_zyx=(4, 128, 128), spacing_mm=(1.8, 1.8, 8.0), n_frames=10)
        angle = c.params["anatomy"]["head_rotation_deg"]
        assert abs(angle) <= 25.0
        # the head outline (scalp surface) is the rotated ellipse; the brain's principal axis also feels the
        # random skull thickness (up to ~5 deg off), its midline though is exactly the head's
        errors.append(principal_axis_deg(c.truth["labels"] > 0, c.params["spacing_mm_xyz"]) - angle)
    assert np.max(np.abs(errors)) <= 2.0, errors


def test_positive_rotation_turns_the_posterior_pole_towards_minus_x():
    c = make_phantom(1, head_rotation_max_deg=25.0, shape_zyx=(4, 128, 128), spacing_mm=(1.8, 1.8, 8.0), n_frames=10)
    angle = c.params["anatomy"]["head_rotation_deg"]
    head = c.truth["labels"].any(axis=0)
    rows = np.nonzero(head.any(axis=1))[0]
    front, back = head[rows[:10]], head[rows[-10:]]              # anterior (small y) and posterior rows
    cols = np.arange(head.shape[1])
    x_front, x_back = (np.sum(m * cols) / m.sum() for m in (front, back))
    assert abs(angle) > 5.0 and np.sign(x_back - x_front) == -np.sign(angle)


def test_head_stays_in_the_field_of_view_with_large_shift_and_rotation(variety_cases):
    shifts = np.array([c.params["anatomy"]["head_shift_mm"] for c in variety_cases])
    assert np.abs(shifts).max() > 10.0       # default shifts are within 6 mm
    for c in variety_cases:
        edge = np.concatenate([c.truth["labels"][:, [0, -1], :].ravel(), c.truth["labels"][:, :, [0, -1]].ravel()])
        assert not edge.any()
    for variety in (False, True):
        for seed in range(4):
            tilted = make_phantom(seed, lesion_variety=variety, head_rotation_max_deg=60.0, shape_zyx=(4, 64, 96),
                                  spacing_mm=(3.6, 3.6, 8.0), n_frames=10)
            lab = tilted.truth["labels"]
            assert not lab[:, [0, -1], :].any() and not lab[:, :, [0, -1]].any()


@pytest.mark.parametrize("spacing_z, nz", [(2.0, 12), (10.0, 5)])
def test_thin_and_thick_slices(spacing_z, nz):
    for seed in (10100, 10101, 10102):
        c = make_phantom(seed, lesion_variety=True, shape_zyx=(nz, 96, 96), spacing_mm=(2.4, 2.4, spacing_z),
                         n_frames=10)
        t = c.truth
        assert t["lesion"].any() and t["penumbra"].any()
        voxel_ml = c.series.geometry.voxel_volume_ml
        assert all(les["volume_ml"] >= 0.9 for les in c.params["lesions"])
        assert t["lesion"].sum() * voxel_ml <= sum(les["volume_ml"] for les in c.params["lesions"]) + 1e-6
        for img in (c.dwi, c.ncct, c.t1):
            assert img.shape == (nz, 96, 96) and np.all(np.isfinite(img))


def test_chronic_t1_and_ncct_darkening():
    for seed in (10200, 10201, 10202, 10203):
        c = make_phantom(seed, lesion_variety=True, noise_hu=0.0, **ADULT)
        t = c.truth
        les = t["lesion"] & t["tissue_mask"]
        wm = (t["labels"] == WM) & t["tissue_mask"]
        gm = (t["labels"] == GM) & t["tissue_mask"]
        # T1: CSF 40, GM 85, WM 120; the chronic infarct is CSF-like to gliotic, darker than grey matter
        assert np.median(c.t1[les]) < np.median(c.t1[gm]) - 10.0 < np.median(c.t1[wm])
        assert 25.0 <= np.median(c.t1[les]) <= 90.0
        assert c.dwi[les].mean() > 1.5 * c.dwi[wm].mean()
        # NCCT: 4-10 HU darker than the same tissue before contrast (the first frame, noise-free)
        dark = np.mean(c.series.data[0][les] - c.ncct[les])
        per_lesion = [les_["ncct_darkening_hu"] for les_ in c.params["lesions"]]
        assert 4.0 <= min(per_lesion) and max(per_lesion) <= 10.0
        assert 0.6 * min(per_lesion) <= dark <= 1.25 * max(per_lesion)


def test_variety_is_deterministic_json_and_checked():
    a = make_phantom(10300, lesion_variety=True, **ADULT)
    b = make_phantom(10300, lesion_variety=True, **ADULT)
    np.testing.assert_array_equal(a.truth["labels"], b.truth["labels"])
    np.testing.assert_array_equal(a.t1, b.t1)
    assert a.params == b.params and json.loads(json.dumps(a.params)) == a.params
    assert a.params["lesion_variety"] is True and a.params["ncct_lesion_darkening_hu"] is None
    plain = make_phantom(10300, **ADULT)
    assert not np.array_equal(plain.truth["labels"], a.truth["labels"])
    for bad in (-1.0, float("nan"), 200.0):
        with pytest.raises(InputError, match="head_rotation_max_deg"):
            make_phantom(0, head_rotation_max_deg=bad, **ADULT)
