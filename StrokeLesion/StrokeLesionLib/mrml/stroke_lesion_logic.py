"""The StrokeLesion module's Logic on MRML nodes, without GUI: what the Widget calls and what the Slicer
Python console scripts.

Perfusion maps (from AIFSelector) -> rCBF and Tmax thresholds with a live preview labelmap -> one
segmentation node with the segments Core, Penumbra and Lesion (model) (standard colours, DICOM/SNOMED
terminology, ready for the Segment Editor) -> a table of volumes (ml) and mismatch.

Re-running never throws away a user's edits: each segment carries, in a segment tag, the SHA-256 of the
mask it was created with; when a re-run finds a segment whose mask no longer matches (painted, erased,
deleted, or another segment added), the new result goes into a new segmentation node unless the caller
passes ``overwrite_edited=True`` (the Widget asks the user first).

Parameters live in the module's parameter node (module name ``StrokeLesion``) with the serialisation of
Slicer's parameterNodeWrapper, so a saved scene reopens with the same thresholds and nodes.

GUI-free: imports ``slicer`` (vtkMRML classes) only, never Qt, ``slicer.app`` or ScriptedLoadableModule.
"""
import hashlib
import json
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import slicer
import vtk

from AIFSelectorLib.mrml import conversion as mc
from AIFSelectorLib.mrml.aif_selector_logic import MODULE_NAME as AIF_MODULE_NAME, AIFSelectorLogic
from AIFSelectorLib.constants import CORE_RCBF, TMAX_THRESHOLD_S
from AIFSelectorLib.ctp_series import VolumeGeometry
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.mrml.scene import ParameterNodeLogic, find_parameter_node

from AIFSelectorLib.thresholds.decision import MIN_ISLAND_ML, Thresholds, decide, lesion_volumes

MODULE_NAME = "StrokeLesion"

LESION_MODEL_CHOICES = ("none", "pseudodwi")

PARAMETERS = {
    "coreRCBF": CORE_RCBF,
    "tmaxThreshold": TMAX_THRESHOLD_S,
    "minIslandML": MIN_ISLAND_ML,
    "lesionModel": "none",
    "previewEnabled": True,
    "useCPU": False,
    "statusMessage": "",
}
NODE_PARAMETERS = ("rcbfVolume", "tmaxVolume", "tissueMask", "inputSequence", "segmentation",
                   "volumesTable", "previewVolume", "displayedMap")

HASH_TAG = "StrokeLesion.MaskHash"
ROLE_TAG = "StrokeLesion.Role"
SETTINGS_TAG = "StrokeLesion.Settings"

_BRAIN = "Anatomic codes - DICOM master list~SCT^12738006^Brain~^^"
_CONTEXT = "Segmentation category and type - DICOM master list"
_ALTERED = "SCT^49755003^Morphologically Altered Structure"

SEGMENTS = {
    # role: (segment name, colour RGB 0..1, terminology entry, preview label value)
    "core": ("Core", (0.86, 0.08, 0.24), f"{_CONTEXT}~{_ALTERED}~SCT^55641003^Infarct~^^~{_BRAIN}", 1),
    "penumbra": ("Penumbra", (0.20, 0.80, 0.20), f"{_CONTEXT}~{_ALTERED}~SCT^52674009^Ischemia~^^~{_BRAIN}", 2),
    "lesion": ("Lesion (model)", (1.00, 0.84, 0.00), f"{_CONTEXT}~{_ALTERED}~SCT^52988006^Lesion~^^~{_BRAIN}", 3),
}
"""Core: infarct (red), Penumbra: ischaemic tissue at risk (green), Lesion (model): the deep model's
lesion (yellow); terminology ``context~category~type~modifier~anatomic context~region~modifier``."""

SEGMENTATION_NAME = "Stroke lesion"

def mask_hash(mask: np.ndarray) -> str:
    """SHA-256 of a boolean mask and its shape: what a segment looked like when this module wrote it."""
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    h = hashlib.sha256(repr(m.shape).encode())
    h.update(np.packbits(m.ravel()).tobytes())
    return h.hexdigest()


def _oriented_image(mask: np.ndarray, geometry: VolumeGeometry):
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(mc.image_data_from_array(np.asarray(mask, dtype=np.uint8)))
    image.SetImageToWorldMatrix(mc._vtk_matrix(mc.ijk_to_ras(geometry)))
    return image


