"""One case under review in the web app, on an MRML scene, through the Logic the Slicer modules use.

The web layer holds no science: every step here calls AIFSelectorLogic (load, AIF/VOF selection by the
one policy, Pvol overlay, picking voxels, maps) or StrokeLesionLogic (thresholds, preview, segments,
volumes), and the export goes through the command line's own report and output-folder code.

Long steps come in two halves, so that the app can run the first on a worker thread (cancellable through
``progress``) while the MRML scene is only touched on the server's main thread:
``compute_*`` is pure (arrays in, arrays out), ``apply_*`` puts the result into the scene.

GUI-free: imports ``slicer`` (vtkMRML classes) through the Logic classes, never trame or Qt.
"""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from AIFSelectorLib.deconvolution import UNCERTAINTY_NAMES
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.input_functions.functions import InputFunctions
from AIFSelectorLib.mrml import conversion as mc
from AIFSelectorLib.mrml.aif_selector_logic import AIFSelectorLogic
from AIFSelectorLib.thresholds.decision import hypoperfusion_intensity_ratio, lesion_volumes

from StrokeLesionLib.mrml.stroke_lesion_logic import StrokeLesionLogic

Progress = Callable[[float, str], None]

SELECTORS = ("auto", "aifnet", "classic")
"""The AIF/VOF selectors the page offers: the policy's names ('auto' is AIFNet, classic as fallback)."""

LESION_MODELS = ("none", "pseudodwi")


def _noop(fraction: float, message: str = "") -> None:
    pass


@dataclass
class Timings:
    """Seconds of each step of this session, for report.json (same keys as `strokelesion run`)."""

    seconds: Dict[str, float] = field(default_factory=dict)

    def add(self, key: str, t0: float) -> None:
        self.seconds[key] = round(time.perf_counter() - t0, 3)


class ReviewSession:
    """The case of one web app: a CTP series, its input functions, maps, thresholds and segments.

    scene: the app's vtkMRMLScene (with its Sequences logic registered, see mrml.scene.AdoptedScene).
    A new case (``load_series``) starts on fresh Logic objects; the caller clears the scene first.
    """

    def __init__(self, scene):
        self.scene = scene
        self.aif = AIFSelectorLogic(scene)
        self.lesion = StrokeLesionLogic(scene)
        self.source = ""
        self.note = ""
        self.perfusion = None
        self.timings = Timings()

    # ---------------------------------------------------------------------------------------------- case

    @property
    def loaded(self) -> bool:
        return self.aif.getNode("inputSequence") is not None

    def load_series(self, series, name: str, source: str, note: str = ""):
        """Puts a CTP series (uniform frames) into the scene as a volume sequence; returns the proxy volume.
        A session holds one case: load it into a new session (on a cleared scene)."""
        self.source, self.note = source, note
        self.aif.addSeries(series, name)
        return self.aif.inputProxyVolume()

    def series(self):
        return self.aif.inputSeries()

    def frame_times_s(self) -> np.ndarray:
        return self.series().times_s

    def set_frame(self, index: int) -> float:
        """Shows frame ``index`` (0-based); returns its time (s)."""
        browser = self.aif.inputBrowser()
        times = self.frame_times_s()
        index = int(np.clip(index, 0, len(times) - 1))
        browser.SetSelectedItemNumber(index)
        return float(times[index])

    # ------------------------------------------------------------------------------- input functions

    def compute_input_functions(self, selector: str, device: Optional[str],
                                progress: Progress = _noop) -> InputFunctions:
        """Pure: AIF and VOF by the one selection policy ('auto', 'aifnet', 'classic')."""
        if selector not in SELECTORS:
            raise InputError(f"unknown AIF selector {selector!r}: use one of {', '.join(SELECTORS)}")
        t0 = time.perf_counter()
        prepared = self.aif.prepared(self.series())
        self.timings.add("prepare", t0)
        t0 = time.perf_counter()
        functions = self.aif.computeInputFunctions(prepared, selector, device, progress)
        self.timings.add("input_functions", t0)
        return functions

    def run_folder_functions(self, folder: Path, progress: Progress = _noop) -> InputFunctions:
        """Pure: the input functions a `strokelesion run` folder used (aif.csv, on this series' frames), with
        its Pvol volumes when it holds them."""
        from AIFSelectorLib.io.volume_io import read_volume
        from AIFSelectorLib.input_functions.policy import select_input_functions
        prepared = self.aif.prepared(self.series())
        functions = select_input_functions(prepared, str(folder / "aif.csv"), None, progress)
        for kind in ("aif", "vof"):
            path = folder / f"{kind}_pvol.nii.gz"
            if path.is_file():
                pvol, geometry = read_volume(path)
                if pvol.shape == prepared.series.shape_zyx and geometry.matches(prepared.series.geometry):
                    setattr(functions, f"{kind}_pvol", pvol.astype(np.float32))
        return functions

    def apply_input_functions(self, functions: InputFunctions, selector: str) -> None:
        """Main thread: the functions of compute_input_functions ('auto', 'aifnet', 'classic') or of
        run_folder_functions ('file') become the automatic curves, with their Pvol volumes."""
        if selector in SELECTORS:
            self.aif.setParameter("selector", "aifnet" if selector == "auto" else selector)
        self.aif.setInputFunctions(functions, automatic=True)

    def show_pvol(self, overlay: str, opacity: float) -> None:
        """'AIF', 'VOF' or 'None' over the CTP with ``opacity`` (0..1)."""
        if overlay not in ("AIF", "VOF", "None"):
            raise InputError(f"unknown overlay {overlay!r}: AIF, VOF or None")
        self.aif.showPvol(overlay, opacity)

    def pvol_peak_ras(self, overlay: str) -> Optional[List[float]]:
        """RAS (mm) of the voxel of highest probability of the 'AIF' or 'VOF' Pvol (where the selection
        looked), or None."""
        node = self.aif.getNode(f"{overlay.lower()}PvolVolume") if overlay in ("AIF", "VOF") else None
        if node is None:
            return None
        pvol = mc.array_from_volume(node)
        if not np.any(pvol > 0):
            return None
        zyx = np.unravel_index(int(np.argmax(pvol)), pvol.shape)
        return [float(x) for x in mc.zyx_to_ras([zyx], self.series().geometry)[0]]

    def curves(self) -> Dict[str, List[float]]:
        """The curves a page plots, HU against s: time_s, aif_hu, vof_hu (active), aif_auto_hu,
        vof_auto_hu, tissue_hu (under the cursor); NaN as None. Empty before a selection."""
        if self.aif.getNode("curvesTable") is None:
            return {}
        return {k: [None if not np.isfinite(x) else round(float(x), 3) for x in v]
                for k, v in self.aif.curves().items()}

    def aif_source(self) -> str:
        """'automatic' or 'corrected'."""
        return self.aif.getParameter("aifSource") or "automatic"

    def tissue_curve_at(self, ras) -> bool:
        """The voxel under RAS ``ras`` (mm) into the tissue curve; False outside the volume."""
        if self.aif.getNode("curvesTable") is None:
            return False
        return self.aif.updateTissueCurveAtRAS(ras) is not None

    def pick_list(self, kind: str):
        """The markups point list that clicks add to: 'artery' or 'vein'. The curves follow each point."""
        if kind not in ("artery", "vein"):
            raise InputError(f"unknown pick {kind!r}: artery or vein")
        if self.aif.getNode("curvesTable") is None:
            raise InputError("select the AIF first: the picks correct an automatic selection")
        node = self.aif.getOrCreateMarkups(kind)
        self.aif.setAutoUpdate(True)
        return node

    def picked_counts(self) -> Dict[str, int]:
        out = {}
        for kind in ("artery", "vein"):
            out[kind] = 0 if self.aif.getNode("curvesTable") is None else len(self.aif.pickedVoxels(kind))
        return out

    def set_radius(self, radius_vox: int) -> None:
        """In-plane neighbourhood (voxels) of a pick; re-corrects when points exist."""
        radius_vox = int(radius_vox)
        if not 0 <= radius_vox <= 5:
            raise InputError(f"neighbourhood radius {radius_vox} voxels is out of range 0..5")
        self.aif.setParameter("neighbourhoodRadius", radius_vox)
        if any(self.picked_counts().values()):
            self.aif.correctFromMarkups()

    def clear_picks(self) -> None:
        """Removes every picked point and goes back to the automatic curves."""
        for param in ("arteryMarkups", "veinMarkups"):
            node = self.aif.getNode(param)
            if node is not None:
                node.RemoveAllControlPoints()
        if self.aif.getNode("curvesTable") is not None:
            self.aif.useAutomatic()

    def use_automatic(self) -> None:
        self.aif.useAutomatic()

    # --------------------------------------------------------------------------------------------- maps

    def map_inputs(self):
        """Main thread: (prepared series, active input functions) for compute_maps."""
        if self.aif.getNode("curvesTable") is None:
            raise InputError("select the AIF first")
        return self.aif.prepared(self.series()), self.aif.inputFunctions()

    def compute_maps(self, inputs, method: str, device: Optional[str], progress: Progress = _noop):
        """Pure: perfusion maps of ``map_inputs()`` (the active, automatic or corrected, curves)."""
        prepared, functions = inputs
        t0 = time.perf_counter()
        perfusion = self.aif.computeMapArrays(prepared, functions, method, self.aif.getParameter("smoothMM"),
                                              self.lesion.thresholds().tmax_s, device, progress)
        self.timings.add("maps", t0)
        return perfusion

    def apply_maps(self, perfusion, method: str) -> None:
        self.aif.setParameter("method", method)
        self.aif.setMaps(perfusion)
        self.perfusion = perfusion
        self.lesion.setInputsFromAIFSelector()

    def map_nodes(self) -> Dict[str, object]:
        """The compare views' six maps, then the posterior SDs where the method gave them (their colour bars and
        values in the side panel and the data probe)."""
        nodes = {k: self.aif.mapVolume(k) for k in ("cbf", "cbv", "mtt", "tmax", "ttp", "rcbf")}
        sds = {k: self.aif.mapVolume(k) for k in UNCERTAINTY_NAMES}
        return {**nodes, **{k: n for k, n in sds.items() if n is not None}}

    # ------------------------------------------------------------------------ thresholds and segments

    def preview(self, core_rcbf: float, tmax_s: float) -> Dict[str, Optional[float]]:
        """The live preview labelmap of the rule with these thresholds; returns its volumes (ml)."""
        self.lesion.setThresholds(float(core_rcbf), float(tmax_s))
        return self.lesion.updatePreview()

    def lesion_inputs(self):
        """Main thread: (series, maps) for compute_lesion."""
        maps = self.lesion.mapArrays()
        if self.perfusion is not None:
            maps.update({k: self.perfusion.maps[k] for k in ("cbf", "cbv", "mtt")})
        return self.series(), maps

    def compute_lesion(self, model: str, inputs, device: Optional[str], progress: Progress = _noop):
        """Pure: the deep lesion model's mask on the maps' grid (None for 'none')."""
        if model not in LESION_MODELS:
            raise InputError(f"unknown lesion model {model!r}: use one of {', '.join(LESION_MODELS)}")
        if model == "none":
            return None
        progress(0.1, f"lesion model {model}")
        series, maps = inputs
        t0 = time.perf_counter()
        mask = StrokeLesionLogic.computeLesion(model, series, maps, device)
        self.timings.add("lesion_model", t0)
        return mask

    def apply_segments(self, lesion_mask: Optional[np.ndarray] = None, model: str = "none"):
        """Core and Penumbra from the thresholds (and Lesion (model)) into the segmentation. A segmentation a
        user edited is kept as it is; the result then goes into a new one. Returns (node, kept edited names)."""
        edited = self.lesion.editedSegments()
        self.lesion.setParameter("lesionModel", model)
        core, penumbra = self.lesion.computeMasks()
        node = self.lesion.segment(core, penumbra, lesion_mask)
        self.lesion.showPreview(False)
        return node, edited

    def segments_from_run_folder(self, folder: Path) -> None:
        """Core, Penumbra (and Lesion (model)) from a run folder's core/penumbra/lesion.nii.gz, as they are
        there (edits made before an export included)."""
        from AIFSelectorLib.io.volume_io import read_volume
        series = self.series()
        masks = {}
        for role in ("core", "penumbra", "lesion"):
            path = folder / f"{role}.nii.gz"
            if path.is_file():
                mask, geometry = read_volume(path)
                if mask.shape != series.shape_zyx or not geometry.matches(series.geometry):
                    raise InputError(f"{path.name} in {folder.name} lies on another grid than its CTP")
                masks[role] = mask > 0
        if "core" not in masks or "penumbra" not in masks:
            raise InputError(f"{folder.name} holds no core.nii.gz and penumbra.nii.gz")
        self.lesion.segment(masks["core"], masks["penumbra"], masks.get("lesion"))
        self.lesion.showPreview(False)

    def segmentation(self):
        return self.lesion.getNode("segmentation")

    def _segmentation_nodes(self) -> list:
        """The scene's segmentation nodes, in the order they were made."""
        nodes = self.scene.GetNodesByClass("vtkMRMLSegmentationNode")
        return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]

    def segmentation_names(self) -> List[str]:
        """Names of the scene's segmentations, in the order they were made (an edited one a recompute left
        aside among them)."""
        return [node.GetName() for node in self._segmentation_nodes()]

    def use_segmentation(self, name: str) -> None:
        """The segmentation named ``name`` becomes the one edited, measured and exported."""
        found = [node for node in self._segmentation_nodes() if node.GetName() == name]
        if not found:
            raise InputError(f"no segmentation named {name!r}")
        self.lesion.setNode("segmentation", found[0])

    def segment_id(self, role: str) -> Optional[str]:
        seg = self.segmentation()
        return None if seg is None else self.lesion._segmentId(seg, role)

    def volumes(self) -> Dict[str, Optional[float]]:
        """Volumes (ml) from the current segments, edits included; updates the module's volumes table."""
        self.lesion.updateVolumesTable()
        return self.lesion.volumes()

    # -------------------------------------------------------------------------------------------- export

    @staticmethod
    def run_folder_source(folder: Path) -> Path:
        """The CTP a `strokelesion run` folder was computed from (its report.json's input source: as given, or
        relative to the folder or to the folder's parent), or InputError naming it."""
        import json
        try:
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
            source = Path(report["input"]["source"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{folder.name}/report.json does not name its CTP ({e})") from None
        for candidate in (source, folder / source, folder.parent / source):
            if candidate.exists():
                return candidate
        raise InputError(f"the CTP of {folder.name} ({source}) is not found: open the CTP itself, or a scene.mrb")

    def case_result(self):
        """The pipeline's CaseResult of what the page shows now: the active curves, the maps, the segments as
        edited (core, penumbra, lesion) and their volumes."""
        from StrokeLesionLib.case.pipeline import CaseResult, RunOptions, uncertainty_ranges
        if self.perfusion is None or self.segmentation() is None:
            raise InputError("compute the maps and the segments before exporting")
        prepared = self.aif.prepared(self.series())
        core = self.lesion.segmentMask(role="core")
        penumbra = self.lesion.segmentMask(role="penumbra")
        shape = prepared.series.shape_zyx
        core = np.zeros(shape, bool) if core is None else core
        penumbra = (np.zeros(shape, bool) if penumbra is None else penumbra) & ~core
        voxel_ml = prepared.series.geometry.voxel_volume_ml
        volumes = {**lesion_volumes(core, penumbra, voxel_ml),
                   **hypoperfusion_intensity_ratio(self.perfusion.maps["tmax"], core | penumbra, voxel_ml)}
        functions = self.aif.inputFunctions()
        automatic = self.aif._last_automatic
        if automatic is not None:  # the Pvol volumes and the selector's details stay with the export
            functions.aif_pvol, functions.vof_pvol = automatic.aif_pvol, automatic.vof_pvol
            functions.details = {**automatic.details, **functions.details}
            functions.warnings = list(automatic.warnings)
        selector = self.aif.getParameter("selector")
        options = RunOptions(aif=selector, method=self.aif.getParameter("method"),
                             thresholds=self.lesion.thresholds(),
                             lesion_model=self.lesion.getParameter("lesionModel"))
        result = CaseResult(prepared, functions, self.perfusion, core, penumbra, volumes,
                            dict(self.timings.seconds), options,
                            volume_ranges=uncertainty_ranges(self.perfusion, voxel_ml, options.thresholds))
        lesion = self.lesion.segmentMask(role="lesion")
        if lesion is not None:
            result.lesion = lesion
            result.lesion_info = {"lesion_ml": round(float(lesion.sum()) * voxel_ml, 2), "edited_in": "web app"}
        return result

    def export(self, folder, overwrite: bool = False) -> List[str]:
        """report.json, report.png, the maps, masks and curves of `strokelesion run`, and scene.mrb (the whole
        scene, for the Slicer modules) into the new folder ``folder``, installed whole or not at all.
        Returns the file names written."""
        from AIFSelectorLib.mrml.scene import standalone_for
        from AIFSelectorLib import __version__
        from StrokeLesionLib.case.output_folder import claimed_output
        from StrokeLesionLib.case.pipeline import report_dict, write_outputs
        result = self.case_result()
        report = report_dict(result, self.source, self.note)
        report["aif"]["source"] = self.aif_source()
        report["edited_segments"] = self.lesion.editedSegments()
        env = standalone_for(self.scene)
        with claimed_output(folder, overwrite, command="strokelesion serve: export",
                            version=__version__) as stage:
            write_outputs(result, stage.path, report)
            env.save_bundle(stage.path / "scene.mrb")
        return sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))


def view_xy_to_ras(slice_node) -> List[float]:
    """The slice view's XY (pixels, origin bottom left) to RAS (mm) matrix, row-major 16 values."""
    return [float(x) for x in mc._as_array(slice_node.GetXYToRAS()).ravel()]
