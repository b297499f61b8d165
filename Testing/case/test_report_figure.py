"""report.png as a radiologist reads it: orientation from the geometry, slice positions in mm, the
hypoperfusion intensity ratio beside the volumes, and a figure drawn on one page."""
import json

import numpy as np
import pytest

from AIFSelectorLib.ctp_series import VolumeGeometry
from AIFSelectorLib.thresholds.decision import hypoperfusion_intensity_ratio
from StrokeLesionLib.case.report_figure import orientation_labels, slice_position_mm
from StrokeLesionLib.cli import main


def test_orientation_follows_the_geometry():
    assert orientation_labels(np.eye(3).ravel()) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    flipped = np.diag([-1.0, 1.0, 1.0]).ravel()  # x stored from patient left to right
    assert orientation_labels(flipped)["left"] == "L" and orientation_labels(flipped)["right"] == "R"
    coronal = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]).ravel()  # rows run S -> I
    assert orientation_labels(coronal)["top"] == "S" and orientation_labels(coronal)["bottom"] == "I"


def test_slice_positions_are_millimetres():
    g = VolumeGeometry((0.9, 0.9, 5.0), (0.0, 0.0, -30.0))
    assert slice_position_mm(g, 0) == -30.0 and slice_position_mm(g, 3) == pytest.approx(-15.0)


def test_hypoperfusion_intensity_ratio():
    tmax = np.zeros((1, 10, 10), np.float32)
    tmax[0, :4] = 12.0   # 40 voxels over 10 s
    tmax[0, 4:8] = 8.0   # 40 more over 6 s only
    at_risk = tmax > 6.0
    hir = hypoperfusion_intensity_ratio(tmax, at_risk, voxel_ml=0.5)
    assert hir == {"tmax_severe_ml": 20.0, "hypoperfusion_intensity_ratio": 0.5}
    assert hypoperfusion_intensity_ratio(tmax, np.zeros_like(at_risk), 0.5)["hypoperfusion_intensity_ratio"] is None


def test_run_reports_hir_and_draws_one_page(small_ctp, tmp_path):
    out = tmp_path / "res"
    assert main(["run", str(small_ctp), "--aif", "classic", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    v = report["volumes_ml"]
    assert {"tmax_severe_ml", "hypoperfusion_intensity_ratio"} <= set(v)
    assert v["tmax_severe_ml"] <= v["hypoperfused_ml"]
    import matplotlib.image as mpimg
    png = mpimg.imread(out / "report.png")
    assert png.shape[0] < png.shape[1] and png.shape[1] == 18 * 80  # one landscape page at 80 dpi


def test_colour_tables_match_matplotlibs():
    """The figure's colour tables (drawn without importing matplotlib) are matplotlib's jet and autumn."""
    from matplotlib import colormaps
    from StrokeLesionLib.case.report_figure import colour_table
    for name in ("jet", "autumn"):
        reference = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255
        assert np.abs(colour_table(name).astype(float) - reference).max() <= 1.0, name


def test_edges_outline_a_mask():
    from StrokeLesionLib.case.report_figure import edges
    mask = np.zeros((7, 7), bool)
    mask[2:5, 2:5] = True
    outline = edges(mask)
    assert outline.sum() == 8 and not outline[3, 3] and outline[2, 2]
