"""The Logic the AIFSelector and StrokeLesion Widgets call, on real MRML nodes from slicer-core (no Slicer
application): sequence <-> arrays with IJK-to-RAS geometry, curves in plot chart/series/table nodes, Pvol
and map volumes on the input's grid, manual correction from markups points, segments equal to the masks,
user edits surviving a re-run, and a saved and reloaded scene keeping curves, corrections and parameters.
"""
import sys
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import SimpleITK as sitk  # noqa: E402

from AIFSelectorLib.mrml import aif_selector_logic as aif_lib  # noqa: E402
from AIFSelectorLib.mrml import conversion as mc  # noqa: E402
from AIFSelectorLib.mrml.aif_selector_logic import AIFSelectorLogic, Cancelled  # noqa: E402
from AIFSelectorLib.io.ctp_io import load_ctp, write_series_seq_nrrd  # noqa: E402
from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry  # noqa: E402
from AIFSelectorLib.errors import InputError  # noqa: E402
from AIFSelectorLib.mrml.scene import StandaloneScene, open_bundle  # noqa: E402
from AIFSelectorLib.phantom.case import make_phantom  # noqa: E402
from AIFSelectorLib.thresholds.decision import lesion_volumes  # noqa: E402
from StrokeLesionLib.mrml.stroke_lesion_logic import SEGMENTS, StrokeLesionLogic, _oriented_image  # noqa: E402

C, S = np.cos(0.3), np.sin(0.3)
OBLIQUE = np.array([[C, -S, 0.0], [S, C, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1, 0, 0], [0, C, S], [0, -S, C]])
OBLIQUE_GEOMETRY = VolumeGeometry((0.5, 0.6, 2.5), (10.0, -20.0, 30.0), OBLIQUE)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=3, shape_zyx=(4, 64, 64), n_frames=30)


def new_case(phantom, select=True, maps=True):
    env = StandaloneScene()
    logic = AIFSelectorLogic(env.scene)
    sequence = logic.addSeries(phantom.series, "Phantom CTP")
    functions = logic.selectInputFunctions("classic") if select else None
    perfusion = logic.computeMaps() if maps else None
    return SimpleNamespace(env=env, scene=env.scene, logic=logic, sequence=sequence, functions=functions,
                           perfusion=perfusion, series=phantom.series)


@pytest.fixture(scope="module")
def case(phantom):
    """AIF selected (classic) and maps computed; tests that only read share it."""
    c = new_case(phantom)
    yield c
    c.env.close()


def _ijk_to_ras_from_sitk(geometry, shape_zyx, ijk):
    image = sitk.Image([int(s) for s in reversed(shape_zyx)], sitk.sitkUInt8)
    image.SetSpacing(geometry.spacing_mm)
    image.SetOrigin(geometry.origin_mm)
    image.SetDirection(geometry.direction)
    x, y, z = image.TransformIndexToPhysicalPoint([int(v) for v in ijk])
    return np.array([-x, -y, z])  # LPS -> RAS


def _random_series(geometry=OBLIQUE_GEOMETRY, n=12, shape=(3, 4, 5), dtype=np.int16, times=None):
    rng = np.random.default_rng(1)
    data = rng.integers(-50, 400, size=(n,) + shape).astype(dtype)
    return CTPSeries(data, np.arange(n) * 1.5 if times is None else times, geometry)


# ------------------------------------------------------------------------------------- sequences, geometry

def test_sequence_frames_carry_the_ijk_to_ras_of_the_lps_geometry():
    series = _random_series()
    with StandaloneScene() as env:
        logic = AIFSelectorLogic(env.scene)
        seq = logic.addSeries(series, "CTP")
        assert seq.GetNumberOfDataNodes() == series.n_frames
        assert seq.GetIndexUnit() == "s" and seq.GetIndexName() == "time"
        assert [float(seq.GetNthIndexValue(i)) for i in range(series.n_frames)] == list(series.times_s)
        for i in (0, series.n_frames - 1):
            node = seq.GetNthDataNode(i)
            m = mc.node_ijk_to_ras(node)
            for ijk in ((0, 0, 0), (4, 3, 2), (1, 2, 0)):
                expected = _ijk_to_ras_from_sitk(series.geometry, series.shape_zyx, ijk)
                assert np.allclose(m[:3, :3] @ ijk + m[:3, 3], expected, atol=1e-6)
            assert np.array_equal(mc.array_from_volume(node), series.data[i])
        back = mc.series_from_sequence(seq)
        assert back.data.dtype == series.data.dtype and np.array_equal(back.data, series.data)
        assert np.allclose(back.times_s, series.times_s)
        assert back.geometry.matches(series.geometry, tol=1e-6)
        # the browser's proxy volume (what the slice views show) is on the same grid
        proxy = logic.inputProxyVolume()
        assert proxy is not None and np.allclose(mc.node_ijk_to_ras(proxy), mc.ijk_to_ras(series.geometry))