class StrokeLesionLogic(ParameterNodeLogic):
    """StrokeLesion on a scene (default ``slicer.mrmlScene``). See the module doc and docs/slicer.md."""

    moduleName = MODULE_NAME

    parameters = PARAMETERS

    def thresholds(self) -> Thresholds:
        return Thresholds(self.getParameter("coreRCBF"), self.getParameter("tmaxThreshold"),
                          self.getParameter("minIslandML"))

    def setThresholds(self, core_rcbf: Optional[float] = None, tmax_s: Optional[float] = None,
                      min_island_ml: Optional[float] = None) -> None:
        p = self.parameterNode()
        was = p.StartModify()
        if core_rcbf is not None:
            self.setParameter("coreRCBF", core_rcbf)
        if tmax_s is not None:
            self.setParameter("tmaxThreshold", tmax_s)
        if min_island_ml is not None:
            self.setParameter("minIslandML", min_island_ml)
        p.EndModify(was)

    # ------------------------------------------------------------------------------------------ inputs

    def setInputsFromAIFSelector(self) -> bool:
        """Takes rCBF, Tmax, the tissue mask and the CTP sequence from AIFSelector's parameter node in the
        same scene. Returns True when the maps were found."""
        aif_node = find_parameter_node(self.scene, AIF_MODULE_NAME)
        if aif_node is None:
            return False
        p = self.parameterNode()
        was = p.StartModify()
        for mine, theirs in (("rcbfVolume", "rcbfVolume"), ("tmaxVolume", "tmaxVolume"),
                             ("tissueMask", "tissueMask"), ("inputSequence", "inputSequence")):
            node = aif_node.GetNodeReference(theirs)
            if node is not None:
                self.setNode(mine, node)
        p.EndModify(was)
        return self.getNode("rcbfVolume") is not None and self.getNode("tmaxVolume") is not None

    def referenceGeometry(self) -> Tuple[VolumeGeometry, Tuple[int, int, int]]:
        rcbf = self.getNode("rcbfVolume")
        if rcbf is None or rcbf.GetImageData() is None:
            raise InputError("no rCBF map: compute the perfusion maps in AIFSelector first")
        return mc.node_geometry(rcbf), tuple(reversed(rcbf.GetImageData().GetDimensions()))

    def mapArrays(self) -> Dict[str, np.ndarray]:
        """rCBF, Tmax and the tissue mask as (z, y, x) arrays on one grid (checked)."""
        rcbf_node, tmax_node = self.getNode("rcbfVolume"), self.getNode("tmaxVolume")
        if rcbf_node is None or tmax_node is None:
            raise InputError("select the rCBF and Tmax maps (compute them in AIFSelector first)")
        rcbf, tmax = mc.array_from_volume(rcbf_node), mc.array_from_volume(tmax_node)
        ref = mc.node_ijk_to_ras(rcbf_node)
        if tmax.shape != rcbf.shape or not np.allclose(mc.node_ijk_to_ras(tmax_node), ref, atol=1e-4):
            raise InputError("the rCBF and Tmax maps lie on different grids")
        tissue_node = self.getNode("tissueMask")
        if tissue_node is not None and tissue_node.GetImageData() is not None:
            tissue = mc.array_from_volume(tissue_node) > 0
            if tissue.shape != rcbf.shape:
                raise InputError("the tissue mask lies on another grid than the maps")
        else:
            tissue = (rcbf > 0) | (tmax > 0)
        return {"rcbf": rcbf, "tmax": tmax, "tissue": tissue}

    # ----------------------------------------------------------------------------- thresholds, preview

    def computeMasks(self, thresholds: Optional[Thresholds] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Core and penumbra (z, y, x) bool from the maps and the thresholds (parameter node by default)."""
        maps = self.mapArrays()
        geometry, _ = self.referenceGeometry()
        return decide(maps["rcbf"], maps["tmax"], maps["tissue"], geometry.voxel_volume_ml,
                      thresholds or self.thresholds())

    def updatePreview(self, thresholds: Optional[Thresholds] = None) -> Dict[str, Optional[float]]:
        """Live preview of the thresholds: a labelmap (1 core, 2 penumbra) shown as the label layer of the
        slice views. Returns the volumes it shows (ml)."""
        core, penumbra = self.computeMasks(thresholds)
        geometry, _ = self.referenceGeometry()
        labels = np.zeros(core.shape, np.uint8)
        labels[penumbra] = SEGMENTS["penumbra"][3]
        labels[core] = SEGMENTS["core"][3]
        node = mc.volume_from_array(self.scene, labels, geometry, "Stroke lesion preview",
                                    self.getNode("previewVolume"), "vtkMRMLLabelMapVolumeNode")
        node.GetDisplayNode().SetAndObserveColorNodeID(self.colorTable().GetID())
        self.setNode("previewVolume", node)
        self.showPreview(self.getParameter("previewEnabled"))
        return lesion_volumes(core, penumbra, geometry.voxel_volume_ml)

    def showPreview(self, visible: bool = True) -> None:
        node = self.getNode("previewVolume")
        scene = self.scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            c = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            c.SetLabelVolumeID(node.GetID() if (visible and node is not None) else None)
            c.SetLabelOpacity(0.5)

    def colorTable(self):
        """The colour table of the preview labelmap (0 background, 1 Core, 2 Penumbra, 3 Lesion (model))."""
        scene = self.scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
            n = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
            if n.GetAttribute("StrokeLesion.ColorTable") == "1":
                return n
        table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Stroke lesion colours")
        table.SetTypeToUser()
        table.SetNumberOfColors(4)
        table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        for role, (name, rgb, _, value) in SEGMENTS.items():
            table.SetColor(value, name, rgb[0], rgb[1], rgb[2], 1.0)
        table.SetAttribute("StrokeLesion.ColorTable", "1")
        return table

    # ------------------------------------------------------------------------------------- lesion model

    def lesionModelInputs(self):
        """(series or None, maps) for a lesion model, read from the scene (main thread): rCBF, Tmax and the
        tissue mask, plus CBF, CBV and MTT when AIFSelector computed them on the same grid."""
        aif_logic = AIFSelectorLogic(self.scene)
        series = aif_logic.inputSeries() if self.getNode("inputSequence") is not None else None
        maps = self.mapArrays()
        for key in ("cbf", "cbv", "mtt"):
            node = aif_logic.mapVolume(key)
            if node is not None and node.GetImageData() is not None:
                array = mc.array_from_volume(node)
                if array.shape == maps["rcbf"].shape:
                    maps[key] = array
        return series, maps

    @staticmethod
    def computeLesion(name: str, series, maps: Dict[str, np.ndarray], device: Optional[str] = None) -> Optional[np.ndarray]:
        """Pure (worker-thread safe): the lesion model ``name``'s mask on the maps' grid, None for 'none'."""
        if name in ("", "none"):
            return None
        function = _builtin_lesion_model(name)
        if function is None:
            raise InputError(f"the lesion model {name!r} is not available in this installation")
        mask = np.asarray(function(series, maps, device), dtype=bool)
        if mask.shape != maps["rcbf"].shape:
            raise InputError(f"the lesion model returned shape {mask.shape}, the maps are {maps['rcbf'].shape}")
        return mask

    def runLesionModel(self, name: Optional[str] = None, device: Optional[str] = None) -> Optional[np.ndarray]:
        """The chosen deep lesion model's mask (z, y, x) bool on the maps' grid, or None for 'none'."""
        name = name or self.getParameter("lesionModel")
        if name in ("", "none"):
            return None
        series, maps = self.lesionModelInputs()
        return self.computeLesion(name, series, maps, device)

    # ------------------------------------------------------------------------------------- map display

    def showMap(self, node=None) -> None:
        """Shows a map (default: the displayedMap parameter, else rCBF) as background of the slice views."""
        if node is not None:
            self.setNode("displayedMap", node)
        node = node or self.getNode("displayedMap") or self.getNode("rcbfVolume")
        if node is None:
            return
        scene = self.scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            c = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            if c.GetLayoutName() in ("Red", "Yellow", "Green"):
                c.SetBackgroundVolumeID(node.GetID())
                c.SetForegroundVolumeID(None)

    # ------------------------------------------------------------------------------------ segmentation

    def segment(self, core: Optional[np.ndarray] = None, penumbra: Optional[np.ndarray] = None,
                lesion: Optional[np.ndarray] = None, overwrite_edited: bool = False):
        """Core / Penumbra (and Lesion (model) when a lesion mask is given) into the module's segmentation.

        core, penumbra: masks on the maps' grid (default: thresholds on the maps). If the current
        segmentation holds segments a user edited, a new segmentation node receives the result (the old
        one stays as it is) unless ``overwrite_edited``. Returns the segmentation node that holds the result.
        """
        if core is None or penumbra is None:
            core, penumbra = self.computeMasks()
        geometry, shape = self.referenceGeometry()
        for m in (core, penumbra, lesion):
            if m is not None and tuple(m.shape) != tuple(shape):
                raise InputError(f"a mask of shape {m.shape} does not fit the maps' grid {shape}")
        seg = self.getNode("segmentation")
        if seg is not None and self.editedSegments(seg) and not overwrite_edited:
            seg = None
        if seg is None:
            seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                               self.scene.GenerateUniqueName(SEGMENTATION_NAME))
            seg.CreateDefaultDisplayNodes()
        rcbf = self.getNode("rcbfVolume")
        seg.SetReferenceImageGeometryParameterFromVolumeNode(rcbf)
        seg.SetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole(), rcbf.GetID())
        settings = json.dumps({"coreRCBF": self.getParameter("coreRCBF"),
                               "tmaxThreshold": self.getParameter("tmaxThreshold"),
                               "minIslandML": self.getParameter("minIslandML"),
                               "lesionModel": self.getParameter("lesionModel")})
        masks = {"core": core, "penumbra": penumbra, "lesion": lesion}
        for role, mask in masks.items():
            if mask is None:
                continue
            self._setSegment(seg, role, np.asarray(mask, bool), geometry, settings)
        self.setNode("segmentation", seg)
        self.updateVolumesTable(seg)
        return seg

    def _segmentId(self, seg, role: str) -> Optional[str]:
        segmentation = seg.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(i)
            if _tag(segmentation.GetSegment(segment_id), ROLE_TAG) == role:
                return segment_id
        return None

    def _setSegment(self, seg, role: str, mask: np.ndarray, geometry: VolumeGeometry, settings: str) -> str:
        name, color, terminology, _ = SEGMENTS[role]
        image = _oriented_image(mask, geometry)
        segmentation = seg.GetSegmentation()
        segment_id = self._segmentId(seg, role)
        if segment_id is None:
            segment_id = seg.AddSegmentFromBinaryLabelmapRepresentation(image, name, list(color))
        else:
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                image, seg, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        segment = segmentation.GetSegment(segment_id)
        segment.SetName(name)
        segment.SetColor(*color)
        if hasattr(segment, "SetTerminology"):
            segment.SetTerminology(terminology)
        else:  # Slicer < 5.8
            segment.SetTag(segment.GetTerminologyEntryTagName(), terminology)
        segment.SetTag(ROLE_TAG, role)
        segment.SetTag(HASH_TAG, mask_hash(mask))
        segment.SetTag(SETTINGS_TAG, settings)
        return segment_id

    def segmentMask(self, seg=None, role: str = "core") -> Optional[np.ndarray]:
        """The current mask (z, y, x) bool of the segment with ``role`` ('core', 'penumbra', 'lesion') on the
        maps' grid, or None when the segmentation has no such segment."""
        seg = seg or self.getNode("segmentation")
        segment_id = None if seg is None else self._segmentId(seg, role)
        if segment_id is None:
            return None
        return self._exportMask(seg, segment_id)

    def _exportMask(self, seg, segment_id: str) -> np.ndarray:
        """The segment's voxels on the maps' grid (no node is added to the scene)."""
        geometry, shape = self.referenceGeometry()
        source = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(seg, segment_id, source)
        out = np.zeros(shape, bool)
        extent = source.GetExtent()
        if source.GetPointData().GetScalars() is None or extent[0] > extent[1]:
            return out
        reference = _oriented_image(np.zeros(shape, np.uint8), geometry)
        resampled = slicer.vtkOrientedImageData()
        if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                source, reference, resampled, False, True):
            raise RuntimeError(f"could not resample segment {segment_id} to the maps' grid")
        # a shared labelmap layer holds several segments: this one is its label value
        label = seg.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        values = mc.array_from_image_data(resampled) == label
        e = resampled.GetExtent()
        lo = np.array([e[4], e[2], e[0]])
        src = tuple(slice(max(0, -l), min(n, s - l)) for l, n, s in zip(lo, values.shape, shape))
        dst = tuple(slice(max(0, l), max(0, l) + (sl.stop - sl.start)) for l, sl in zip(lo, src))
        out[dst] = values[src]
        return out

    def editedSegments(self, seg=None) -> List[str]:
        """Names of this module's segments that no longer hold what it wrote (edited or deleted), plus
        segments a user added; empty when a re-run may safely replace the segmentation's content."""
        seg = seg or self.getNode("segmentation")
        if seg is None:
            return []
        segmentation = seg.GetSegmentation()
        edited, roles = [], set()
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(i)
            segment = segmentation.GetSegment(segment_id)
            role = _tag(segment, ROLE_TAG)
            if role not in SEGMENTS:
                edited.append(segment.GetName())
                continue
            roles.add(role)
            if _tag(segment, HASH_TAG) != mask_hash(self._exportMask(seg, segment_id)):
                edited.append(segment.GetName())
        for role in ("core", "penumbra"):
            if role not in roles:
                edited.append(SEGMENTS[role][0] + " (deleted)")
        return edited

    # ------------------------------------------------------------------------------------------ volumes

    def volumes(self, seg=None) -> Dict[str, Optional[float]]:
        """Core, penumbra, hypoperfused and mismatch volumes (ml) and the mismatch ratio, from the current
        segments (user edits included); 'lesion_ml' when the segmentation has a Lesion (model) segment."""
        seg = seg or self.getNode("segmentation")
        geometry, shape = self.referenceGeometry()
        core = self.segmentMask(seg, "core")
        penumbra = self.segmentMask(seg, "penumbra")
        core = np.zeros(shape, bool) if core is None else core
        penumbra = np.zeros(shape, bool) if penumbra is None else penumbra
        out = lesion_volumes(core, penumbra & ~core, geometry.voxel_volume_ml)
        lesion = self.segmentMask(seg, "lesion")
        if lesion is not None:
            out["lesion_ml"] = round(float(np.count_nonzero(lesion)) * geometry.voxel_volume_ml, 2)
        return out

    def updateVolumesTable(self, seg=None):
        """The volumes table node (Measure, Value, Unit) from the current segments."""
        v = self.volumes(seg)
        rows = [("Core", v["core_ml"], "ml"), ("Penumbra", v["penumbra_ml"], "ml"),
                ("Hypoperfused (Tmax)", v["hypoperfused_ml"], "ml"),
                ("Mismatch volume", v["mismatch_volume_ml"], "ml"),
                ("Mismatch ratio", v["mismatch_ratio"], "")]
        if "lesion_ml" in v:
            rows.append(("Lesion (model)", v["lesion_ml"], "ml"))
        node = self.getNode("volumesTable")
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "Stroke lesion volumes")
        table = vtk.vtkTable()
        measure, value, unit = vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray()
        measure.SetName("Measure")
        value.SetName("Value")
        unit.SetName("Unit")
        for m, x, u in rows:
            measure.InsertNextValue(m)
            value.InsertNextValue(np.nan if x is None else float(x))
            unit.InsertNextValue(u)
        for arr in (measure, value, unit):
            table.AddColumn(arr)
        node.SetAndObserveTable(table)
        node.SetLocked(True)
        self.setNode("volumesTable", node)
        return node

    def volumesFromTable(self, node=None) -> Dict[str, float]:
        """The volumes table as {measure: value}."""
        node = node or self.getNode("volumesTable")
        t = node.GetTable()
        out = {}
        for r in range(t.GetNumberOfRows()):
            out[t.GetValueByName(r, "Measure").ToString()] = float(t.GetValueByName(r, "Value").ToDouble())
        return out

    # ------------------------------------------------------------------------------------------- all

    def run(self, overwrite_edited: bool = False, device: Optional[str] = None,
            progress: Callable = lambda f, m="": None):
        """Thresholds (+ the chosen lesion model) -> segmentation and volumes table. Returns the node."""
        progress(0.0, "core and penumbra")
        core, penumbra = self.computeMasks()
        progress(0.3, "lesion model")
        lesion = self.runLesionModel(device=device)
        progress(0.8, "segments")
        seg = self.segment(core, penumbra, lesion, overwrite_edited=overwrite_edited)
        progress(1.0, "done")
        return seg


def _tag(segment, name: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def _builtin_lesion_model(name: str) -> Optional[Callable]:
    """The shipped CTP lesion model ('pseudodwi': pseudo-DWI synthesis + SLNet) as a callable
    (series, maps, device) -> (z, y, x) bool mask;
    torch and the network are imported only when it runs. The perfusion maps shown in the scene are used
    when all four (CBF, CBV, MTT, Tmax) are there, else the pipeline computes them from the series."""
    if name != "pseudodwi":
        return None

    def pseudodwi(series, maps: Dict[str, np.ndarray], device: Optional[str] = None) -> np.ndarray:
        from StrokeLesionLib.lesion_models.registry import segment
        if series is None:
            raise InputError("the pseudo-DWI model needs the CTP sequence (select it in AIFSelector)")
        needed = ("cbf", "cbv", "mtt", "tmax")
        given = {k: maps[k] for k in needed} if all(k in maps for k in needed) else None
        mask, _, _ = segment("pseudodwi", {"series": series, "maps": given}, device or "auto")
        return mask & maps["tissue"] if "tissue" in maps else mask  # not in vessels the maps left out

    return pseudodwi


__all__ = ["StrokeLesionLogic", "SEGMENTS", "PARAMETERS", "NODE_PARAMETERS", "mask_hash"]
