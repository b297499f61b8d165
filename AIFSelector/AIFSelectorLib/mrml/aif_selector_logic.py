"""The AIFSelector module's Logic on MRML nodes, without GUI: what the Widget calls and what the Slicer
Python console scripts.

A CTP volume sequence -> automatic AIF/VOF (the one selection policy) -> curves in a table, a plot chart
and Pvol volumes -> correction from markups points on arteries and veins -> perfusion maps as volumes.

Every user choice and every result node is referenced from the module's parameter node (a
vtkMRMLScriptedModuleNode, module name ``AIFSelector``), so a saved scene reopens with the same curves,
corrections and settings. Parameter names and their serialisation are those of Slicer's
``parameterNodeWrapper`` (numbers as ``str(value)``, booleans ``True``/``False``, nodes as references),
so the Widget binds its ``.ui`` to the same node.

Heavy work is split into pure functions that may run in a worker thread (:meth:`computeInputFunctions`,
:meth:`computeMapArrays`; they only read numpy arrays) and MRML updates that must run on the main thread
(:meth:`setInputFunctions`, :meth:`setMaps`). :meth:`selectInputFunctions` and :meth:`computeMaps` do
both, for scripts. Long loops call ``progress(fraction, message)``; raising :class:`Cancelled` from it
stops the work.

GUI-free: imports ``slicer`` (vtkMRML classes) only, never Qt, ``slicer.app`` or ScriptedLoadableModule.
"""
import logging
from typing import Callable, Dict, Optional

import numpy as np

from AIFSelectorLib.mrml import conversion as mc
from AIFSelectorLib.constants import DENOISE_SIGMA_MM, TMAX_THRESHOLD_S
from AIFSelectorLib.ctp_series import CTPSeries
from AIFSelectorLib.deconvolution import MAP_METHODS as METHODS, UNCERTAINTY_NAMES
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.input_functions.functions import InputFunctions, manual_input_functions
from AIFSelectorLib.input_functions.policy import SELECTORS, canonical_selector, select_input_functions
from AIFSelectorLib.models.device import cuda_if_present
from AIFSelectorLib.mrml.display import (COMPARE_LAYOUT_ID, COMPARE_LAYOUT_XML, COMPARE_VIEWS, CTP_WINDOW_HU,
                                         MAP_COLORS, MAP_DISPLAY, MAP_QUANTITIES, MAP_UNITS_UCUM, MARKUPS,
                                         PVOL_COLORS, SERIES_STYLE, store_compare_views)
from AIFSelectorLib.mrml.scene import ParameterNodeLogic

MODULE_NAME = "AIFSelector"

SOURCES = ("automatic", "corrected")
OVERLAYS = ("AIF", "VOF", "None")

PARAMETERS = {
    # name: default (its type is the parameter's type)
    "selector": "aifnet",
    "selectorUsed": "",
    "aifSource": "automatic",
    "neighbourhoodRadius": 1,
    "autoUpdateCorrection": True,
    "pvolOverlay": "AIF",
    "pvolOpacity": 0.5,
    "method": "osvd",
    "smoothMM": DENOISE_SIGMA_MM,
    "tmaxThreshold": TMAX_THRESHOLD_S,
    "frameInterval": 0.0,
    "useCPU": False,
    "statusMessage": "",
}
"""Scalar parameters and their defaults. frameInterval 0 means: frame times from the sequence."""

MAP_NAMES = ("cbf", "cbv", "mtt", "tmax", "ttp", "rcbf", "rcbv")
SD_NAMES = {k: k[:-len("_sd")] + "SD" for k in UNCERTAINTY_NAMES}
"""The Bayesian method's posterior SD maps and their parameter stems (cbf_sd: cbfSDVolume)."""
MAP_PARAMETERS = {**{k: f"{k}Volume" for k in MAP_NAMES}, **{k: f"{v}Volume" for k, v in SD_NAMES.items()}}
NODE_PARAMETERS = ("inputSequence", "curvesTable", "curvesChart", "aifPvolVolume", "vofPvolVolume",
                   "arteryMarkups", "veinMarkups", "tissueMask") + tuple(MAP_PARAMETERS.values())