def test_ras_points_map_to_the_voxels_sitk_places_there():
    shape = (3, 4, 5)
    for zyx in ((0, 0, 0), (2, 3, 4), (1, 2, 3)):
        ras = _ijk_to_ras_from_sitk(OBLIQUE_GEOMETRY, shape, zyx[::-1])
        assert mc.ras_to_zyx([ras], OBLIQUE_GEOMETRY, shape).tolist() == [list(zyx)]
        assert np.allclose(mc.zyx_to_ras([zyx], OBLIQUE_GEOMETRY)[0], ras)
    outside = _ijk_to_ras_from_sitk(OBLIQUE_GEOMETRY, shape, (9, 0, 0))
    assert len(mc.ras_to_zyx([outside], OBLIQUE_GEOMETRY, shape)) == 0


def test_sequence_index_in_ms_becomes_seconds_and_text_index_is_refused():
    series = _random_series()
    with StandaloneScene() as env:
        seq = mc.sequence_from_series(env.scene, series, "CTP")
        seq.SetIndexUnit("ms")
        old = [seq.GetNthIndexValue(i) for i in range(seq.GetNumberOfDataNodes())]
        for value in reversed(old):
            seq.UpdateIndexValue(value, mc.format_index(1000 * float(value)))
        back = mc.series_from_sequence(seq)
        assert np.allclose(back.times_s, series.times_s)
        seq.SetIndexType(seq.TextIndex)
        seq.SetIndexUnit("")
        seq.UpdateIndexValue(seq.GetNthIndexValue(0), "baseline")
        with pytest.raises(InputError, match="non-numeric"):
            mc.series_from_sequence(seq)


def test_seq_nrrd_files_agree_between_slicer_and_ctp_io(tmp_path):
    """A .seq.nrrd written by ctp_io opens in Slicer's sequence reader on the same RAS grid, and one
    Slicer writes reads back through load_ctp identically."""
    series = _random_series(dtype=np.float32)
    path = tmp_path / "ctp.seq.nrrd"
    write_series_seq_nrrd(path, series)
    with StandaloneScene() as env:
        seq = env.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "read")
        storage = slicer.vtkMRMLVolumeSequenceStorageNode()
        env.scene.AddNode(storage)
        storage.SetFileName(str(path))
        assert storage.ReadData(seq)
        back = mc.series_from_sequence(seq)
        assert np.allclose(back.data, series.data) and np.allclose(back.times_s, series.times_s)
        assert back.geometry.matches(series.geometry, tol=1e-5)

        written = mc.sequence_from_series(env.scene, series, "write")
        out = tmp_path / "slicer.seq.nrrd"
        storage2 = slicer.vtkMRMLVolumeSequenceStorageNode()
        env.scene.AddNode(storage2)
        storage2.SetFileName(str(out))
        assert storage2.WriteData(written)
    again = load_ctp(out)
    assert np.allclose(again.data, series.data) and np.allclose(again.times_s, series.times_s)
    assert again.geometry.matches(series.geometry, tol=1e-5)


