"""Core/penumbra decision, island removal, volumes and mismatch on hand-made maps."""
import numpy as np

from AIFSelectorLib.thresholds.decision import core_penumbra
from AIFSelectorLib.maps.perfusion_maps import relative_map
from AIFSelectorLib.thresholds.decision import Thresholds, decide, lesion_volumes, remove_islands


def _maps():
    shape = (4, 40, 40)
    tissue = np.ones(shape, bool)
    rcbf = np.full(shape, 1.0, np.float32)
    tmax = np.full(shape, 2.0, np.float32)
    tmax[:, 5:25, 5:25] = 9.0          # hypoperfused block, 4*20*20 = 1600 voxels
    rcbf[:, 10:20, 10:20] = 0.2        # core inside it, 400 voxels
    rcbf[:, 30:35, 30:35] = 0.1        # low flow but normal Tmax: not core
    return rcbf, tmax, tissue


def test_rule_core_inside_tmax_and_penumbra_is_the_rest():
    rcbf, tmax, tissue = _maps()
    core, pen = core_penumbra(rcbf, tmax, tissue, 0.38, 6.0)
    assert core.sum() == 400 and pen.sum() == 1200
    assert not (core & pen).any()
    assert not core[:, 30:35, 30:35].any()


def test_rcbf_threshold_is_selectable():
    rcbf, tmax, tissue = _maps()
    rcbf[:, 10:20, 10:20] = 0.34
    assert core_penumbra(rcbf, tmax, tissue, 0.38, 6.0)[0].sum() == 400
    assert core_penumbra(rcbf, tmax, tissue, 0.30, 6.0)[0].sum() == 0


def test_islands_below_min_volume_are_removed():
    mask = np.zeros((3, 30, 30), bool)
    mask[1, 2, 2] = True                     # 1 voxel
    mask[:, 10:20, 10:20] = True             # 300 voxels
    kept = remove_islands(mask, voxel_ml=0.01, min_volume_ml=0.05)
    assert kept.sum() == 300 and not kept[1, 2, 2]
    assert remove_islands(mask, 0.01, 0.0).sum() == 301


def test_decide_removes_noise_and_reports_volumes():
    rcbf, tmax, tissue = _maps()
    tmax[0, 38, 38] = 10.0                   # a single noisy voxel
    core, pen = decide(rcbf, tmax, tissue, voxel_ml=0.005, thresholds=Thresholds(min_island_ml=0.1))
    assert not pen[0, 38, 38]
    v = lesion_volumes(core, pen, 0.005)
    assert v["core_ml"] == 2.0 and v["penumbra_ml"] == 6.0
    assert v["mismatch_ratio"] == 4.0 and v["mismatch_volume_ml"] == 6.0
    assert lesion_volumes(np.zeros_like(core), pen, 0.005)["mismatch_ratio"] is None


def test_relative_map_normalises_to_control_mean():
    values = np.array([10.0, 20.0, 30.0, 100.0])
    control = np.array([True, True, True, False])
    rel, ref = relative_map(values, control)
    assert ref == 20.0 and np.allclose(rel, [0.5, 1.0, 1.5, 5.0])
