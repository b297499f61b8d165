"""The web app's page: a drawer with the radiologist's steps in order (case, AIF and VOF, maps, core and
penumbra, segments, export) beside Slicer's slice views. Controls carry ``id``s (the browser tests use
them); all behaviour is in app.py.
"""
from AIFSelectorLib.deconvolution import MAP_METHODS as METHODS

from StrokeLesionLib.web.session import LESION_MODELS, SELECTORS


def build_page(app):
    """Builds the page of ``app`` (a StrokeLesionWebApp) on its server; returns the trame layout."""
    from trame.widgets import client, html
    from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
    from trame_vuetify.widgets import vuetify3 as v

    server, ctrl = app.server, app.server.controller
    with SinglePageWithDrawerLayout(server, full_height=True) as layout:
        client.Style("html { overflow-y: hidden; } .sl-section { font-weight: 600; margin: 10px 0 4px; }"
                     " .sl-small { font-size: 12px; color: #555; } td, th { padding: 1px 6px; }")
        layout.title.set_text("StrokeLesion")
        layout.drawer.width = 470
        with layout.toolbar:
            v.VSpacer()
            html.Div("{{ case_name }}", classes="mx-2", id="case-name")
            v.VBtn("Review", click=(ctrl.show_layout, "['review']"), variant="text", id="layout-review",
                   disabled=("!case_loaded",))
            v.VBtn("Maps", click=(ctrl.show_layout, "['maps']"), variant="text", id="layout-maps",
                   disabled=("!maps_ready",))
            v.VBtn("Fit", click=ctrl.reset_view, variant="text", id="fit-views")
        with layout.drawer:
            with html.Div(classes="pa-3"):
                _status(v, html, ctrl)
                _case(v, html, ctrl)
                _input_functions(v, html, ctrl)
                _maps(v, html, ctrl)
                _decision(v, html, ctrl)
                _segments(v, html)
                _export(v, html, ctrl)
        with layout.content:
            with html.Div(style="position: relative; width: 100%; height: calc(100vh - 100px);",
                          id="views"):
                app.layout_manager.initialize_layout_grid(layout)
            html.Div("{{ probe }}", classes="sl-small px-2", id="probe", style="height: 20px;")
    return layout


def _choice_and_action(v, html, key, choices, label, width_px, action, call, disabled, action_id):
    """A row: a choice (state ``key``, control id ``key``) and the primary button that acts on it."""
    with html.Div(classes="d-flex align-center"):
        v.VSelect(v_model=(key,), items=(f"{key}_choices", list(choices)), label=label, density="compact",
                  hide_details=True, style=f"max-width: {width_px}px;", id=key)
        v.VBtn(action, click=call, disabled=(disabled,), classes="ml-2", color="primary", id=action_id)


def _status(v, html, ctrl):
    with html.Div(v_if=("busy",), id="busy"):
        v.VProgressLinear(model_value=("progress",), height=8, color="primary", id="progress")
        with html.Div(classes="d-flex align-center"):
            html.Div("{{ progress_text }}", classes="sl-small", id="progress-text")
            v.VSpacer()
            v.VBtn("Cancel", click=ctrl.cancel, size="small", variant="outlined", id="cancel")
    v.VAlert(v_if=("error_message",), text=("error_message",), type="error", density="compact",
             closable=True, click_close=ctrl.dismiss_error, id="error", classes="my-1")
    html.Div("{{ status_message }}", classes="sl-small my-1", id="status")


def _case(v, html, ctrl):
    html.Div("1. Case", classes="sl-section")
    # a selection over the server's limit is refused here, before its bytes are sent (the server checks again)
    size = "[].concat($event).reduce((s, f) => s + (f.size || 0), 0)"
    v.VFileInput(label="Open a CTP (.nii.gz, .nrrd, DICOM files) or a scene (.mrb)", multiple=True,
                 density="compact", hide_details=True, id="upload", show_size=True, v_model=("upload_files", None),
                 key=("upload_key",),
                 update_modelValue=f"(!$event || ![].concat($event).length) ? null : ({size} > max_upload_mb * 1e6)"
                                   f" ? trigger('{ctrl.trigger_name(ctrl.upload_too_large)}', [{size}])"
                                   f" : trigger('{ctrl.trigger_name(ctrl.upload)}', [$event])",
                 disabled=("busy",))
    html.Div("{{ source_info }}", classes="sl-small", id="source-info")
    with html.Div(v_if=("case_loaded",), classes="d-flex align-center"):
        v.VSlider(v_model=("frame_index",), min=0, max=("n_frames - 1",), step=1, hide_details=True,
                  density="compact", id="frame-slider", label="frame")
        html.Div("{{ frame_time_s.toFixed(1) }} s", classes="sl-small ml-2", id="frame-time")


def _input_functions(v, html, ctrl):
    html.Div("2. AIF and VOF", classes="sl-section")
    _choice_and_action(v, html, "selector", SELECTORS, "selector", 140,
                       "Select AIF / VOF", ctrl.select_input_functions, "!case_loaded || busy", "select-aif")
    with html.Div(v_if=("input_functions_ready",)):
        with html.Div(classes="d-flex align-center"):
            with v.VBtnToggle(v_model=("pvol_overlay",), density="compact", mandatory=True, id="overlay"):
                for name in ("AIF", "VOF", "None"):
                    v.VBtn(f"{name} Pvol" if name != "None" else "no overlay", value=name, size="small")
            v.VSlider(v_model=("pvol_opacity",), min=0, max=1, step=0.05, hide_details=True, density="compact",
                      classes="ml-2", id="pvol-opacity", prepend_icon="mdi-opacity")
        html.Div(v_html=("curves_svg",), id="curves-plot")
        html.Div("curves: {{ aif_source }}; picked {{ picked.artery }} artery and {{ picked.vein }} vein "
                 "point(s)", classes="sl-small", id="aif-source")
        with html.Div(classes="d-flex align-center flex-wrap"):
            with v.VBtnToggle(v_model=("pick_mode",), density="compact", mandatory=True, id="pick-mode"):
                v.VBtn("view", value="none", size="small", id="pick-none")
                v.VBtn("pick arteries", value="artery", size="small", id="pick-artery")
                v.VBtn("pick sinus", value="vein", size="small", id="pick-vein")
            v.VSelect(v_model=("radius_vox",), items=("radii", [0, 1, 2, 3]), label="neighbourhood (vox)",
                      density="compact", hide_details=True, style="max-width: 150px;", classes="ml-2",
                      id="radius")
        with html.Div(classes="d-flex"):
            v.VBtn("use automatic", click=ctrl.use_automatic, size="small", variant="outlined",
                   id="use-automatic", disabled=("aif_source == 'automatic'",))
            v.VBtn("clear picks", click=ctrl.clear_picks, size="small", variant="outlined", classes="ml-2",
                   id="clear-picks")


def _maps(v, html, ctrl):
    html.Div("3. Perfusion maps", classes="sl-section")
    _choice_and_action(v, html, "method", METHODS, "deconvolution", 160,
                       "Compute maps", ctrl.compute_maps, "!input_functions_ready || busy", "compute-maps")
    with html.Table(v_if=("maps_ready",), classes="sl-small", id="map-legend"):
        with html.Tr(v_for="m in map_legend", key="m.key"):
            html.Td("{{ m.name }}")
            html.Td("{{ m.min }}")
            with html.Td():
                html.Div(style=("{background: m.gradient, width: '140px', height: '10px'}",))
            html.Td("{{ m.max }} {{ m.unit }}")