def test_a_4d_multivolume_becomes_a_sequence_input():
    series = _random_series()
    with StandaloneScene() as env:
        node = env.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "4D")
        image = mc.image_data_from_array(np.zeros(series.shape_zyx, np.int16))
        from vtk.util import numpy_support
        stacked = np.ascontiguousarray(np.moveaxis(series.data, 0, -1)).reshape(-1, series.n_frames)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(stacked, deep=True))
        node.SetAndObserveImageData(image)
        node.SetIJKToRASMatrix(mc._vtk_matrix(mc.ijk_to_ras(series.geometry)))
        node.SetAttribute("MultiVolume.FrameLabels", ",".join(str(1000 * t) for t in series.times_s))
        logic = AIFSelectorLogic(env.scene)
        seq = logic.setInput(node)
        assert seq.IsA("vtkMRMLSequenceNode") and logic.getNode("inputSequence") is seq
        got = logic.inputSeries()
        assert np.array_equal(got.data, series.data) and np.allclose(got.times_s, series.times_s)
        assert got.geometry.matches(series.geometry, tol=1e-6)


# ------------------------------------------------------------------------------------ curves, chart, Pvol

def test_plot_chart_series_and_table_hold_the_curves(case):
    logic, f = case.logic, case.functions
    table = logic.getNode("curvesTable")
    assert table is not None and table.IsA("vtkMRMLTableNode")
    cols = mc.columns_from_table(table)
    assert np.allclose(cols["time_s"], case.series.times_s)
    assert np.allclose(cols["aif_hu"], f.aif_hu) and np.allclose(cols["aif_auto_hu"], f.aif_hu)
    assert np.allclose(cols["vof_hu"], f.vof_hu) and np.allclose(cols["vof_auto_hu"], f.vof_hu)
    chart = logic.getNode("curvesChart")
    series_nodes = {chart.GetNthPlotSeriesNode(i).GetName(): chart.GetNthPlotSeriesNode(i)
                    for i in range(chart.GetNumberOfPlotSeriesNodes())}
    assert {"AIF", "VOF", "Tissue (cursor)"} <= set(series_nodes)
    for name, column in (("AIF", "aif_hu"), ("VOF", "vof_hu"), ("Tissue (cursor)", "tissue_hu")):
        s = series_nodes[name]
        assert s.GetTableNodeID() == table.GetID()
        assert s.GetXColumnName() == "time_s" and s.GetYColumnName() == column
    assert chart.GetXAxisTitle() == "Time (s)"
    assert logic.getParameter("selectorUsed") == "classic" and logic.getParameter("aifSource") == "automatic"


def test_tissue_curve_under_the_crosshair(case):
    logic, series = case.logic, case.series
    crosshair = case.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    logic.observeCrosshair(crosshair)
    try:
        voxel = (2, 30, 25)
        crosshair.SetCursorPositionRAS(mc.zyx_to_ras([voxel], series.geometry)[0])
        assert np.allclose(logic.curves()["tissue_hu"], series.data[:, voxel[0], voxel[1], voxel[2]])
        crosshair.SetCursorPositionRAS([1e4, 1e4, 1e4])
        assert np.all(np.isnan(logic.curves()["tissue_hu"]))
    finally:
        logic.stopObservingCrosshair()


def _same_grid(node, series):
    return (np.allclose(mc.node_ijk_to_ras(node), mc.ijk_to_ras(series.geometry), atol=1e-6)
            and node.GetImageData().GetDimensions() == tuple(reversed(series.shape_zyx)))


def test_pvol_volumes_have_the_input_geometry_and_show_as_foreground(case):
    logic, f = case.logic, case.functions
    for kind, pvol in (("aif", f.aif_pvol), ("vof", f.vof_pvol)):
        node = logic.getNode(f"{kind}PvolVolume")
        assert _same_grid(node, case.series)
        assert np.allclose(mc.array_from_volume(node), pvol)
        assert abs(mc.array_from_volume(node).sum() - 1.0) < 1e-4
        display = node.GetDisplayNode()
        assert display.GetColorNodeID() in aif_lib.PVOL_COLORS and not display.GetAutoWindowLevel()
        assert display.GetApplyThreshold()
    proxy = logic.inputProxyVolume()
    composites = [case.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                  for i in range(case.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    assert composites
    logic.showPvol("VOF", 0.3)
    for c in composites:
        assert c.GetForegroundVolumeID() == logic.getNode("vofPvolVolume").GetID()
        assert c.GetBackgroundVolumeID() == proxy.GetID()
        assert abs(c.GetForegroundOpacity() - 0.3) < 1e-9
    assert logic.getParameter("pvolOverlay") == "VOF" and logic.getParameter("pvolOpacity") == 0.3
    logic.showPvol("None")
    assert all(c.GetForegroundVolumeID() is None for c in composites)
    logic.showPvol("AIF", 0.5)


def test_map_volumes_have_the_input_geometry_window_level_and_colours(case):
    logic, perfusion = case.logic, case.perfusion
    for key in aif_lib.MAP_NAMES:
        node = logic.mapVolume(key)
        assert node is not None and node.GetName() == aif_lib.MAP_DISPLAY[key][0]
        assert _same_grid(node, case.series)
        assert np.allclose(mc.array_from_volume(node), perfusion.maps[key])
        display = node.GetDisplayNode()
        assert display.GetColorNodeID() in aif_lib.MAP_COLORS
        assert not display.GetAutoWindowLevel()
        wl = aif_lib.MAP_DISPLAY[key][2]
        if wl is not None:
            assert np.allclose((display.GetWindowLevelMin(), display.GetWindowLevelMax()), wl)
    assert logic.mapVolume("cbf").GetAttribute("AIFSelector.Unit") == "ml/100g/min"
    mask = logic.getNode("tissueMask")
    assert mask.IsA("vtkMRMLLabelMapVolumeNode") and _same_grid(mask, case.series)
    assert np.array_equal(mc.array_from_volume(mask) > 0, perfusion.tissue)


def test_bayes_maps_add_sd_volumes_that_another_method_removes(phantom):
    c = new_case(phantom, maps=False)
    try:
        c.logic.setParameter("method", "bayes")
        perfusion = c.logic.computeMaps()
        for key in aif_lib.SD_NAMES:
            node = c.logic.mapVolume(key)
            assert node is not None and node.GetName() == aif_lib.MAP_DISPLAY[key][0]
            assert _same_grid(node, c.series) and np.allclose(mc.array_from_volume(node), perfusion.maps[key])
        ids = [c.logic.mapVolume(k).GetID() for k in aif_lib.SD_NAMES]
        c.logic.setParameter("method", "osvd")
        c.logic.computeMaps()
        assert all(c.logic.mapVolume(k) is None for k in aif_lib.SD_NAMES)
        assert all(c.scene.GetNodeByID(i) is None for i in ids)  # no stale uncertainty beside oSVD's maps
    finally:
        c.env.close()


def test_compare_layout_puts_each_map_in_its_view(case):
    scene, logic = case.scene, case.logic
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    composites = {}
    for view in aif_lib.COMPARE_VIEWS:
        c = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        c.SetLayoutName(view)
        composites[view] = c
    try:
        assert logic.showMapsInCompareLayout()
        assert layout.GetViewArrangement() == aif_lib.COMPARE_LAYOUT_ID
        description = layout.GetLayoutDescription(aif_lib.COMPARE_LAYOUT_ID)
        assert all(f'singletontag="{v}"' in description for v in aif_lib.COMPARE_VIEWS)
        names = {aif_lib.MAP_DISPLAY[k][0]: k for k in aif_lib.MAP_NAMES}
        for view, c in composites.items():
            assert c.GetBackgroundVolumeID() == logic.mapVolume(names[view]).GetID()
        # the Pvol overlay leaves the compare views alone
        logic.showPvol("AIF")
        assert all(c.GetForegroundVolumeID() is None for c in composites.values())
    finally:
        for c in composites.values():
            scene.RemoveNode(c)
        scene.RemoveNode(layout)


def test_parameters_are_stored_as_parameter_node_wrapper_writes_them(case):
    logic = case.logic
    node = logic.parameterNode()
    assert node.IsA("vtkMRMLScriptedModuleNode") and node.GetModuleName() == "AIFSelector"
    assert node.GetSingletonTag() == "AIFSelector"
    assert node.GetParameter("autoUpdateCorrection") in ("True", "False")
    assert float(node.GetParameter("pvolOpacity")) == logic.getParameter("pvolOpacity")
    assert int(node.GetParameter("neighbourhoodRadius")) == logic.getParameter("neighbourhoodRadius")
    for name in ("inputSequence", "curvesTable", "curvesChart", "cbfVolume"):
        assert node.HasParameter(name) and node.GetParameter(name) == ""  # NodeSerializer's marker
        assert node.GetNodeReference(name) is not None
    assert AIFSelectorLogic(case.scene).parameterNode() is node  # one per scene
    assert set(aif_lib.PARAMETERS).isdisjoint(aif_lib.NODE_PARAMETERS)


# --------------------------------------------------------------------------------------- selector, cancel

def test_aifnet_falls_back_to_classic_without_torch(case, monkeypatch):
    """The one policy: without torch (its import fails) 'aifnet' gives the classic curves with a warning;
    'auto', the name old scenes hold, is read as 'aifnet'."""
    monkeypatch.setitem(sys.modules, "AIFSelectorLib.input_functions.aifnet.inference", None)
    prepared = case.logic.prepared()
    for selector in ("aifnet", "auto"):
        f = case.logic.computeInputFunctions(prepared, selector)
        assert f.method == "classic" and "classic AIF selector was used instead" in f.warnings[0]
    with pytest.raises(InputError, match="unknown AIF selector"):
        case.logic.computeInputFunctions(prepared, "magic")


@pytest.mark.parametrize("selector", ["aifnet", "classic"])
def test_command_line_and_slicer_logic_give_the_same_aif(case, selector):
    """The command line's path (run_case -> policy) and the Slicer Logic's give one AIF and VOF."""
    from StrokeLesionLib.case.pipeline import RunOptions, run_case
    series = case.logic.inputSeries()
    cli = run_case(series, RunOptions(aif=selector, device="cpu")).functions
    slicer_side = case.logic.computeInputFunctions(case.logic.prepared(series), selector)
    assert cli.method == slicer_side.method and cli.warnings == slicer_side.warnings
    np.testing.assert_array_equal(cli.aif_hu, slicer_side.aif_hu)
    np.testing.assert_array_equal(cli.vof_hu, slicer_side.vof_hu)


def test_cancel_stops_the_maps(case):
    calls = []

    def progress(fraction, message=""):
        calls.append(fraction)
        if fraction > 0:
            raise Cancelled()

    with pytest.raises(Cancelled):
        case.logic.computeMapArrays(case.logic.prepared(), case.logic.inputFunctions(), progress=progress)
    assert calls[0] == 0.0


# ---------------------------------------------------------------------------------------- manual correction

def test_moving_a_markup_point_changes_the_aif_and_the_recomputed_cbf(phantom):
    c = new_case(phantom)
    try:
        logic, series = c.logic, c.series
        arteries = np.argwhere(phantom.truth["artery_mask"])
        peak = series.data[:, arteries[:, 0], arteries[:, 1], arteries[:, 2]].max(axis=0)
        strong, weak = arteries[int(np.argmax(peak))], arteries[int(np.argmin(peak))]
        logic.setParameter("neighbourhoodRadius", 0)
        cbf_auto = mc.array_from_volume(logic.mapVolume("cbf"))

        markups = logic.getOrCreateMarkups("artery")
        assert logic.getNode("arteryMarkups") is markups and logic.autoUpdating
        markups.AddControlPoint(*mc.zyx_to_ras([strong], series.geometry)[0])  # the chart follows at once
        assert logic.getParameter("aifSource") == "corrected"
        curves = logic.curves()
        assert np.allclose(curves["aif_hu"], series.data[:, strong[0], strong[1], strong[2]])
        assert np.allclose(curves["aif_auto_hu"], c.functions.aif_hu)  # the automatic curve is kept
        chart = logic.getNode("curvesChart")
        names = {chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())}
        assert "AIF (automatic)" in names
        logic.computeMaps()
        cbf_strong = mc.array_from_volume(logic.mapVolume("cbf"))

        markups.SetNthControlPointPositionWorld(0, *mc.zyx_to_ras([weak], series.geometry)[0])  # drag
        assert np.allclose(logic.curves()["aif_hu"], series.data[:, weak[0], weak[1], weak[2]])
        logic.computeMaps()
        cbf_weak = mc.array_from_volume(logic.mapVolume("cbf"))
        tissue = mc.array_from_volume(logic.getNode("tissueMask")) > 0
        # a weaker (partial-volume) arterial curve gives higher flow, unless the VOF rescales it back
        assert not np.allclose(cbf_weak[tissue], cbf_strong[tissue], rtol=1e-3)
        assert logic.mapVolume("cbf").GetAttribute("AIFSelector.AIFSource") == "corrected"

        vein = np.argwhere(phantom.truth["vein_mask"])[0]
        veins = logic.getOrCreateMarkups("vein")
        veins.AddControlPoint(*mc.zyx_to_ras([vein], series.geometry)[0])
        assert np.allclose(logic.curves()["vof_hu"], series.data[:, vein[0], vein[1], vein[2]])

        logic.useAutomatic()
        curves = logic.curves()
        assert logic.getParameter("aifSource") == "automatic"
        assert np.allclose(curves["aif_hu"], c.functions.aif_hu) and np.allclose(curves["vof_hu"], c.functions.vof_hu)
        logic.computeMaps()
        assert np.allclose(mc.array_from_volume(logic.mapVolume("cbf")), cbf_auto)

        markups.RemoveAllControlPoints()
        veins.RemoveAllControlPoints()
        assert logic.correctFromMarkups() is None and logic.getParameter("aifSource") == "automatic"
    finally:
        c.env.close()


def test_neighbourhood_radius_averages_the_picked_voxels(case):
    logic, series = case.logic, case.series
    env_markups = logic.getOrCreateMarkups("artery")
    logic.setAutoUpdate(False)
    try:
        centre = (1, 30, 30)
        env_markups.AddControlPoint(*mc.zyx_to_ras([centre], series.geometry)[0])
        f = logic.correctFromMarkups(radius_vox=1)
        block = series.data[:, 1, 29:32, 29:32].reshape(series.n_frames, -1).mean(axis=1)
        assert np.allclose(f.aif_hu, block)
    finally:
        env_markups.RemoveAllControlPoints()
        logic.useAutomatic()
        logic.setParameter("neighbourhoodRadius", 1)


# ------------------------------------------------------------------------------------------ StrokeLesion

def _segment_names(seg):
    s = seg.GetSegmentation()
    return [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())]


def test_segments_equal_the_masks_with_terminology_and_a_volumes_table(case, phantom):
    lesion_logic = StrokeLesionLogic(case.scene)
    assert lesion_logic.setInputsFromAIFSelector()
    assert lesion_logic.getNode("rcbfVolume") is case.logic.mapVolume("rcbf")
    core, penumbra = lesion_logic.computeMasks()
    seg = lesion_logic.run()
    assert _segment_names(seg) == ["Core", "Penumbra"]
    assert np.array_equal(lesion_logic.segmentMask(seg, "core"), core)
    assert np.array_equal(lesion_logic.segmentMask(seg, "penumbra"), penumbra)

    # given masks (the phantom truth, with the deep model's lesion): segments equal them voxel for voxel
    truth = phantom.truth
    seg = lesion_logic.segment(truth["core"], truth["penumbra"], truth["lesion"])
    assert _segment_names(seg) == ["Core", "Penumbra", "Lesion (model)"]
    for role, mask in (("core", truth["core"]), ("penumbra", truth["penumbra"]), ("lesion", truth["lesion"])):
        assert np.array_equal(lesion_logic.segmentMask(seg, role), mask)
    segmentation = seg.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        role = [r for r, v in SEGMENTS.items() if v[0] == segment.GetName()][0]
        assert np.allclose(segment.GetColor(), SEGMENTS[role][1])
        assert segment.GetTerminology() == SEGMENTS[role][2]
        assert "SCT^" in segment.GetTerminology()
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is case.logic.mapVolume("rcbf")

    voxel_ml = case.series.geometry.voxel_volume_ml
    expected = lesion_volumes(truth["core"], truth["penumbra"], voxel_ml)
    table = lesion_logic.volumesFromTable()
    assert table["Core"] == pytest.approx(expected["core_ml"])
    assert table["Penumbra"] == pytest.approx(expected["penumbra_ml"])
    assert table["Mismatch ratio"] == pytest.approx(expected["mismatch_ratio"])
    assert table["Lesion (model)"] == pytest.approx(round(truth["lesion"].sum() * voxel_ml, 2))


