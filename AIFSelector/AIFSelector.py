"""AIF Selector: arterial and venous input functions of a CT perfusion series, their manual correction,
and perfusion maps, as a 3D Slicer scripted module.

Thin by design: the Widget wires the Qt Designer GUI (Resources/UI/AIFSelector.ui, parameter-node
bindings) to the Logic; the Logic is AIFSelectorLib.mrml.aif_selector_logic.AIFSelectorLogic (GUI-free, tested
in CI on real MRML nodes from slicer-core). Long work runs in a worker thread with progress and Cancel.
"""
import os
from typing import Annotated, Optional

import ctk
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLMarkupsFiducialNode, vtkMRMLPlotChartNode,
                    vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode, vtkMRMLTableNode)

from AIFSelectorLib.gui.background import runInBackground
from AIFSelectorLib.gui.installers import ensureAIFNetRuntime, ensurePythonDependencies
from AIFSelectorLib.mrml import aif_selector_logic as lib

P = lib.PARAMETERS

# Installed extension: the AIFNet weights lie beside the scripted modules' resources (see CMakeLists.txt);
# in a source tree AIFSelectorLib finds them at the repository root by itself.
_INSTALLED_MODELS = os.path.join(os.path.dirname(__file__), "Resources", "models")
if os.path.isfile(os.path.join(_INSTALLED_MODELS, "manifest.json")):
    os.environ.setdefault("STROKELESION_MODELS_DIR", _INSTALLED_MODELS)


#
# AIFSelector
#

class AIFSelector(ScriptedLoadableModule):

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AIF Selector"
        self.parent.categories = ["Perfusion"]
        self.parent.dependencies = ["Sequences", "Markups", "Plots"]
        self.parent.contributors = ["StrokeLesion developers"]
        self.parent.helpText = """
Arterial and venous input functions (AIF, VOF) of a CT perfusion series: AIFNet (the classic selector
when PyTorch or the weights are missing), the probability volume Pvol over the images, the tissue curve
under the mouse, manual correction by placing points on arteries and veins, and perfusion maps
(CBF, CBV, MTT, Tmax, TTP, rCBF) by delay-insensitive deconvolution.
See <a href="https://github.com/strokelesion/StrokeLesion/blob/main/docs/slicer.md">the module documentation</a>.
"""
        self.parent.acknowledgementText = """
AIFNet: de la Rosa et al., Medical Image Analysis 2021. oSVD: Wu et al., MRM 2003. Tikhonov with
Volterra discretisation: Sourbron et al., 2007. Digital reference object: OSIPI DSC.
"""
        slicer.app.connect("startupCompleted()", registerSampleData)
        slicer.app.connect("startupCompleted()", registerCompareLayout)


def registerCompareLayout():
    """The six-view compare layout, known to the layout manager from startup, so that a scene saved in it
    (a scene bundle from `strokelesion run --scene`) opens with the maps side by side."""
    layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
    if not layoutNode.IsLayoutDescription(lib.COMPARE_LAYOUT_ID):
        layoutNode.AddLayoutDescription(lib.COMPARE_LAYOUT_ID, lib.COMPARE_LAYOUT_XML)


#
# Sample data: the digital phantom, generated locally (no download)
#

PHANTOM_SAMPLE_NAME = "StrokePhantomCTP"


def registerSampleData():
    """Adds the digital CTP phantom to the Sample Data module (category 'Stroke perfusion')."""
    import SampleData
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Stroke perfusion",
        sampleName=PHANTOM_SAMPLE_NAME,
        uris="local://strokelesion/phantom/seed-0",
        fileNames="StrokePhantomCTP.seq.nrrd",
        nodeNames=PHANTOM_SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "StrokePhantomCTP.png"),
        loadFileType="SequenceFile",
        customDownloader=loadPhantomSample,
    )


def loadPhantomSample(source=None, seed: int = 0):
    """Generates the digital phantom (8 x 256 x 256, 48 frames) and loads it as a volume sequence; the
    AIFSelector input is set to it. Returns [sequence node]."""
    from AIFSelectorLib.phantom.case import make_phantom
    with slicer.util.WaitCursor():
        case = make_phantom(seed=seed)
        logic = AIFSelectorLogic()
        sequence = logic.addSeries(case.series, PHANTOM_SAMPLE_NAME)
        proxy = logic.inputProxyVolume()
        if proxy is not None:
            slicer.util.setSliceViewerLayers(background=proxy, fit=True)
    return [sequence]


#
# Parameter node (names and defaults shared with AIFSelectorLib.mrml.aif_selector_logic.PARAMETERS)
#

@parameterNodeWrapper
class AIFSelectorParameterNode:
    inputSequence: vtkMRMLSequenceNode
    selector: Annotated[str, Choice(list(lib.SELECTORS))] = P["selector"]
    selectorUsed: str = P["selectorUsed"]
    aifSource: Annotated[str, Choice(list(lib.SOURCES))] = P["aifSource"]
    neighbourhoodRadius: Annotated[int, WithinRange(0, 5)] = P["neighbourhoodRadius"]
    autoUpdateCorrection: bool = P["autoUpdateCorrection"]
    pvolOverlay: Annotated[str, Choice(list(lib.OVERLAYS))] = P["pvolOverlay"]
    pvolOpacity: Annotated[float, WithinRange(0.0, 1.0)] = P["pvolOpacity"]
    method: Annotated[str, Choice(list(lib.METHODS))] = P["method"]
    smoothMM: Annotated[float, WithinRange(0.0, 10.0)] = P["smoothMM"]
    tmaxThreshold: Annotated[float, WithinRange(1.0, 20.0)] = P["tmaxThreshold"]
    frameInterval: Annotated[float, WithinRange(0.0, 60.0)] = P["frameInterval"]
    useCPU: bool = P["useCPU"]
    statusMessage: str = P["statusMessage"]
    curvesTable: vtkMRMLTableNode
    curvesChart: vtkMRMLPlotChartNode
    aifPvolVolume: vtkMRMLScalarVolumeNode
    vofPvolVolume: vtkMRMLScalarVolumeNode
    arteryMarkups: vtkMRMLMarkupsFiducialNode
    veinMarkups: vtkMRMLMarkupsFiducialNode
    tissueMask: vtkMRMLLabelMapVolumeNode
    cbfVolume: vtkMRMLScalarVolumeNode
    cbvVolume: vtkMRMLScalarVolumeNode
    mttVolume: vtkMRMLScalarVolumeNode
    tmaxVolume: vtkMRMLScalarVolumeNode
    ttpVolume: vtkMRMLScalarVolumeNode
    rcbfVolume: vtkMRMLScalarVolumeNode
    rcbvVolume: vtkMRMLScalarVolumeNode
    cbfSDVolume: vtkMRMLScalarVolumeNode
    tmaxSDVolume: vtkMRMLScalarVolumeNode


#
# AIFSelectorWidget
#

class AIFSelectorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._lastOverlay = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AIFSelector.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AIFSelectorLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.ctpPathLineEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Readable
        self.ui.ctpPathLineEdit.nameFilters = ["CT perfusion (*.nii *.nii.gz *.seq.nrrd *.nrrd *.dcm)", "All files (*)"]
        self.ui.loadCTPButton.connect("clicked(bool)", self.onLoadCTP)
        self.ui.selectButton.connect("clicked(bool)", self.onSelectAIF)
        self.ui.showChartButton.connect("clicked(bool)", self.onShowChart)
        self.ui.applyCorrectionButton.connect("clicked(bool)", self.onApplyCorrection)
        self.ui.useAutomaticButton.connect("clicked(bool)", self.onUseAutomatic)
        self.ui.computeMapsButton.connect("clicked(bool)", self.onComputeMaps)
        self.ui.compareLayoutButton.connect("clicked(bool)", self.onCompareLayout)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setVisible(False)
        for placeWidget in (self.ui.arteryPlaceWidget, self.ui.veinPlaceWidget):
            placeWidget.setMRMLScene(slicer.mrmlScene)
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups

        self.initializeParameterNode()

    def cleanup(self):
        if self._task is not None and self._task.running:
            self._task.cancel()
        self.removeObservers()
        if self.logic is not None:
            self.logic.cleanup()

    def enter(self):
        self.initializeParameterNode()
        self.logic.observeCrosshair()

    def exit(self):
        self.logic.stopObservingCrosshair()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputSequence:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode")
            if first:
                self._parameterNode.inputSequence = first

    def setParameterNode(self, inputParameterNode: Optional[AIFSelectorParameterNode]):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self.logic.setAutoUpdate(self._parameterNode.autoUpdateCorrection)
            self.ui.arteryPlaceWidget.setCurrentNode(self._parameterNode.arteryMarkups)
            self.ui.veinPlaceWidget.setCurrentNode(self._parameterNode.veinMarkups)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        hasInput = p.inputSequence is not None
        hasCurves = p.curvesTable is not None
        busy = self._task is not None and self._task.running
        self.ui.selectButton.enabled = hasInput and not busy
        self.ui.selectButton.toolTip = "Select the AIF and VOF automatically" if hasInput else "Select a CTP sequence first"
        for w in (self.ui.applyCorrectionButton, self.ui.useAutomaticButton, self.ui.showChartButton,
                  self.ui.arteryPlaceWidget, self.ui.veinPlaceWidget):
            w.enabled = hasCurves and not busy
        self.ui.computeMapsButton.enabled = hasCurves and not busy
        self.ui.compareLayoutButton.enabled = p.cbfVolume is not None
        used = p.selectorUsed or "-"
        self.ui.aifSourceLabel.text = f"Curves: {p.aifSource} (selector: {used})"
        self.ui.statusLabel.text = p.statusMessage
        overlay = (p.pvolOverlay, p.pvolOpacity, p.aifPvolVolume, p.vofPvolVolume)
        if hasCurves and overlay != self._lastOverlay:
            self._lastOverlay = overlay
            self.logic.showPvol()
        if p.autoUpdateCorrection != self.logic.autoUpdating and (p.arteryMarkups or p.veinMarkups):
            self.logic.setAutoUpdate(p.autoUpdateCorrection)

    def _setBusy(self, busy: bool):
        for w in (self.ui.loadCTPButton, self.ui.selectButton, self.ui.computeMapsButton):
            w.enabled = not busy
        if not busy:
            self._onParameterNodeModified()

    # ---------------------------------------------------------------------------------------- actions

    def onCancel(self):
        if self._task is not None:
            self._task.cancel()

    def onLoadCTP(self):
        path = self.ui.ctpPathLineEdit.currentPath
        if not path:
            slicer.util.warningDisplay("Choose a 4D NIfTI, a .seq.nrrd, a DICOM folder or an ISLES 2018 case folder.")
            return
        if not ensurePythonDependencies():
            return
        dt = self._parameterNode.frameInterval or None
        name = os.path.basename(path.rstrip("/\\")).split(".")[0] or "CTP"

        def work(progress):
            from AIFSelectorLib.io.ctp_io import load_ctp
            progress(0.1, "reading")
            return load_ctp(path, dt_s=dt)

        def done(task):
            self.logic.addSeries(task.result, name)
            proxy = self.logic.inputProxyVolume()
            if proxy is not None:
                slicer.util.setSliceViewerLayers(background=proxy, fit=True)

        runInBackground(self, work, done, "Loading CTP")

    def onSelectAIF(self):
        if not ensurePythonDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Cannot read the CTP series.", waitCursor=True):
            series = self.logic.inputSeries()
        selector = self._parameterNode.selector
        if selector == "aifnet":
            ensureAIFNetRuntime()  # declined or failed: the one policy falls back to the classic selector
        device = self.logic.device()
        logic = self.logic

        def work(progress):
            progress(0.05, "bolus and masks")
            prepared = logic.prepared(series)
            return logic.computeInputFunctions(prepared, selector, device, progress)

        def done(task):
            logic.setInputFunctions(task.result)
            self.onShowChart()
            self.ui.arteryPlaceWidget.setCurrentNode(logic.getOrCreateMarkups("artery"))
            self.ui.veinPlaceWidget.setCurrentNode(logic.getOrCreateMarkups("vein"))

        runInBackground(self, work, done, "Selecting AIF/VOF")

    def onShowChart(self):
        chart = self._parameterNode.curvesChart
        if chart is None:
            return
        layoutManager = slicer.app.layoutManager()
        if layoutManager.layout not in (slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView,
                                        slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalPlotView,
                                        slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpPlotView):
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalPlotView)
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onApplyCorrection(self):
        with slicer.util.tryWithErrorDisplay("Correction failed.", waitCursor=True):
            if self.logic.correctFromMarkups() is None:
                slicer.util.showStatusMessage("No point placed: the automatic curves are used", 3000)

    def onUseAutomatic(self):
        with slicer.util.tryWithErrorDisplay("Cannot restore the automatic curves.", waitCursor=True):
            self.logic.useAutomatic()

    def onComputeMaps(self):
        p = self._parameterNode
        logic = self.logic
        with slicer.util.tryWithErrorDisplay("Cannot compute the maps.", waitCursor=True):
            series = logic.inputSeries()
            functions = logic.inputFunctions()
            device = logic.device()
        method, smooth, tmax = p.method, p.smoothMM, p.tmaxThreshold

        def work(progress):
            prepared = logic.prepared(series)
            return logic.computeMapArrays(prepared, functions, method, smooth, tmax, device, progress)

        def done(task):
            nodes = logic.setMaps(task.result)
            slicer.util.setSliceViewerLayers(background=nodes["cbf"], foreground=None, fit=False)

        runInBackground(self, work, done, "Perfusion maps")

    def onCompareLayout(self):
        with slicer.util.tryWithErrorDisplay("Cannot show the maps.", waitCursor=True):
            self.logic.showMapsInCompareLayout()
            slicer.app.processEvents()
            self.logic.assignMapsToCompareViews()  # views exist once the layout manager built them
            for name in lib.COMPARE_VIEWS:
                widget = slicer.app.layoutManager().sliceWidget(name)
                if widget is not None:
                    widget.sliceLogic().FitSliceToAll()


#
# AIFSelectorLogic
#

class AIFSelectorLogic(ScriptedLoadableModuleLogic, lib.AIFSelectorLogic):
    """The module Logic: AIFSelectorLib.mrml.aif_selector_logic.AIFSelectorLogic on slicer.mrmlScene (or the
    given scene), with the typed parameter node of this module. See docs/slicer.md for scripting."""

    def __init__(self, scene=None):
        ScriptedLoadableModuleLogic.__init__(self)
        lib.AIFSelectorLogic.__init__(self, scene)

    def getParameterNode(self):
        return AIFSelectorParameterNode(self.parameterNode())


#
# AIFSelectorTest
#

class AIFSelectorTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test, or ctest): the whole AIFSelector workflow on a small phantom."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_AIFSelector_workflow()

    def test_AIFSelector_workflow(self):
        import numpy as np
        from AIFSelectorLib.mrml import conversion as mc
        from AIFSelectorLib.phantom.case import make_phantom

        self.delayDisplay("Making a small phantom")
        case = make_phantom(seed=3, shape_zyx=(4, 64, 64), n_frames=30)
        logic = AIFSelectorLogic()
        sequence = logic.addSeries(case.series, "Phantom CTP")
        self.assertEqual(sequence.GetNumberOfDataNodes(), case.series.n_frames)
        series = logic.inputSeries()
        self.assertTrue(np.allclose(series.data, case.series.data))

        self.delayDisplay("Selecting the AIF (classic)")
        functions = logic.selectInputFunctions("classic")
        curves = logic.curves()
        self.assertTrue(np.allclose(curves["aif_hu"], functions.aif_hu))
        pvol = logic.getParameterNode().aifPvolVolume
        self.assertEqual(pvol.GetImageData().GetDimensions(), tuple(reversed(case.series.shape_zyx)))

        self.delayDisplay("Correcting the AIF with a point on the artery")
        artery = np.argwhere(case.truth["artery_mask"])[0]
        markups = logic.getOrCreateMarkups("artery")
        markups.AddControlPoint(*mc.zyx_to_ras([artery], case.series.geometry)[0])
        logic.correctFromMarkups(radius_vox=0)
        self.assertEqual(logic.getParameterNode().aifSource, "corrected")
        self.assertTrue(np.allclose(logic.curves()["aif_hu"], case.series.data[:, artery[0], artery[1], artery[2]]))

        self.delayDisplay("Computing maps")
        logic.computeMaps()
        cbf = logic.getParameterNode().cbfVolume
        self.assertTrue(np.allclose(mc.node_ijk_to_ras(cbf), mc.ijk_to_ras(case.series.geometry)))
        logic.showMapsInCompareLayout()
        self.delayDisplay("Test passed")
