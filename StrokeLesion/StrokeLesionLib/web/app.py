"""The StrokeLesion web app: a radiologist's CTP review in a browser, on trame-slicer.

Slicer's own slice views, markups and segment editor (trame-slicer, on slicer-core) show a
:class:`~StrokeLesionLib.web.session.ReviewSession`, which does every step through the Logic the Slicer
modules use. This module only binds page state to that session: what the page shows (state keys are
listed in :data:`STATE_DEFAULTS`) and what each control calls. The page itself is built in ``page.py``.

One app serves one case to every browser tab that opens it (trame shares one state): it is a
single-reader review tool, started per case (``strokelesion serve``), bound to 127.0.0.1 by default.
"""
import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from AIFSelectorLib.constants import CORE_RCBF, TMAX_THRESHOLD_S
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.mrml.display import COMPARE_VIEWS
from AIFSelectorLib.mrml.scene import AdoptedScene

from StrokeLesionLib.web.curves_plot import curves_svg
from StrokeLesionLib.web.map_display import (REVIEW_VIEW, add_color_legends, map_legend, probe_text,
                                             remove_color_legends, review_layouts)
from StrokeLesionLib.web.session import ReviewSession, view_xy_to_ras
from StrokeLesionLib.web.tasks import TaskRunner
from StrokeLesionLib.web.uploads import DEFAULT_MAX_UPLOAD_MB, save_upload, upload_size_message

log = logging.getLogger("strokelesion.web")

SEGMENT_ROLES = ("core", "penumbra", "lesion")

STATE_DEFAULTS = {
    "case_name": "", "case_loaded": False, "source_info": "",
    "n_frames": 1, "frame_index": 0, "frame_time_s": 0.0,
    "selector": "auto", "pvol_overlay": "AIF", "pvol_opacity": 0.6,
    "curves": {}, "curves_svg": curves_svg({}), "aif_source": "automatic", "input_functions_ready": False,
    "pick_mode": "none", "radius_vox": 1, "picked": {"artery": 0, "vein": 0},
    "method": "osvd", "maps_ready": False, "maps_summary": {}, "layout": "review", "map_legend": [],
    "core_rcbf": CORE_RCBF, "tmax_s": TMAX_THRESHOLD_S, "preview_volumes": {},
    "lesion_model": "none", "segments_ready": False, "segment_role": "core", "segment_tool": "none",
    "brush_mm": 10.0, "volumes": {}, "segmentation_name": "", "segmentation_names": [],
    "exports": [], "upload_files": None, "upload_key": 0, "max_upload_mb": 0.0,
    "busy": False, "progress": 0, "progress_text": "", "status_message": "", "error_message": "",
    "probe": "", "view_xy_to_ras": {},
}


class StrokeLesionWebApp:
    """The app on a trame server: ``StrokeLesionWebApp(server, source).server.start(...)``.

    source: a CTP (anything `strokelesion run` reads), a scene bundle (.mrb), a `run`/export folder holding
    scene.mrb, or None (upload one from the page). exports_dir: where exports are written; the page offers
    their report.json, report.png and scene.mrb from copies in a private folder (served at /exports), so
    nothing else of exports_dir is ever served. device: 'cpu', 'cuda' or None (the CPU; `serve --device auto`
    gives 'cuda' when present).
    """

    def __init__(self, server, source: Optional[str] = None, exports_dir: Optional[Path] = None,
                 device: Optional[str] = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
        import slicer
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = server
        self.state = server.state
        self.device = device
        self.max_upload_mb = max_upload_mb
        self.work_folder = Path(tempfile.mkdtemp(prefix="strokelesion-web-"))  # removed by close()
        self._closed = False
        self.upload_root = self.work_folder / "uploads"
        self.upload_root.mkdir()
        self.exports_dir = Path(exports_dir) if exports_dir else self.work_folder / "exports"
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        self.served_dir = self.work_folder / "served"  # what /exports serves: copies of the exports' downloads only
        self.served_dir.mkdir()
        server.enable_module({"serve": {"exports": str(self.served_dir)}})

        self.slicer_app = SlicerApp()
        sequences = self.slicer_app.register_module_logic(slicer.vtkSlicerSequencesLogic())
        legend = slicer.vtkMRMLColorLegendDisplayNode()  # the colour bars of the maps (Colors module's node)
        self.slicer_app.scene.RegisterNodeClass(legend)
        self.adopted = AdoptedScene(self.slicer_app.scene, self.slicer_app.app_logic, sequences)
        register_rca_factories(self.slicer_app.view_manager, server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, server)
        # every view is created now, outside the page being built (a view created while a page element is
        # open would be drawn a second time inside it)
        self.layout_manager.register_layout_dict(review_layouts())
        self.layout_manager.set_layout("review")

        self.session = ReviewSession(self.slicer_app.scene)
        self.tasks = TaskRunner(self.state)
        self.slicer_app.segmentation_editor.segmentation_modified.connect(self._schedule_volumes)
        self._observed = []
        self._volumes_pending = False
        self.state.update(dict(STATE_DEFAULTS, max_upload_mb=float(max_upload_mb)))
        self.state.trame__title = "StrokeLesion"
        self._bind()

        from StrokeLesionLib.web.page import build_page
        self.ui = build_page(self)
        if source:
            self.state.status_message = f"opening {Path(source).name} ..."
            self.server.controller.on_server_ready.add(lambda **_: asyncio.ensure_future(self.open_path(source)))

    # ------------------------------------------------------------------------------------------ plumbing

    def _bind(self) -> None:
        ctrl, state = self.server.controller, self.state
        for name in ("select_input_functions", "compute_maps", "create_segments", "export", "cancel",
                     "use_automatic", "clear_picks", "upload", "upload_too_large", "show_layout", "reset_view",
                     "dismiss_error"):
            method = getattr(self, name)
            ctrl[name] = method if asyncio.iscoroutinefunction(method) else self.tasks.reported(method)
        state.change("frame_index")(self.tasks.reported(self._on_frame))
        state.change("pvol_overlay", "pvol_opacity")(self.tasks.reported(self._on_overlay))
        state.change("pick_mode")(self.tasks.reported(self._on_pick_mode))
        state.change("radius_vox")(self.tasks.reported(self._on_radius))
        state.change("core_rcbf", "tmax_s")(self.tasks.reported(self._on_thresholds))
        state.change("segment_role", "segment_tool", "brush_mm")(self.tasks.reported(self._on_segment_tool))
        state.change("segmentation_name")(self.tasks.reported(self._on_segmentation))
        ctrl.on_server_exited.add(lambda **_: self.close())

    def close(self) -> None:
        """Stops the worker, forgets the scene, removes this server's temporary files (uploads and the
        default exports folder; an --exports folder given by the user stays). Once: the server's exit and
        `serve`'s own shutdown both call it."""
        if self._closed:
            return
        self._closed = True
        self.tasks.shutdown()
        remove_color_legends(self.slicer_app.scene)
        self.adopted.release()
        shutil.rmtree(self.work_folder, ignore_errors=True)

    def dismiss_error(self) -> None:
        self.state.error_message = ""

    def _views(self):
        return {v.get_singleton_tag(): v for v in self.slicer_app.view_manager.get_slice_views()}

    def _render(self) -> None:
        for view in self.slicer_app.view_manager.get_views():
            view.schedule_render()

    # -------------------------------------------------------------------------------------------- open

    async def open_path(self, path) -> None:
        """Opens a CTP, a scene bundle or a folder holding scene.mrb (see the class doc)."""
        path = Path(path)
        try:
            if path.is_dir() and (path / "scene.mrb").is_file():
                path = path / "scene.mrb"
            if path.suffix.lower() == ".mrb":
                self.open_scene(path)
            elif path.is_dir() and (path / "report.json").is_file():
                await self.open_run_folder(path)
            else:
                await self.open_ctp(path)
        except Exception as e:  # noqa: BLE001
            self.tasks.report_error(e, f"opening {path.name}")

    async def open_ctp(self, path: Path, name: Optional[str] = None) -> bool:
        from AIFSelectorLib.io.ctp_io import load_uniform_series
        loaded = {}

        def compute(progress):
            progress(0.1, "reading")
            return load_uniform_series(path)

        def apply(result):
            series, note = result
            self._new_case()
            self.session.load_series(series, name or path.name.split(".")[0] or "CTP", str(path), note)
            loaded["ok"] = True
            self._show_case(name or path.name, note)

        await self.tasks.run(f"reading {name or path.name}", compute, apply, done=f"opened {name or path.name}")
        return bool(loaded)

    async def open_run_folder(self, folder: Path) -> None:
        """A `strokelesion run` (or export) folder: its CTP (named in report.json), its AIF and VOF (aif.csv,
        Pvol), maps recomputed from them with its method and thresholds, and its core, penumbra and lesion
        as the segments."""
        import json
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        if not await self.open_ctp(ReviewSession.run_folder_source(folder)):
            return
        thresholds = report.get("thresholds", {})
        self.state.core_rcbf = float(thresholds.get("core_rcbf", CORE_RCBF))
        self.state.tmax_s = float(thresholds.get("tmax_s", TMAX_THRESHOLD_S))
        self.state.method = report.get("maps", {}).get("deconvolution", "osvd")
        self.session.lesion.setThresholds(self.state.core_rcbf, self.state.tmax_s)

        def apply(functions):
            self.session.apply_input_functions(functions, "file")
            self.session.show_pvol(self.state.pvol_overlay, float(self.state.pvol_opacity))
            self._jump_to_pvol(self.state.pvol_overlay)
            self._refresh_curves()

        if not await self.tasks.run(f"AIF of {folder.name}", lambda progress: self.session.run_folder_functions(
                folder, progress), apply):
            return
        await self.compute_maps()
        if self.state.maps_ready:
            self.session.segments_from_run_folder(folder)
            self._activate_segmentation()
            self.state.status_message = (f"opened {folder.name}: maps recomputed from its aif.csv, segments from "
                                         "its core/penumbra files")

    def open_scene(self, path: Path) -> None:
        """A scene bundle written by the Slicer modules, `strokelesion run --scene` or this app's export."""
        self._new_case()
        unpacked = tempfile.mkdtemp(prefix="bundle-", dir=self.work_folder)  # a new folder per bundle opened
        if not self.slicer_app.app_logic.OpenSlicerDataBundle(str(Path(path).absolute()), unpacked):
            raise InputError(f"{path.name} is not a readable Slicer scene bundle")
        self.session = ReviewSession(self.slicer_app.scene)
        if not self.session.loaded:
            raise InputError(f"{path.name} holds no AIFSelector case (no CTP sequence in its parameter node)")
        self.session.source = str(path)
        self._show_case(path.name, "")
        self._refresh_curves()
        seg = self.session.segmentation()
        if self.session.aif.mapVolume("rcbf") is not None:
            self.state.maps_ready = True
            self.state.map_legend = map_legend(self.session.map_nodes())
        if seg is not None:
            self._activate_segmentation()
        self.state.status_message = f"opened {path.name}"

    def _new_case(self) -> None:
        """Clears the scene (the singleton view nodes stay) before a new case: trame-slicer's segment editor
        breaks on volumes loaded over an old scene."""
        self.slicer_app.markups_logic.disable_place_mode()
        self.slicer_app.segmentation_editor.deactivate_effect()
        self._unobserve()
        self.session.aif.cleanup()
        remove_color_legends(self.slicer_app.scene)
        self.slicer_app.scene.Clear(0)
        self.session = ReviewSession(self.slicer_app.scene)
        self.state.update({k: v for k, v in STATE_DEFAULTS.items() if k not in (
            "busy", "progress", "progress_text", "status_message", "exports", "max_upload_mb", "upload_key")})
        self.show_layout("review")

    def _show_case(self, name: str, note: str) -> None:
        series = self.session.series()
        proxy = self.session.aif.inputProxyVolume()
        views = self._views()
        self.slicer_app.display_manager.show_volume_in_slice_background(proxy)
        self.slicer_app.display_manager.show_volume_in_slice_foreground(None)
        for view in views.values():
            view.fit_view_to_content()
        self._observe_view(views[REVIEW_VIEW])
        self._observe_crosshair()
        self.state.update({
            "case_name": name, "case_loaded": True, "n_frames": int(series.n_frames),
            "frame_index": int(self.session.aif.inputBrowser().GetSelectedItemNumber()),
            "frame_time_s": float(series.times_s[0]),
            "source_info": (f"{series.n_frames} frames x {series.shape_zyx[0]} slices of "
                            f"{series.shape_zyx[2]} x {series.shape_zyx[1]}, {series.dt_s:g} s apart"
                            + (f"; {note}" if note else "")),
        })
        self._render()

    async def upload(self, files) -> None:
        """Files from the page's file input (trame sends their bytes over the websocket)."""
        folder = None
        try:
            kind, path, folder = save_upload(list(files or []), self.upload_root, self.max_upload_mb)
            if kind == "scene":
                self.open_scene(path)
                ok = True
            else:
                ok = await self.open_ctp(path, name=path.name if kind == "image" else "DICOM upload")
        except Exception as e:  # noqa: BLE001
            self.tasks.report_error(e, "upload")
            ok = False
        if not ok and folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        self.state.upload_files = None  # the next upload starts from an empty file input

    def upload_too_large(self, total_bytes) -> None:
        """The page refused a selection over the limit before sending it: the message, and an empty input."""
        self.tasks.report_error(InputError(upload_size_message(float(total_bytes), self.max_upload_mb)), "upload")
        self.state.upload_files = None
        self.state.upload_key += 1  # a new file input: the refused selection is not sent with the next one

    # -------------------------------------------------------------------------------- frames and views

    def _on_frame(self, frame_index, **_):
        if self.state.case_loaded:
            self.state.frame_time_s = self.session.set_frame(int(frame_index))

    def show_layout(self, name: str = "review") -> None:
        self.layout_manager.set_layout(name)
        self.state.layout = name
        if name == "maps" and self.state.maps_ready:
            self.session.aif.assignMapsToCompareViews()
            add_color_legends(self.slicer_app.scene, self.session.map_nodes(), self._views())
            for tag in COMPARE_VIEWS:
                view = self._views().get(tag)
                if view is not None:
                    view.fit_view_to_content()
        self._render()

    def reset_view(self) -> None:
        for view in self._views().values():
            view.fit_view_to_content()
        self._render()

    def _observe_view(self, view) -> None:
        node = view.get_view_node()

        def publish(*_):
            with self.state:
                self.state.view_xy_to_ras = {REVIEW_VIEW: view_xy_to_ras(node)}

        self._observed.append((node, node.AddObserver("ModifiedEvent", publish)))
        publish()

    def _observe_crosshair(self) -> None:
        crosshair = self.slicer_app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is None:
            return

        def on_move(caller, _event):
            ras = [0.0, 0.0, 0.0]
            if not caller.GetCursorPositionRAS(ras) or not self.state.case_loaded:
                return
            try:
                self._probe(ras)
            except Exception:  # noqa: BLE001 - a probe never interrupts the page
                log.debug("probe failed", exc_info=True)

        self._observed.append((crosshair, crosshair.AddObserver(crosshair.CursorPositionModifiedEvent, on_move)))

    def _probe(self, ras) -> None:
        with self.state:
            self.state.probe = probe_text(self.session, ras, int(self.state.frame_index), self.state.maps_ready)
            if self.session.tissue_curve_at(ras):
                self._refresh_curves()

    def _unobserve(self) -> None:
        for node, tag in self._observed:
            node.RemoveObserver(tag)
        self._observed = []

    # ------------------------------------------------------------------------------- input functions

    async def select_input_functions(self) -> None:
        if not self.state.case_loaded:
            self.tasks.report_error(InputError("open a CTP first"))
            return
        selector = self.state.selector
        self.session.series()  # read on this thread; the worker uses the cached series

        def compute(progress):
            return self.session.compute_input_functions(selector, self.device, progress)

        def apply(functions):
            self.session.apply_input_functions(functions, selector)
            self.session.show_pvol(self.state.pvol_overlay, float(self.state.pvol_opacity))
            self._jump_to_pvol(self.state.pvol_overlay)
            self.state.input_functions_ready = True
            self._refresh_curves()
            warnings = "; ".join(functions.warnings)
            self.state.status_message = (f"AIF and VOF by {functions.method}" + (f" ({warnings})" if warnings else ""))
            self._render()

        await self.tasks.run("AIF/VOF selection", compute, apply)

    def _on_overlay(self, pvol_overlay, pvol_opacity, **_):
        if self.state.input_functions_ready:
            if pvol_overlay != self.session.aif.getParameter("pvolOverlay"):
                self._jump_to_pvol(pvol_overlay)
            self.session.show_pvol(pvol_overlay, float(pvol_opacity))
            self._render()

    def _jump_to_pvol(self, overlay: str) -> None:
        """The review view moves to the slice where the Pvol shown is highest (the arteries or the sinus)."""
        ras = self.session.pvol_peak_ras(overlay)
        view = self._views().get(REVIEW_VIEW)
        if ras is not None and view is not None:
            with view.trigger_modified_once():  # the view's slice slider follows
                view.get_view_node().JumpSliceByOffsetting(*ras)

    def _refresh_curves(self) -> None:
        curves = self.session.curves()
        source = self.session.aif_source()
        with self.state:
            self.state.curves = curves
            self.state.aif_source = source
            self.state.curves_svg = curves_svg(curves, corrected=source == "corrected")
            self.state.picked = self.session.picked_counts() if curves else {"artery": 0, "vein": 0}
            self.state.input_functions_ready = bool(curves)

    def _on_pick_mode(self, pick_mode, **_):
        markups = self.slicer_app.markups_logic
        if pick_mode in ("artery", "vein"):
            node = self.session.pick_list(pick_mode)
            self._observe_picks(node)
            markups.place_node(node, persistent=True)
            self.state.segment_tool = "none"
        else:
            markups.disable_place_mode()

    def _observe_picks(self, node) -> None:
        self._observe(node, (node.PointPositionDefinedEvent, node.PointModifiedEvent, node.PointRemovedEvent),
                      lambda *_: self._refresh_curves())

    def _observe(self, obj, events, callback) -> None:
        """``callback`` on each of ``events`` of ``obj``, once: an object already observed is left as it is
        (a segmentation or a point list activated again would otherwise call back several times)."""
        if any(o is obj for o, _ in self._observed):
            return
        for event in events:
            self._observed.append((obj, obj.AddObserver(event, callback)))

    def _on_radius(self, radius_vox, **_):
        if self.state.input_functions_ready:
            self.session.set_radius(int(radius_vox))
            self._refresh_curves()

    def use_automatic(self) -> None:
        self._curves_step("use automatic", self.session.use_automatic)

    def clear_picks(self) -> None:
        self._curves_step("clear picks", self.session.clear_picks)

    def _curves_step(self, what: str, step) -> None:
        """A quick step on the curves (main thread), then the plot; an error is a message."""
        try:
            step()
            self._refresh_curves()
        except Exception as e:  # noqa: BLE001
            self.tasks.report_error(e, what)

    # --------------------------------------------------------------------------------------------- maps

    async def compute_maps(self) -> None:
        try:
            inputs = self.session.map_inputs()
        except Exception as e:  # noqa: BLE001
            self.tasks.report_error(e, "maps")
            return
        method = self.state.method
        self.state.pick_mode = "none"

        def compute(progress):
            return self.session.compute_maps(inputs, method, self.device, progress)

        def apply(perfusion):
            self.session.apply_maps(perfusion, method)
            tissue = perfusion.tissue
            self.state.maps_summary = {
                "aif_source": self.session.aif_source(), "method": method,
                **{f"{k}_median": round(float(np.median(perfusion.maps[k][tissue])), 4) if tissue.any() else None
                   for k in ("cbf", "cbv", "tmax")}}
            self.state.maps_ready = True
            self.state.map_legend = map_legend(self.session.map_nodes())
            self._on_thresholds(self.state.core_rcbf, self.state.tmax_s)
            self.show_layout("maps")

        await self.tasks.run(f"maps ({method}, {self.session.aif_source()} AIF)", compute, apply)

    # ------------------------------------------------------------------------ thresholds and segments

    def _on_thresholds(self, core_rcbf, tmax_s, **_):
        if not self.state.maps_ready:
            return
        core_rcbf, tmax_s = float(core_rcbf), float(tmax_s)
        if not (0.05 <= core_rcbf <= 0.9 and 2.0 <= tmax_s <= 20.0):
            raise InputError(f"thresholds out of range: rCBF {core_rcbf} (0.05..0.9), Tmax {tmax_s} s (2..20)")
        self.state.preview_volumes = self.session.preview(core_rcbf, tmax_s)
        self._render()

    async def create_segments(self) -> None:
        """Core and Penumbra by the thresholds (and the deep lesion model) into the segmentation; a segmentation
        the user edited is kept and the result goes into a new one."""
        model = self.state.lesion_model
        try:
            inputs = self.session.lesion_inputs() if model != "none" else None
        except Exception as e:  # noqa: BLE001
            self.tasks.report_error(e, "segments")
            return

        def compute(progress):
            return self.session.compute_lesion(model, inputs, self.device, progress)

        def apply(lesion_mask):
            old = self.session.segmentation()
            node, edited = self.session.apply_segments(lesion_mask, model)
            self._activate_segmentation()
            if edited and old is not None and node is not old:
                self.state.status_message = (f"your edits in '{old.GetName()}' ({', '.join(edited)}) were kept; "
                                             f"the new result is '{node.GetName()}'")

        await self.tasks.run("segments" + (f" ({model})" if model != "none" else ""), compute, apply)

    def _activate_segmentation(self) -> None:
        import slicer
        seg = self.session.segmentation()
        editor = self.slicer_app.segmentation_editor
        editor.set_active_segmentation(seg, self.session.aif.mapVolume("rcbf"))
        editor.set_surface_representation_enabled(False)
        self.session.lesion.showPreview(False)
        events = [getattr(slicer.vtkSegmentation, e) for e in ("SourceRepresentationModified", "SegmentAdded",
                                                               "SegmentRemoved") if hasattr(slicer.vtkSegmentation, e)]
        self._observe(seg.GetSegmentation(), events, self._schedule_volumes)
        self.state.segments_ready = True
        self.state.segmentation_names = self.session.segmentation_names()
        self.state.segmentation_name = seg.GetName()
        self._on_segment_tool(self.state.segment_role, self.state.segment_tool, self.state.brush_mm)
        self._update_volumes()
        self._render()

    def _on_segmentation(self, segmentation_name, **_):
        """The segmentation chosen in the page becomes the one edited, measured and exported (an edited one
        that a later 'Create segments' left aside can so be taken up again)."""
        seg = self.session.segmentation()
        if self.state.segments_ready and seg is not None and segmentation_name != seg.GetName():
            self.session.use_segmentation(segmentation_name)
            self._activate_segmentation()

    def _on_segment_tool(self, segment_role, segment_tool, brush_mm, **_):
        from trame_slicer.segmentation import (BrushDiameterMode, SegmentationEffectErase,
                                               SegmentationEffectPaint)
        if not self.state.segments_ready:
            return
        editor = self.slicer_app.segmentation_editor
        segment_id = self.session.segment_id(segment_role)
        if segment_id is None:
            raise InputError(f"the segmentation has no {segment_role} segment")
        editor.set_active_segment_id(segment_id)
        if segment_tool == "none":
            editor.deactivate_effect()
            return
        self.state.pick_mode = "none"
        effect = editor.set_active_effect_type(SegmentationEffectPaint if segment_tool == "paint"
                                               else SegmentationEffectErase)
        effect.set_brush_diameter(float(brush_mm), BrushDiameterMode.Absolute)

    def _schedule_volumes(self, *_args) -> None:
        """Volumes follow every edit, at most every 0.3 s (each update resamples the segments)."""
        if self._volumes_pending:
            return
        self._volumes_pending = True

        async def later():
            await asyncio.sleep(0.3)
            self._volumes_pending = False
            try:
                self._update_volumes()
            except Exception as e:  # noqa: BLE001
                self.tasks.report_error(e, "volumes")

        asyncio.ensure_future(later())

    def _update_volumes(self) -> None:
        if not self.state.segments_ready or self.session.segmentation() is None:
            return
        with self.state:
            self.state.volumes = self.session.volumes()

    # ------------------------------------------------------------------------------------------- export

    async def export(self) -> None:
        """The run's files and scene.mrb into a new folder of the exports: a step of the page with its progress
        line (a few seconds: the scene bundle is written on the main thread, which alone touches the scene)."""
        n = 1 + max([int(p.name.split("-")[-1]) for p in self.exports_dir.glob("export-*")
                     if p.name.split("-")[-1].isdigit()] or [0])
        folder = self.exports_dir / f"export-{n}"

        def announce(progress):  # the page shows the step before the writing holds the server
            progress(0.5, "writing the maps, the report and the scene bundle")

        def apply(_):
            self._update_volumes()
            files = self.session.export(folder)
            offered = [f for f in files if f in ("report.json", "report.png", "scene.mrb")]
            served = self.served_dir / folder.name
            served.mkdir()
            for name in offered:
                shutil.copyfile(folder / name, served / name)
            entry = {"name": folder.name, "folder": str(folder),
                     "files": [{"name": f, "url": f"/exports/{folder.name}/{f}"} for f in offered]}
            self.state.exports = [entry] + list(self.state.exports)
            self.state.status_message = f"exported {len(files)} files to {folder}"

        await self.tasks.run("export", announce, apply)

    def cancel(self) -> None:
        self.tasks.cancel()