def test_live_preview_follows_the_thresholds(case):
    lesion_logic = StrokeLesionLogic(case.scene)
    lesion_logic.setInputsFromAIFSelector()
    lesion_logic.setThresholds(core_rcbf=0.38, tmax_s=6.0)
    v1 = lesion_logic.updatePreview()
    preview = lesion_logic.getNode("previewVolume")
    labels = mc.array_from_volume(preview)
    core, penumbra = lesion_logic.computeMasks()
    assert np.array_equal(labels == 1, core) and np.array_equal(labels == 2, penumbra)
    assert preview.GetDisplayNode().GetColorNodeID() == lesion_logic.colorTable().GetID()
    c = case.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert c.GetLabelVolumeID() == preview.GetID()
    lesion_logic.setThresholds(core_rcbf=0.6, tmax_s=4.0)
    v2 = lesion_logic.updatePreview()
    assert v2["hypoperfused_ml"] >= v1["hypoperfused_ml"] and v2["core_ml"] >= v1["core_ml"]
    assert (v2["hypoperfused_ml"], v2["core_ml"]) != (v1["hypoperfused_ml"], v1["core_ml"])
    lesion_logic.setThresholds(core_rcbf=0.38, tmax_s=6.0)
    lesion_logic.showPreview(False)
    assert c.GetLabelVolumeID() is None