class Cancelled(Exception):
    """Raised by a progress callback to stop long work (the Cancel button)."""


def _noop_progress(fraction: float, message: str = "") -> None:
    return None


class AIFSelectorLogic(ParameterNodeLogic):
    """AIFSelector on a scene (default ``slicer.mrmlScene``). See the module doc and docs/slicer.md."""

    moduleName = MODULE_NAME

    parameters = PARAMETERS

    def __init__(self, scene=None):
        super().__init__(scene)
        self._series_cache = None       # (key, CTPSeries)
        self._prepared_cache = None     # (key, PreparedSeries)
        self._observations = []         # (node, tag)
        self._crosshair_observation = None
        self._last_automatic: Optional[InputFunctions] = None

    # ------------------------------------------------------------------------------------------- input

    def loadCTP(self, path, dt_s: Optional[float] = None, name: Optional[str] = None):
        """Reads a CTP series (4D NIfTI, .seq.nrrd, DICOM folder, ISLES 2018 case) into a new volume sequence
        with a browser, selects it as input and returns the sequence node."""
        from pathlib import Path
        from AIFSelectorLib.io.ctp_io import load_ctp
        series = load_ctp(path, dt_s=dt_s)
        if name is None:
            name = Path(str(path)).name.split(".")[0] or "CTP"
        return self.addSeries(series, name)

    def addSeries(self, series: CTPSeries, name: str = "CTP"):
        """A new volume sequence (+ browser and proxy volume) holding ``series``; becomes the input."""
        seq = mc.sequence_from_series(self.scene, series, name)
        browser = mc.browser_for_sequence(self.scene, seq)
        proxy = browser.GetProxyNode(seq)
        if proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode"):
            mc.set_volume_display(proxy, "vtkMRMLColorTableNodeGrey", CTP_WINDOW_HU)
        self.setInput(seq)
        self._series_cache = (self._series_key(seq), series)
        return seq

    def setInput(self, node):
        """Selects the input: a volume sequence, a sequence browser, or a 4D (multi-component) volume,
        which is converted to a sequence. Returns the sequence node."""
        if node is not None and node.IsA("vtkMRMLSequenceBrowserNode"):
            node = node.GetMasterSequenceNode()
        if node is not None and not node.IsA("vtkMRMLSequenceNode"):
            dt = self.getParameter("frameInterval") or None
            return self.addSeries(mc.series_from_multivolume(node, dt), node.GetName())
        self.setNode("inputSequence", node)
        if node is not None:
            mc.browser_for_sequence(self.scene, node)
        return node

    def inputBrowser(self):
        seq = self.getNode("inputSequence")
        return None if seq is None else mc.browser_for_sequence(self.scene, seq)

    def inputProxyVolume(self):
        """The proxy volume (current frame) of the input's browser: what the slice views show."""
        seq = self.getNode("inputSequence")
        browser = self.inputBrowser()
        return None if browser is None else browser.GetProxyNode(seq)

    def _series_key(self, seq):
        return (seq.GetID(), seq.GetMTime(), self.getParameter("frameInterval"))

    def inputSeries(self) -> CTPSeries:
        """The input as a uniformly sampled CTPSeries (irregular frame times are resampled; the result
        is cached until the sequence or the frame interval changes). Main thread (reads MRML)."""
        seq = self.getNode("inputSequence")
        if seq is None:
            raise InputError("no input: select a CTP volume sequence (or load a CTP file)")
        key = self._series_key(seq)
        if self._series_cache is not None and self._series_cache[0] == key:
            return self._series_cache[1]
        dt = self.getParameter("frameInterval") or None
        series = mc.series_from_node(seq, dt)
        if not series.is_uniform:
            from AIFSelectorLib.io.time_grid import resample_uniform
            series = resample_uniform(series)
            logging.info("AIFSelector: irregular frame times resampled to a uniform %.3g s grid", series.dt_s)
        self._series_cache = (key, series)
        return series

    def prepared(self, series: Optional[CTPSeries] = None):
        """Bolus, baseline and masks of the input (cached). Pure once ``series`` is given."""
        from AIFSelectorLib.prepare.prepared import prepare
        series = series if series is not None else self.inputSeries()
        if self._prepared_cache is not None and self._prepared_cache[0] is series:
            return self._prepared_cache[1]
        prepared = prepare(series)
        self._prepared_cache = (series, prepared)
        return prepared

    # --------------------------------------------------------------------------------- device, selector

    def device(self) -> Optional[str]:
        """Torch device for deconvolution and AIFNet: 'cuda' when a CUDA GPU and torch are present, unless
        useCPU; else None (numpy for deconvolution, CPU for AIFNet). torch is imported only when an NVIDIA
        driver is installed."""
        return None if self.getParameter("useCPU") else cuda_if_present()

    def computeInputFunctions(self, prepared, selector: str = "aifnet", device: Optional[str] = None,
                              progress: Callable = _noop_progress) -> InputFunctions:
        """Pure (worker-thread safe): AIF/VOF of a prepared series by the one selection policy
        (input_functions.policy: 'aifnet' falls back to 'classic' with a warning, 'classic'); ``device``
        None runs AIFNet on the CPU (the useCPU parameter)."""
        selector = canonical_selector(selector)
        if selector not in SELECTORS:
            raise InputError(f"unknown AIF selector {selector!r}: use one of {', '.join(SELECTORS)}")
        return select_input_functions(prepared, selector, device or "cpu", progress)

    def selectInputFunctions(self, selector: Optional[str] = None,
                             progress: Callable = _noop_progress) -> InputFunctions:
        """Automatic AIF/VOF of the input (main thread): computes, then shows curves, chart and Pvol."""
        series = self.inputSeries()
        selector = selector or self.getParameter("selector")
        functions = self.computeInputFunctions(self.prepared(series), selector, self.device(), progress)
        self.setInputFunctions(functions)
        return functions

    # ------------------------------------------------------------------------------- curves and plots

    def setInputFunctions(self, functions: InputFunctions, automatic: bool = True) -> None:
        """Shows input functions: the curves table (automatic and active columns), the plot chart and, for
        an automatic selection, the Pvol volumes. A corrected (manual) set only replaces the active curves."""
        n = len(functions.times_s)
        nan = np.full(n, np.nan)
        vof = functions.vof_hu if functions.vof_hu is not None else nan
        table = self.getNode("curvesTable")
        if automatic or table is None:
            columns = {"time_s": functions.times_s, "aif_hu": functions.aif_hu, "vof_hu": vof,
                       "aif_auto_hu": functions.aif_hu, "vof_auto_hu": vof, "tissue_hu": nan}
            table = mc.table_from_columns(self.scene, columns, "AIFSelector curves", table)
            self.setNode("curvesTable", table)
        else:
            mc.set_table_column(table, "aif_hu", functions.aif_hu)
            mc.set_table_column(table, "vof_hu", vof)
        if automatic:
            self._last_automatic = functions
            self._setPvolVolumes(functions)
            p = self.parameterNode()
            was = p.StartModify()
            self.setParameter("selectorUsed", functions.method)
            self.setParameter("aifSource", "automatic")
            self.setParameter("statusMessage", "; ".join(functions.warnings))
            p.EndModify(was)
        self._updateChart()

    def curves(self) -> Dict[str, np.ndarray]:
        """The curves table as arrays: time_s, aif_hu, vof_hu (active), aif_auto_hu, vof_auto_hu, tissue_hu."""
        table = self.getNode("curvesTable")
        if table is None:
            raise InputError("no input functions yet: select the AIF first")
        return mc.columns_from_table(table)

    def inputFunctions(self) -> InputFunctions:
        """The active input functions (automatic or corrected), from the curves table."""
        c = self.curves()
        vof = c.get("vof_hu")
        if vof is not None and not np.all(np.isfinite(vof)):
            vof = None
        source = self.getParameter("aifSource")
        method = "manual" if source == "corrected" else (self.getParameter("selectorUsed") or "classic")
        return InputFunctions(times_s=c["time_s"], aif_hu=c["aif_hu"], vof_hu=vof, method=method)

    def _updateChart(self) -> None:
        scene = self.scene
        table = self.getNode("curvesTable")
        chart = self.getNode("curvesChart")
        if chart is None:
            chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "AIFSelector chart")
            chart.SetTitle("Arterial and venous input functions")
            chart.SetXAxisTitle("Time (s)")
            chart.SetYAxisTitle("HU")
            chart.SetLegendVisibility(True)
            self.setNode("curvesChart", chart)
        corrected = self.getParameter("aifSource") == "corrected"
        wanted = [name for name in SERIES_STYLE if corrected or "(automatic)" not in name]
        existing = {}
        for i in range(chart.GetNumberOfPlotSeriesNodes()):
            s = chart.GetNthPlotSeriesNode(i)
            if s is not None:
                existing[s.GetName()] = s
        was = chart.StartModify()
        for name, s in existing.items():
            if name not in wanted:
                chart.RemovePlotSeriesNodeID(s.GetID())
        for name in wanted:
            column, color, style = SERIES_STYLE[name]
            s = existing.get(name) or self._findSeries(name)
            if s is None:
                s = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
            s.SetAndObserveTableNodeID(table.GetID())
            s.SetXColumnName("time_s")
            s.SetYColumnName(column)
            s.SetPlotType(s.PlotTypeScatter)
            s.SetMarkerStyle(s.MarkerStyleNone if "cursor" in name or "automatic" in name else s.MarkerStyleCircle)
            s.SetLineStyle(s.LineStyleDash if style == "dash" else s.LineStyleSolid)
            s.SetColor(*color)
            if not chart.HasPlotSeriesNodeID(s.GetID()):
                chart.AddAndObservePlotSeriesNodeID(s.GetID())
        chart.EndModify(was)
        self._showChartInPlotViews(chart)

    def _findSeries(self, name):
        scene = self.scene
        table = self.getNode("curvesTable")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode")):
            s = scene.GetNthNodeByClass(i, "vtkMRMLPlotSeriesNode")
            if s.GetName() == name and table is not None and s.GetTableNodeID() == table.GetID():
                return s
        return None

    def _showChartInPlotViews(self, chart) -> None:
        scene = self.scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode")):
            scene.GetNthNodeByClass(i, "vtkMRMLPlotViewNode").SetPlotChartNodeID(chart.GetID())
        selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
        if selection is not None and hasattr(selection, "SetActivePlotChartID"):
            selection.SetActivePlotChartID(chart.GetID())

    # ----------------------------------------------------------------------------- tissue curve (cursor)

    def updateTissueCurveAtRAS(self, ras) -> Optional[np.ndarray]:
        """Puts the time curve (HU) of the voxel at RAS ``ras`` into the ``tissue_hu`` column (NaN outside
        the volume) and returns it."""
        table = self.getNode("curvesTable")
        if table is None:
            return None
        series = self.inputSeries()
        idx = mc.ras_to_zyx([ras], series.geometry, series.shape_zyx)
        if len(idx):
            z, y, x = idx[0]
            curve = series.data[:, z, y, x].astype(np.float64)
        else:
            curve = np.full(series.n_frames, np.nan)
        if table.GetTable().GetNumberOfRows() != series.n_frames:
            return None
        mc.set_table_column(table, "tissue_hu", curve)
        return None if not len(idx) else curve

    def observeCrosshair(self, crosshair_node=None) -> None:
        """Follows the mouse: each crosshair move puts the tissue curve under the cursor into the chart."""
        self.stopObservingCrosshair()
        node = crosshair_node or self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if node is None:
            return

        def on_move(caller, event):
            ras = [0.0, 0.0, 0.0]
            if caller.GetCursorPositionRAS(ras):
                try:
                    self.updateTissueCurveAtRAS(ras)
                except InputError:
                    pass

        tag = node.AddObserver(node.CursorPositionModifiedEvent, on_move)
        self._crosshair_observation = (node, tag)

    def stopObservingCrosshair(self) -> None:
        if self._crosshair_observation is not None:
            node, tag = self._crosshair_observation
            node.RemoveObserver(tag)
            self._crosshair_observation = None

    # -------------------------------------------------------------------------------------------- Pvol

    def _setPvolVolumes(self, functions: InputFunctions) -> None:
        series_geometry = self.inputSeries().geometry
        for kind, pvol in (("aif", functions.aif_pvol), ("vof", functions.vof_pvol)):
            param = f"{kind}PvolVolume"
            node = self.getNode(param)
            if pvol is None:
                continue
            node = mc.volume_from_array(self.scene, pvol.astype(np.float32), series_geometry,
                                        f"{kind.upper()} Pvol", node)
            peak = float(pvol.max()) if pvol.size else 1.0
            mc.set_volume_display(node, mc.available_color_id(self.scene, PVOL_COLORS),
                                  (0.0, peak if peak > 0 else 1.0), lower_threshold=0.02 * peak)
            node.SetAttribute("AIFSelector.Quantity", "probability (sums to 1)")
            self.setNode(param, node)
        self.showPvol()

    def showPvol(self, overlay: Optional[str] = None, opacity: Optional[float] = None) -> None:
        """Pvol over the CTP images: the chosen Pvol ('AIF', 'VOF' or 'None') as foreground layer of every
        slice view (the compare-layout views excepted) with the given opacity (0..1); the CTP proxy
        volume as background where a view shows none."""
        if overlay is not None:
            self.setParameter("pvolOverlay", overlay)
        if opacity is not None:
            self.setParameter("pvolOpacity", float(np.clip(opacity, 0.0, 1.0)))
        overlay = self.getParameter("pvolOverlay")
        node = None if overlay == "None" else self.getNode(f"{overlay.lower()}PvolVolume")
        proxy = self.inputProxyVolume()
        for composite in self._compositeNodes(exclude=COMPARE_VIEWS):
            was = composite.StartModify()
            if proxy is not None and not composite.GetBackgroundVolumeID():
                composite.SetBackgroundVolumeID(proxy.GetID())
            composite.SetForegroundVolumeID(node.GetID() if node is not None else None)
            composite.SetForegroundOpacity(self.getParameter("pvolOpacity"))
            composite.EndModify(was)

    def _compositeNodes(self, only=None, exclude=()):
        scene = self.scene
        out = []
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            c = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            name = c.GetLayoutName()
            if (only is None or name in only) and name not in exclude:
                out.append(c)
        return out

    # -------------------------------------------------------------------------------- manual correction

    def getOrCreateMarkups(self, kind: str):
        """The markups point list for 'artery' or 'vein' picks (created, coloured and referenced on demand)."""
        param, name, color = MARKUPS[kind]
        node = self.getNode(param)
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            if display is not None:
                display.SetSelectedColor(*color)
                display.SetColor(*color)
            node.SetMarkupLabelFormat("A%d" if kind == "artery" else "V%d")
            self.setNode(param, node)
            if self.getParameter("autoUpdateCorrection"):
                self.setAutoUpdate(True)
        return node

    @staticmethod
    def _defined_points(node) -> np.ndarray:
        if node is None:
            return np.zeros((0, 3))
        pts = []
        for i in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
                continue
            p = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, p)
            pts.append(p)
        return np.asarray(pts, dtype=np.float64).reshape(-1, 3)

    def pickedVoxels(self, kind: str) -> np.ndarray:
        """(n, 3) z, y, x voxels of the defined points of the 'artery' or 'vein' markups inside the volume."""
        series = self.inputSeries()
        node = self.getNode(MARKUPS[kind][0])
        return mc.ras_to_zyx(self._defined_points(node), series.geometry, series.shape_zyx)

    def correctFromMarkups(self, radius_vox: Optional[int] = None) -> Optional[InputFunctions]:
        """Recomputes AIF (and VOF) from the voxels under the artery (vein) points and their in-plane
        neighbourhood of ``radius_vox`` voxels (parameter neighbourhoodRadius by default); a curve with no
        point stays automatic. The chart follows at once; aifSource becomes 'corrected'. With no point at
        all the automatic curves come back. Returns the active functions."""
        if radius_vox is not None:
            self.setParameter("neighbourhoodRadius", int(radius_vox))
        radius = self.getParameter("neighbourhoodRadius")
        arteries = self.pickedVoxels("artery")
        veins = self.pickedVoxels("vein")
        if len(arteries) == 0 and len(veins) == 0:
            self.useAutomatic()
            return None
        series = self.inputSeries()
        auto = self.curves()
        if len(arteries):
            manual = manual_input_functions(series, arteries, veins if len(veins) else None, radius)
            aif = manual.aif_hu
            vof = manual.vof_hu if manual.vof_hu is not None else auto["vof_auto_hu"]
        else:
            manual = manual_input_functions(series, veins, None, radius)  # the vein points' curve
            aif, vof = auto["aif_auto_hu"], manual.aif_hu
        functions = InputFunctions(times_s=series.times_s.copy(), aif_hu=aif,
                                   vof_hu=vof if np.all(np.isfinite(vof)) else None, method="manual",
                                   details={"artery_voxels": arteries.tolist(), "vein_voxels": veins.tolist(),
                                            "radius_vox": radius})
        p = self.parameterNode()
        was = p.StartModify()
        self.setParameter("aifSource", "corrected")
        self.setInputFunctions(functions, automatic=False)
        p.EndModify(was)
        return functions

    def useAutomatic(self) -> None:
        """Back to the automatic curves (the picked points stay, for a later correction)."""
        c = self.curves()
        p = self.parameterNode()
        was = p.StartModify()
        self.setParameter("aifSource", "automatic")
        table = self.getNode("curvesTable")
        mc.set_table_column(table, "aif_hu", c["aif_auto_hu"])
        mc.set_table_column(table, "vof_hu", c["vof_auto_hu"])
        self._updateChart()
        p.EndModify(was)

    @property
    def autoUpdating(self) -> bool:
        """True while picked points are observed (see setAutoUpdate)."""
        return bool(self._observations)

    def setAutoUpdate(self, enabled: bool = True) -> None:
        """When enabled, adding, moving or removing a picked point recomputes the curves immediately."""
        self.setParameter("autoUpdateCorrection", bool(enabled))
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []
        if not enabled:
            return
        for kind in MARKUPS:
            node = self.getNode(MARKUPS[kind][0])
            if node is None:
                continue
            for event in (node.PointModifiedEvent, node.PointPositionDefinedEvent, node.PointRemovedEvent):
                self._observations.append((node, node.AddObserver(event, self._onMarkupsChanged)))

    def _onMarkupsChanged(self, caller, event):
        try:
            if self.getNode("curvesTable") is not None:
                self.correctFromMarkups()
        except InputError as e:
            logging.warning("AIFSelector: correction not applied: %s", e)

    # ---------------------------------------------------------------------------------------------- maps

    def computeMapArrays(self, prepared, functions: InputFunctions, method: str = "osvd", smooth_mm: float = DENOISE_SIGMA_MM,
                         tmax_threshold_s: float = TMAX_THRESHOLD_S, device: Optional[str] = None,
                         progress: Callable = _noop_progress):
        """Pure (worker-thread safe): perfusion maps of a prepared series with the given input functions."""
        from AIFSelectorLib.maps.compute import compute_maps
        if method not in METHODS:
            raise InputError(f"unknown deconvolution method {method!r}: use one of {', '.join(METHODS)}")
        progress(0.0, "deconvolution")
        return compute_maps(prepared, functions, method=method, smooth_mm=smooth_mm,
                            tmax_threshold_s=tmax_threshold_s, device=device,
                            progress=lambda f: progress(f, "deconvolution"))

    def computeMaps(self, progress: Callable = _noop_progress):
        """Perfusion maps from the active curves with the method and thresholds of the parameter node
        (main thread): computes, then writes the map volumes. Returns PerfusionMaps."""
        series = self.inputSeries()
        perfusion = self.computeMapArrays(
            self.prepared(series), self.inputFunctions(), self.getParameter("method"),
            self.getParameter("smoothMM"), self.getParameter("tmaxThreshold"), self.device(), progress)
        self.setMaps(perfusion)
        return perfusion

    def setMaps(self, perfusion) -> Dict[str, object]:
        """Map volumes (CBF, CBV, MTT, Tmax, TTP, rCBF, rCBV) and the tissue mask on the input's grid, with
        window/level and colour maps. Returns {map name: volume node}."""
        geometry = self.inputSeries().geometry
        color = mc.available_color_id(self.scene, MAP_COLORS)
        nodes = {}
        p = self.parameterNode()
        was = p.StartModify()
        for key in SD_NAMES:  # a method without posterior SDs leaves none of an earlier run's beside its maps
            if key not in perfusion.maps and self.getNode(MAP_PARAMETERS[key]) is not None:
                self.scene.RemoveNode(self.getNode(MAP_PARAMETERS[key]))
                self.setNode(MAP_PARAMETERS[key], None)
        for key in [k for k in MAP_PARAMETERS if k in perfusion.maps]:
            name, unit, wl = MAP_DISPLAY[key]
            values = np.asarray(perfusion.maps[key], dtype=np.float32)
            node = mc.volume_from_array(self.scene, values, geometry, name, self.getNode(MAP_PARAMETERS[key]))
            mc.set_volume_display(node, color, wl, lower_threshold=1e-6)
            mc.set_voxel_value_units(node, *MAP_UNITS_UCUM[key], MAP_QUANTITIES[key])
            node.SetAttribute("AIFSelector.Map", key)
            node.SetAttribute("AIFSelector.Unit", unit)
            self.setNode(MAP_PARAMETERS[key], node)
            nodes[key] = node
        mask = mc.volume_from_array(self.scene, perfusion.tissue.astype(np.uint8), geometry,
                                    "Perfusion tissue", self.getNode("tissueMask"), "vtkMRMLLabelMapVolumeNode")
        self.setNode("tissueMask", mask)
        flags = [k for k, on in perfusion.quality_flags.items() if on]
        cbf = nodes["cbf"]
        cbf.SetAttribute("AIFSelector.AIFScale", f"{perfusion.aif_scale:.6g}")
        for k, v in perfusion.control.items():
            cbf.SetAttribute(f"AIFSelector.{k}", f"{v:.6g}")
        cbf.SetAttribute("AIFSelector.Method", self.getParameter("method"))
        cbf.SetAttribute("AIFSelector.AIFSource", self.getParameter("aifSource"))
        message = self.getParameter("statusMessage").split(" | AIF quality: ")[0]
        if flags:
            message = (message + " | " if message else "") + "AIF quality: " + ", ".join(flags)
        self.setParameter("statusMessage", message)
        p.EndModify(was)
        return nodes

    def mapVolume(self, key: str):
        """The volume node of a map ('cbf', 'cbv', 'mtt', 'tmax', 'ttp', 'rcbf', 'rcbv'; 'cbf_sd', 'tmax_sd' after
        the Bayesian method), or None."""
        return self.getNode(MAP_PARAMETERS[key])

    def showMapsInCompareLayout(self) -> bool:
        """Registers the six-view compare layout (CBF, CBV, MTT / Tmax, TTP, rCBF), switches to it when the
        scene has a layout node and puts each map in its view. Returns True if a layout node was set."""
        scene = self.scene
        layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layout is not None:
            if not layout.IsLayoutDescription(COMPARE_LAYOUT_ID):
                layout.AddLayoutDescription(COMPARE_LAYOUT_ID, COMPARE_LAYOUT_XML)
            layout.SetViewArrangement(COMPARE_LAYOUT_ID)
        self.assignMapsToCompareViews()
        return layout is not None

    def storeCompareLayout(self) -> None:
        """For a scene saved outside the application: the compare layout stored with its views (a bundle)."""
        store_compare_views(self.scene)
        self.showMapsInCompareLayout()

    def assignMapsToCompareViews(self) -> None:
        """Each compare view's background = its map, linked controls so the views move together."""
        by_view = {MAP_DISPLAY[k][0]: self.mapVolume(k) for k in MAP_NAMES}
        for composite in self._compositeNodes(only=COMPARE_VIEWS):
            node = by_view.get(composite.GetLayoutName())
            if node is not None:
                composite.SetBackgroundVolumeID(node.GetID())
                composite.SetForegroundVolumeID(None)
                composite.SetLinkedControl(1)

    # ----------------------------------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        """Removes observers (module reload, widget destruction)."""
        self.stopObservingCrosshair()
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []
