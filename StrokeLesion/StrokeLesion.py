"""Stroke Lesion: core and penumbra from perfusion maps with a live threshold preview, the deep lesion
model, and one editable segmentation (Core, Penumbra, Lesion (model)) with a table of volumes, as a
3D Slicer scripted module.

Thin by design: the Widget wires the Qt Designer GUI (Resources/UI/StrokeLesion.ui, parameter-node
bindings) to the Logic, StrokeLesionLib.mrml.stroke_lesion_logic.StrokeLesionLogic (GUI-free, tested in CI on
real MRML nodes from slicer-core). Depends on the AIF Selector module, never the reverse.
"""
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode,
                    vtkMRMLSequenceNode, vtkMRMLTableNode)

from StrokeLesionLib.mrml import stroke_lesion_logic as lib

P = lib.PARAMETERS


#
# StrokeLesion
#

class StrokeLesion(ScriptedLoadableModule):

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Stroke Lesion"
        self.parent.categories = ["Perfusion"]
        self.parent.dependencies = ["AIFSelector", "Segmentations"]
        self.parent.contributors = ["StrokeLesion developers"]
        self.parent.helpText = """
Core (rCBF below a fraction of normal tissue, inside Tmax above a threshold) and penumbra (Tmax above the
threshold, outside the core) from the AIF Selector's maps, with a live preview while the thresholds move;
an optional deep lesion model; one segmentation with the segments Core, Penumbra and Lesion (model),
ready for the Segment Editor, and a table of volumes (ml) and mismatch. Segments you edited are never
overwritten without your confirmation.
See <a href="https://github.com/strokelesion/StrokeLesion/blob/main/docs/slicer.md">the module documentation</a>.
"""
        self.parent.acknowledgementText = """
Thresholds: rCBF below 38 % (AIFNet paper; 30 % as RAPID) inside Tmax above 6 s. Pseudo-DWI lesion model:
Wang et al., Medical Image Analysis 2020.
"""


#
# Parameter node (names and defaults shared with StrokeLesionLib.mrml.stroke_lesion_logic.PARAMETERS)
#

@parameterNodeWrapper
class StrokeLesionParameterNode:
    coreRCBF: Annotated[float, WithinRange(0.1, 0.6)] = P["coreRCBF"]
    tmaxThreshold: Annotated[float, WithinRange(2.0, 12.0)] = P["tmaxThreshold"]
    minIslandML: Annotated[float, WithinRange(0.0, 10.0)] = P["minIslandML"]
    lesionModel: Annotated[str, Choice(list(lib.LESION_MODEL_CHOICES))] = P["lesionModel"]
    previewEnabled: bool = P["previewEnabled"]
    useCPU: bool = P["useCPU"]
    statusMessage: str = P["statusMessage"]
    rcbfVolume: vtkMRMLScalarVolumeNode
    tmaxVolume: vtkMRMLScalarVolumeNode
    tissueMask: vtkMRMLLabelMapVolumeNode
    inputSequence: vtkMRMLSequenceNode
    segmentation: vtkMRMLSegmentationNode
    volumesTable: vtkMRMLTableNode
    previewVolume: vtkMRMLLabelMapVolumeNode
    displayedMap: vtkMRMLScalarVolumeNode


#
# StrokeLesionWidget
#

class StrokeLesionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._lastPreview = None
        self._lastDisplayed = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/StrokeLesion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = StrokeLesionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.fromAIFSelectorButton.connect("clicked(bool)", self.onFromAIFSelector)
        self.ui.paperPresetButton.connect("clicked(bool)", lambda checked=False: self.logic.setThresholds(core_rcbf=0.38))
        self.ui.rapidPresetButton.connect("clicked(bool)", lambda checked=False: self.logic.setThresholds(core_rcbf=0.30))
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onSegmentEditor)
        self.ui.updateVolumesButton.connect("clicked(bool)", self.onUpdateVolumes)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setVisible(False)

        # the live preview follows the thresholds, at most every 150 ms
        self._previewTimer = qt.QTimer()
        self._previewTimer.setSingleShot(True)
        self._previewTimer.setInterval(150)
        self._previewTimer.connect("timeout()", self.updatePreview)

        self.initializeParameterNode()

    def cleanup(self):
        if self._task is not None and self._task.running:
            self._task.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
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
        if not self._parameterNode.rcbfVolume:
            self.logic.setInputsFromAIFSelector()

    def setParameterNode(self, inputParameterNode: Optional[StrokeLesionParameterNode]):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        ready = p.rcbfVolume is not None and p.tmaxVolume is not None
        busy = self._task is not None and self._task.running
        self.ui.applyButton.enabled = ready and not busy
        self.ui.applyButton.toolTip = ("Create the Core, Penumbra (and Lesion (model)) segments" if ready
                                       else "Compute the maps in AIF Selector first, or select rCBF and Tmax")
        self.ui.segmentEditorButton.enabled = p.segmentation is not None
        self.ui.updateVolumesButton.enabled = p.segmentation is not None and ready
        self.ui.volumesTableView.setMRMLTableNode(p.volumesTable)
        self.ui.statusLabel.text = p.statusMessage
        preview = (p.coreRCBF, p.tmaxThreshold, p.minIslandML, p.previewEnabled, p.rcbfVolume, p.tmaxVolume, p.tissueMask)
        if ready and preview != self._lastPreview:
            self._lastPreview = preview
            self._previewTimer.start()
        if p.displayedMap is not None and p.displayedMap is not self._lastDisplayed:
            self._lastDisplayed = p.displayedMap
            self.logic.showMap(p.displayedMap)

    def _setBusy(self, busy: bool):
        self.ui.applyButton.enabled = not busy
        if not busy:
            self._onParameterNodeModified()

    # ---------------------------------------------------------------------------------------- actions

    def updatePreview(self):
        p = self._parameterNode
        if p is None or p.rcbfVolume is None or p.tmaxVolume is None:
            return
        if not p.previewEnabled:
            self.logic.showPreview(False)
            self.ui.previewVolumesLabel.text = ""
            return
        try:
            v = self.logic.updatePreview()
        except Exception as e:  # noqa: BLE001 - a preview must never interrupt the user
            self.ui.previewVolumesLabel.text = f"Preview unavailable: {e}"
            return
        ratio = "n/a" if v["mismatch_ratio"] is None else f"{v['mismatch_ratio']:.2f}"
        self.ui.previewVolumesLabel.text = (f"Core {v['core_ml']:.1f} ml, penumbra {v['penumbra_ml']:.1f} ml, "
                                            f"mismatch ratio {ratio}")

    def onCancel(self):
        if self._task is not None:
            self._task.cancel()

    def onFromAIFSelector(self):
        if not self.logic.setInputsFromAIFSelector():
            slicer.util.warningDisplay("AIF Selector has no maps yet: select the AIF and compute the maps there.")

    def _askOverwrite(self, edited):
        """'new', 'overwrite' or None (cancel) for a re-run over edited segments."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("Stroke Lesion")
        box.setIcon(qt.QMessageBox.Question)
        box.setText("These segments were edited since they were created: " + ", ".join(edited) + ".")
        box.setInformativeText("Put the new result in a new segmentation (your edits stay as they are), "
                               "or overwrite the edited segments?")
        newButton = box.addButton("New segmentation", qt.QMessageBox.AcceptRole)
        overwriteButton = box.addButton("Overwrite", qt.QMessageBox.DestructiveRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(newButton)
        box.exec_()
        if box.clickedButton() == newButton:
            return "new"
        if box.clickedButton() == overwriteButton:
            return "overwrite"
        return None

    def onApply(self):
        p = self._parameterNode
        logic = self.logic
        with slicer.util.tryWithErrorDisplay("Cannot compute core and penumbra.", waitCursor=True):
            core, penumbra = logic.computeMasks()
            edited = logic.editedSegments()
        overwrite = False
        if edited:
            choice = self._askOverwrite(edited)
            if choice is None:
                return
            overwrite = choice == "overwrite"

        def finish(lesion):
            seg = logic.segment(core, penumbra, lesion, overwrite_edited=overwrite)
            logic.showPreview(False)
            seg.CreateClosedSurfaceRepresentation()  # shows the segments in 3D as well
            self.ui.volumesTableView.setMRMLTableNode(logic.getNode("volumesTable"))

        model = p.lesionModel
        if model == "none":
            with slicer.util.tryWithErrorDisplay("Cannot create the segments.", waitCursor=True):
                finish(None)
            return
        from AIFSelectorLib.gui.background import runInBackground
        from AIFSelectorLib.gui.installers import ensureTorch
        if not ensureTorch(required=True):
            return
        with slicer.util.tryWithErrorDisplay("Cannot read the model inputs.", waitCursor=True):
            series, maps = logic.lesionModelInputs()
        device = "cpu" if p.useCPU else "auto"
        runInBackground(self, lambda progress: logic.computeLesion(model, series, maps, device),
                        lambda task: finish(task.result), "Lesion model")

    def onUpdateVolumes(self):
        with slicer.util.tryWithErrorDisplay("Cannot compute the volumes.", waitCursor=True):
            table = self.logic.updateVolumesTable()
            self.ui.volumesTableView.setMRMLTableNode(table)

    def onSegmentEditor(self):
        p = self._parameterNode
        seg = p.segmentation
        source = p.displayedMap or p.rcbfVolume
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(seg)
        if source is not None:
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(source)
            else:  # Slicer < 5.4
                editor.setMasterVolumeNode(source)


#
# StrokeLesionLogic
#

class StrokeLesionLogic(ScriptedLoadableModuleLogic, lib.StrokeLesionLogic):
    """The module Logic: StrokeLesionLib.mrml.stroke_lesion_logic.StrokeLesionLogic on slicer.mrmlScene (or the
    given scene), with the typed parameter node of this module. See docs/slicer.md for scripting."""

    def __init__(self, scene=None):
        ScriptedLoadableModuleLogic.__init__(self)
        lib.StrokeLesionLogic.__init__(self, scene)

    def getParameterNode(self):
        return StrokeLesionParameterNode(self.parameterNode())


#
# StrokeLesionTest
#

class StrokeLesionTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test, or ctest): maps -> segments -> volumes -> edit -> safe re-run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_StrokeLesion_workflow()

    def test_StrokeLesion_workflow(self):
        import numpy as np
        from AIFSelectorLib.mrml.aif_selector_logic import AIFSelectorLogic
        from AIFSelectorLib.phantom.case import make_phantom

        self.delayDisplay("Phantom, AIF and maps")
        case = make_phantom(seed=3, shape_zyx=(4, 64, 64), n_frames=30)
        aif = AIFSelectorLogic(slicer.mrmlScene)
        aif.addSeries(case.series, "Phantom CTP")
        aif.selectInputFunctions("classic")
        aif.computeMaps()

        self.delayDisplay("Segments")
        logic = StrokeLesionLogic()
        self.assertTrue(logic.setInputsFromAIFSelector())
        logic.updatePreview()
        seg = logic.run()
        core, penumbra = logic.computeMasks()
        self.assertTrue(np.array_equal(logic.segmentMask(seg, "core"), core))
        self.assertTrue(np.array_equal(logic.segmentMask(seg, "penumbra"), penumbra))
        self.assertEqual(logic.editedSegments(seg), [])
        volumes = logic.volumesFromTable()
        self.assertIn("Core", volumes)

        self.delayDisplay("An edited segment survives a re-run")
        segmentation = seg.GetSegmentation()
        segmentation.RemoveSegment(segmentation.GetSegmentIdBySegmentName("Penumbra"))
        self.assertTrue(logic.editedSegments(seg))
        seg2 = logic.run()
        self.assertIsNot(seg2, seg)
        self.assertIsNone(logic.segmentMask(seg, "penumbra"))
        self.delayDisplay("Test passed")