def test_user_edited_segments_survive_a_re_run(phantom):
    c = new_case(phantom)
    try:
        lesion_logic = StrokeLesionLogic(c.scene)
        lesion_logic.setInputsFromAIFSelector()
        lesion_logic.setThresholds(core_rcbf=0.6)  # a non-empty core on this small phantom
        seg = lesion_logic.run()
        assert lesion_logic.editedSegments(seg) == []
        assert lesion_logic.run() is seg  # nothing edited: updated in place

        # the user paints into Core (as the Segment Editor does, by replacing the segment's labelmap)
        painted = lesion_logic.segmentMask(seg, "core").copy()
        painted[0, :4, :4] = True
        geometry = mc.node_geometry(lesion_logic.getNode("rcbfVolume"))
        segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Core")
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            _oriented_image(painted, geometry), seg, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        assert lesion_logic.editedSegments(seg) == ["Core"]

        lesion_logic.setThresholds(core_rcbf=0.5)
        seg2 = lesion_logic.run()
        assert seg2 is not seg and lesion_logic.getNode("segmentation") is seg2
        assert np.array_equal(lesion_logic.segmentMask(seg, "core"), painted)  # the edit is intact
        assert np.array_equal(lesion_logic.segmentMask(seg2, "core"), lesion_logic.computeMasks()[0])
        assert c.scene.GetNodeByID(seg.GetID()) is seg

        # deleting a segment or adding one's own also counts as an edit
        seg2.GetSegmentation().RemoveSegment(seg2.GetSegmentation().GetSegmentIdBySegmentName("Penumbra"))
        assert "Penumbra (deleted)" in lesion_logic.editedSegments(seg2)
        seg3 = lesion_logic.run()
        assert seg3 is not seg2 and _segment_names(seg2) == ["Core"]

        # overwriting an edited segmentation only happens when asked for explicitly
        seg3.GetSegmentation().AddEmptySegment("", "Haemorrhage")
        assert lesion_logic.editedSegments(seg3) == ["Haemorrhage"]
        seg4 = lesion_logic.run(overwrite_edited=True)
        assert seg4 is seg3 and "Haemorrhage" in _segment_names(seg3)
    finally:
        c.env.close()


# ------------------------------------------------------------------------------------------- save, reload

