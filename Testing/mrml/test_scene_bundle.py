"""``strokelesion run ... --scene OUT.mrb`` and the scene bundle writer: the .mrb appears atomically, every
file its scene references is inside it, and reloaded with slicer-core it holds the CTP sequence, the
curves table and plot, the Pvol volumes, the maps and the segmentation (Core, Penumbra, Lesion (model)),
equal to the run's output folder, referenced from both modules' parameter nodes as the modules leave them.
"""
import json
import os
from pathlib import Path
import re
import zipfile
from urllib.parse import unquote

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from AIFSelectorLib.io import aif_csv  # noqa: E402
from AIFSelectorLib.mrml import aif_selector_logic as aif_lib  # noqa: E402
from AIFSelectorLib.mrml import conversion as mc  # noqa: E402
from AIFSelectorLib.mrml.aif_selector_logic import AIFSelectorLogic  # noqa: E402
from AIFSelectorLib.mrml.scene import open_bundle  # noqa: E402
from AIFSelectorLib.phantom.case import make_phantom  # noqa: E402
from AIFSelectorLib.io.volume_io import read_volume, write_series_nifti  # noqa: E402
from StrokeLesionLib.cli import main  # noqa: E402
from StrokeLesionLib.mrml.stroke_lesion_logic import SEGMENTS, StrokeLesionLogic  # noqa: E402


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=3, shape_zyx=(4, 64, 64), n_frames=30)


@pytest.fixture(scope="module")
def run(phantom, tmp_path_factory):
    """strokelesion run on the small phantom with --scene (classic selector: no weights needed)."""
    d = tmp_path_factory.mktemp("scene")
    ctp = d / "ctp.nii.gz"
    write_series_nifti(ctp, phantom.series)
    out, mrb = d / "out", d / "case.mrb"
    cwd = os.getcwd()
    os.chdir(d)  # a relative --scene path, as typed on a command line
    try:
        code = main(["run", str(ctp), "--out", str(out), "--aif", "classic", "--scene", "case.mrb"])
    finally:
        os.chdir(cwd)
    return code, d, out, mrb


def _referenced_files(mrml_text):
    """File names the scene's storage nodes read (URL-encoded in the .mrml)."""
    found = set(re.findall(r'fileName="([^"]+)"', mrml_text)) | set(re.findall(r'fileListMember\d+="([^"]+)"', mrml_text))
    return {unquote(f) for f in found}


def test_run_writes_a_complete_bundle_atomically(run):
    code, d, out, mrb = run
    assert code == 0 and mrb.is_file() and (out / "report.json").is_file()
    leftovers = [p.name for p in d.iterdir() if p.name not in ("ctp.nii.gz", "out", "case.mrb")]
    assert leftovers == [], leftovers
    with zipfile.ZipFile(mrb) as z:
        names = set(z.namelist())
        mrml = [n for n in names if n.endswith(".mrml")]
        assert mrml == ["case/case.mrml"]
        text = z.read(mrml[0]).decode()
        kinds = {i.filename: i.compress_type for i in z.infolist()}
    # the storage nodes' gzip-encoded NRRDs are stored as they are (not deflated a second time), the rest deflated
    assert kinds["case/Data/CTP.seq.nrrd"] == zipfile.ZIP_STORED, kinds
    assert kinds["case/case.mrml"] == zipfile.ZIP_DEFLATED
    for f in _referenced_files(text):
        assert f"case/{f}" in names, f"the scene references {f}, which is not in the bundle"
    for f in ("Data/CTP.seq.nrrd", "Data/AIFSelector curves.tsv", "Data/CBF.nrrd", "Data/Stroke lesion.seg.nrrd"):
        assert f"case/{f}" in names


def _geometry_matches(node, path):
    array, geometry = read_volume(path)
    return (np.allclose(mc.node_ijk_to_ras(node), mc.ijk_to_ras(geometry), atol=1e-5)
            and mc.array_from_volume(node).shape == array.shape, array)


def test_reloaded_bundle_holds_what_the_run_wrote(run, phantom):
    code, d, out, mrb = run
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    env = open_bundle(mrb)
    try:
        aif = AIFSelectorLogic(env.scene)
        seq = aif.getNode("inputSequence")
        assert seq is not None and seq.GetNumberOfDataNodes() == phantom.series.n_frames
        series = aif.inputSeries()
        assert np.allclose(series.data, phantom.series.data, atol=1e-3)
        assert np.allclose(series.times_s, phantom.series.times_s)
        assert series.geometry.matches(phantom.series.geometry, tol=1e-4)
        assert aif.inputBrowser() is not None and aif.inputProxyVolume() is not None

        times, aif_hu, vof_hu = aif_csv.read_aif_csv(out / "aif.csv")
        curves = aif.curves()
        assert np.allclose(curves["time_s"], times)
        assert np.allclose(curves["aif_hu"], aif_hu, rtol=1e-5, atol=1e-3)
        assert np.allclose(curves["vof_hu"], vof_hu, rtol=1e-5, atol=1e-3)
        chart = aif.getNode("curvesChart")
        names = {chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())}
        assert {"AIF", "VOF", "Tissue (cursor)"} <= names
        assert aif.getParameter("selectorUsed") == "classic" and aif.getParameter("aifSource") == "automatic"
        assert aif.getParameter("method") == report["maps"]["deconvolution"]

        for kind in ("aif", "vof"):
            node = aif.getNode(f"{kind}PvolVolume")
            same, array = _geometry_matches(node, out / f"{kind}_pvol.nii.gz")
            assert same and np.allclose(mc.array_from_volume(node), array)
        composite = env.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        assert composite.GetForegroundVolumeID() == aif.getNode("aifPvolVolume").GetID()
        assert composite.GetBackgroundVolumeID() == aif.inputProxyVolume().GetID()

        for key in aif_lib.MAP_NAMES:
            node = aif.mapVolume(key)
            same, array = _geometry_matches(node, out / f"{key}.nii.gz")
            assert same and np.allclose(mc.array_from_volume(node), array), key
            assert node.GetDisplayNode().GetColorNodeID() in aif_lib.MAP_COLORS

        lesion = StrokeLesionLogic(env.scene)
        seg = lesion.getNode("segmentation")
        segmentation = seg.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        assert names[:2] == ["Core", "Penumbra"]
        for role in ("core", "penumbra"):
            mask, _ = read_volume(out / f"{role}.nii.gz")
            assert np.array_equal(lesion.segmentMask(seg, role), mask > 0), role
        assert lesion.editedSegments(seg) == []
        assert lesion.getParameter("coreRCBF") == report["thresholds"]["core_rcbf"]
        assert lesion.getParameter("tmaxThreshold") == report["thresholds"]["tmax_s"]
        volumes = lesion.volumesFromTable()
        assert volumes["Core"] == pytest.approx(report["volumes_ml"]["core_ml"], abs=0.011)
        assert volumes["Penumbra"] == pytest.approx(report["volumes_ml"]["penumbra_ml"], abs=0.011)
        assert lesion.getNode("rcbfVolume") is aif.mapVolume("rcbf")
    finally:
        env.close()