def _decision(v, html, ctrl):
    html.Div("4. Core and penumbra", classes="sl-section")
    with html.Div(v_if=("maps_ready",)):
        with html.Div(classes="d-flex align-center"):
            html.Div("core rCBF <", classes="sl-small", style="width: 90px;")
            v.VBtn("30 %", click="core_rcbf = 0.30", size="x-small", variant="outlined", id="rcbf-30")
            v.VBtn("38 %", click="core_rcbf = 0.38", size="x-small", variant="outlined", classes="ml-1",
                   id="rcbf-38")
            v.VSlider(v_model=("core_rcbf",), min=0.1, max=0.6, step=0.01, hide_details=True, density="compact",
                      classes="ml-2", id="core-rcbf", thumb_label=True)
        with html.Div(classes="d-flex align-center"):
            html.Div("Tmax > (s)", classes="sl-small", style="width: 90px;")
            v.VSlider(v_model=("tmax_s",), min=4, max=10, step=0.5, hide_details=True, density="compact",
                      id="tmax", thumb_label=True)
        html.Div("preview: core {{ preview_volumes.core_ml }} ml, penumbra {{ preview_volumes.penumbra_ml }} ml",
                 classes="sl-small", id="preview-volumes")
        with html.Div(classes="d-flex align-center"):
            v.VSelect(v_model=("lesion_model",), items=("lesion_models", list(LESION_MODELS)),
                      label="deep lesion model", density="compact", hide_details=True, style="max-width: 170px;",
                      id="lesion-model")
            v.VBtn("Create segments", click=ctrl.create_segments, disabled=("busy",), classes="ml-2",
                   color="primary", id="create-segments")


def _segments(v, html):
    html.Div("5. Segments", classes="sl-section")
    with html.Div(v_if=("segments_ready",)):
        v.VSelect(v_model=("segmentation_name",), items=("segmentation_names",), label="segmentation",
                  density="compact", hide_details=True, style="max-width: 300px;", id="segmentation-name")
        with v.VBtnToggle(v_model=("segment_role",), density="compact", mandatory=True, id="segment-role"):
            v.VBtn("Core", value="core", size="small", id="role-core")
            v.VBtn("Penumbra", value="penumbra", size="small", id="role-penumbra")
            v.VBtn("Lesion", value="lesion", size="small", id="role-lesion", disabled=("!('lesion_ml' in volumes)",))
        with html.Div(classes="d-flex align-center"):
            with v.VBtnToggle(v_model=("segment_tool",), density="compact", mandatory=True, id="segment-tool"):
                v.VBtn("view", value="none", size="small", id="tool-none")
                v.VBtn("paint", value="paint", size="small", id="tool-paint")
                v.VBtn("erase", value="erase", size="small", id="tool-erase")
            v.VSlider(v_model=("brush_mm",), min=2, max=40, step=1, hide_details=True, density="compact",
                      classes="ml-2", id="brush", thumb_label=True, prepend_icon="mdi-brush")
        with html.Table(classes="sl-small", id="volumes-table"):
            for key, label in (("core_ml", "Core"), ("penumbra_ml", "Penumbra"),
                               ("hypoperfused_ml", "Hypoperfused (Tmax)"), ("mismatch_volume_ml", "Mismatch volume"),
                               ("mismatch_ratio", "Mismatch ratio"), ("lesion_ml", "Lesion (model)")):
                with html.Tr(v_if=(f"'{key}' in volumes",)):
                    html.Td(label)
                    html.Td(f"{{{{ volumes.{key} }}}}", id=f"volume-{key}")
                    html.Td("" if key == "mismatch_ratio" else "ml")


def _export(v, html, ctrl):
    html.Div("6. Export", classes="sl-section")
    v.VBtn("Export report and scene", click=ctrl.export, disabled=("!segments_ready || busy",), id="export")
    with html.Div(v_for="e in exports", key="e.name", classes="sl-small"):
        html.Span("{{ e.name }}: ")
        html.A("{{ f.name }} ", v_for="f in e.files", key="f.name", href=("f.url",), target="_blank",
               classes="mr-2")