def test_saved_and_reloaded_scene_keeps_curves_corrections_and_parameters(phantom, tmp_path):
    c = new_case(phantom)
    logic, series = c.logic, c.series
    artery = np.argwhere(phantom.truth["artery_mask"])[3]
    logic.setParameter("neighbourhoodRadius", 0)
    markups = logic.getOrCreateMarkups("artery")
    markups.AddControlPoint(*mc.zyx_to_ras([artery], series.geometry)[0])
    logic.setParameter("method", "tikhonov")
    logic.setParameter("smoothMM", 1.5)
    logic.setParameter("pvolOverlay", "VOF")
    logic.computeMaps()
    curves = logic.curves()
    maps = {k: mc.array_from_volume(logic.mapVolume(k)) for k in aif_lib.MAP_NAMES}
    lesion_logic = StrokeLesionLogic(c.scene)
    lesion_logic.setInputsFromAIFSelector()
    lesion_logic.setThresholds(core_rcbf=0.3, tmax_s=5.5)
    lesion_logic.setParameter("lesionModel", "pseudodwi")
    seg = lesion_logic.segment(phantom.truth["core"], phantom.truth["penumbra"], phantom.truth["lesion"])
    masks = {r: lesion_logic.segmentMask(seg, r) for r in SEGMENTS}
    path = c.env.save_bundle(tmp_path / "case.mrb")
    c.env.close()
    assert path.is_file() and not [p for p in tmp_path.iterdir() if p.name != "case.mrb"]

    env = open_bundle(path)
    try:
        logic2 = AIFSelectorLogic(env.scene)
        curves2 = logic2.curves()
        for k, v in curves.items():
            assert np.allclose(curves2[k], v, equal_nan=True), k
        assert logic2.getParameter("aifSource") == "corrected"
        assert logic2.getParameter("method") == "tikhonov" and logic2.getParameter("smoothMM") == 1.5
        assert logic2.getParameter("pvolOverlay") == "VOF" and logic2.getParameter("neighbourhoodRadius") == 0
        assert logic2.getParameter("selectorUsed") == "classic"
        markups2 = logic2.getNode("arteryMarkups")
        assert markups2.GetNumberOfControlPoints() == 1
        assert logic2.pickedVoxels("artery").tolist() == [artery.tolist()]
        series2 = logic2.inputSeries()
        assert np.allclose(series2.data, series.data) and np.allclose(series2.times_s, series.times_s)
        for k, v in maps.items():
            assert np.allclose(mc.array_from_volume(logic2.mapVolume(k)), v), k
        # recomputing on the reloaded scene gives the same maps (curves, series and settings all came back)
        logic2.computeMaps()
        assert np.allclose(mc.array_from_volume(logic2.mapVolume("cbf")), maps["cbf"], rtol=1e-4, atol=1e-3)
        # the correction still responds to the points
        logic2.setAutoUpdate(True)
        markups2.SetNthControlPointPositionWorld(0, *mc.zyx_to_ras([artery + [0, 0, 1]], series.geometry)[0])
        z, y, x = artery + [0, 0, 1]
        assert np.allclose(logic2.curves()["aif_hu"], series.data[:, z, y, x])

        lesion2 = StrokeLesionLogic(env.scene)
        assert lesion2.getParameter("coreRCBF") == 0.3 and lesion2.getParameter("tmaxThreshold") == 5.5
        assert lesion2.getParameter("lesionModel") == "pseudodwi"
        seg2 = lesion2.getNode("segmentation")
        assert _segment_names(seg2) == ["Core", "Penumbra", "Lesion (model)"]
        for r, m in masks.items():
            assert np.array_equal(lesion2.segmentMask(seg2, r), m), r
        assert lesion2.editedSegments(seg2) == []  # the creation hashes survive the round trip
        assert lesion2.volumesFromTable()["Core"] == pytest.approx(
            round(phantom.truth["core"].sum() * series.geometry.voxel_volume_ml, 2))
    finally:
        env.close()


def test_shipped_pseudo_dwi_model_becomes_the_lesion_segment(phantom):
    """StrokeLesion with the lesion model 'pseudodwi': the shipped network runs on the scene's CTP sequence
    and maps, and its mask (on the maps' grid) becomes the 'Lesion (model)' segment."""
    pytest.importorskip("torch")
    c = new_case(phantom)
    try:
        lesion_logic = StrokeLesionLogic(c.scene)
        assert lesion_logic.setInputsFromAIFSelector()
        series, maps = lesion_logic.lesionModelInputs()
        assert {"cbf", "cbv", "mtt", "tmax"} <= set(maps)  # AIFSelector's maps, not recomputed
        lesion_logic.setParameter("lesionModel", "pseudodwi")
        lesion = lesion_logic.runLesionModel(device="cpu")
        assert lesion.shape == maps["rcbf"].shape and lesion.dtype == bool
        seg = lesion_logic.run(device="cpu")
        assert _segment_names(seg) == ["Core", "Penumbra", "Lesion (model)"]
        assert np.array_equal(lesion_logic.segmentMask(seg, "lesion"), lesion)
        assert not (lesion & ~maps["tissue"] & (maps["cbf"] <= 0)).any()  # nothing outside the maps' brain
    finally:
        c.env.close()