def test_bundle_with_a_lesion_model_result_has_the_three_segments(phantom, tmp_path):
    from StrokeLesionLib.case.pipeline import RunOptions, run_case
    from StrokeLesionLib.mrml.scene_bundle import write_scene_bundle
    result = run_case(phantom.series, RunOptions(aif="classic"))
    lesion_mask = phantom.truth["lesion"]
    path = write_scene_bundle(result, tmp_path / "with-lesion.mrb", lesion=lesion_mask)
    assert [p.name for p in tmp_path.iterdir()] == ["with-lesion.mrb"]
    env = open_bundle(path)
    try:
        lesion = StrokeLesionLogic(env.scene)
        seg = lesion.getNode("segmentation")
        segmentation = seg.GetSegmentation()
        segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
        assert [s.GetName() for s in segments] == ["Core", "Penumbra", "Lesion (model)"]
        for s, role in zip(segments, ("core", "penumbra", "lesion")):
            assert s.GetTerminology() == SEGMENTS[role][2]
            assert np.allclose(s.GetColor(), SEGMENTS[role][1])
        assert np.array_equal(lesion.segmentMask(seg, "core"), result.core)
        assert np.array_equal(lesion.segmentMask(seg, "penumbra"), result.penumbra)
        assert np.array_equal(lesion.segmentMask(seg, "lesion"), lesion_mask)
        assert lesion.getParameter("lesionModel") == "pseudodwi"
        assert "Lesion (model)" in lesion.volumesFromTable()
    finally:
        env.close()


def test_scene_option_errors_come_before_any_work(run, tmp_path, capsys):
    code, d, out, mrb = run
    ctp = d / "ctp.nii.gz"
    assert main(["run", str(ctp), "--out", str(tmp_path / "o1"), "--aif", "classic",
                 "--scene", str(tmp_path / "case.zip")]) == 2
    assert "--scene must name a Slicer scene bundle ending in .mrb" in capsys.readouterr().err
    assert main(["run", str(ctp), "--out", str(tmp_path / "o2"), "--aif", "classic", "--scene", str(mrb)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_bundle_opens_as_a_radiologist_expects(run):
    """The bundle, opened with slicer-core: the CTP at a brain window (W 80 / L 40), the maps in the colour
    tables the docs name, with their standard units, and the compare layout stored with each map in its
    view."""
    from AIFSelectorLib.mrml.display import COMPARE_LAYOUT_ID, COMPARE_VIEWS, MAP_COLORS, PVOL_COLORS
    mrb = run[3]
    with open_bundle(mrb) as env:
        scene = env.scene
        proxies = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                   for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
        by_name = {n.GetName(): n for n in proxies}
        ctp = next(n for n in proxies if n.GetName().startswith("CTP") and n.GetDisplayNode() is not None
                   and n.GetAttribute("AIFSelector.Map") is None and "Pvol" not in n.GetName())
        d = ctp.GetDisplayNode()
        assert (d.GetWindow(), d.GetLevel()) == (80.0, 40.0)
        for name, unit in (("CBF", "ml/100g/min"), ("CBV", "ml/100g"), ("Tmax", "s"), ("rCBF", "fraction of control")):
            node = by_name[name]
            assert node.GetDisplayNode().GetColorNodeID() == MAP_COLORS[0]
            assert node.GetVoxelValueUnits() is not None and node.GetVoxelValueUnits().GetCodeMeaning() == unit
            assert node.GetVoxelValueUnits().GetCodingSchemeDesignator() == "UCUM"
        assert by_name["AIF Pvol"].GetDisplayNode().GetColorNodeID() == PVOL_COLORS[0]
        layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        assert layout is not None and layout.GetViewArrangement() == COMPARE_LAYOUT_ID  # the AIFSelector
        # module registers this layout's description at startup (registerCompareLayout), so Slicer shows it
        shown = {}
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            c = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            if c.GetLayoutName() in COMPARE_VIEWS:
                shown[c.GetLayoutName()] = scene.GetNodeByID(c.GetBackgroundVolumeID()).GetName()
        assert shown == {v: v for v in COMPARE_VIEWS}
    source = (Path(__file__).resolve().parents[2] / "AIFSelector" / "AIFSelector.py").read_text(encoding="utf-8")
    assert 'slicer.app.connect("startupCompleted()", registerCompareLayout)' in source
