"""The radiologist's workflow in a real headless Chromium against a real `strokelesion serve`.

Each test starts its own server on the seed-0 demo phantom (8 x 256 x 256, 48 frames) and checks what the
page shows against the phantom's truth: the CTP in the slice view (pixels), the Pvol over the true
arteries (pixels), a click on a true artery correcting the AIF, maps recomputed from it, a paint stroke in
Core changing the Core volume in the table, the exported bundle opened with slicer-core, and an invalid
upload. The screenshots go to docs/web/ when STROKELESION_DOC_SCREENSHOTS is set (docs/web.md shows them).
Skipped, with the reason in the summary, only where no browser can be installed.
"""
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from AIFSelectorLib.io.volume_io import write_series_nifti
from AIFSelectorLib.mrml.conversion import ras_to_zyx, zyx_to_ras
from AIFSelectorLib.phantom.case import make_phantom

from browser import WebApp, browser_missing

pytestmark = pytest.mark.skipif(bool(browser_missing()), reason=f"browser tests: {browser_missing()}")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "web"


def shot(web, name):
    """A screenshot for docs/web.md when asked for (STROKELESION_DOC_SCREENSHOTS=1), else none."""
    if os.environ.get("STROKELESION_DOC_SCREENSHOTS"):
        DOCS.mkdir(exist_ok=True)
        web.screenshot(DOCS / f"{name}.png")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    case = make_phantom(seed=0)
    path = write_series_nifti(tmp_path_factory.mktemp("web_phantom") / "ctp.nii.gz", case.series)
    return case, path


def displayed_slice(web, case) -> int:
    """The slice index the review view shows (from its XY-to-RAS matrix)."""
    m = np.asarray(web.state("view_xy_to_ras")["Red"], float).reshape(4, 4)
    return int(ras_to_zyx([m[:3, 3]], case.series.geometry)[0][0])


def view_voxels(web, case, pixels):
    """(n, 3) z, y, x voxels (without shape check) under (row, col) pixels of the review view, and a mask of
    those inside the volume."""
    m = np.asarray(web.state("view_xy_to_ras")["Red"], float).reshape(4, 4)
    h = web.view_rect()[3]
    rows, cols = np.asarray(pixels, float).reshape(-1, 2).T
    xy = np.c_[cols + 0.5, h - rows - 0.5, np.zeros(len(rows)), np.ones(len(rows))]
    zyx = ras_to_zyx((m @ xy.T).T[:, :3], case.series.geometry)
    inside = np.all((zyx >= 0) & (zyx < np.asarray(case.series.shape_zyx)), axis=1)
    return zyx, inside


def central_artery_voxel(case, z):
    """The true-artery voxel of slice z with the most artery neighbours (a vessel's middle)."""
    artery = case.truth["artery_mask"][z]
    score = ndimage.uniform_filter(artery.astype(float), 3)
    candidates = np.argwhere(artery)
    y, x = max(candidates, key=lambda p: score[p[0], p[1]])
    return z, int(y), int(x)


def open_and_select(web):
    web.wait_idle("case_loaded")
    web.click("select-aif")
    web.wait_idle("input_functions_ready")
    time.sleep(1.5)  # the view's next frame


def open_and_map(web):
    open_and_select(web)
    web.click("compute-maps")
    web.wait_idle("maps_ready")


def test_page_shows_the_ctp(phantom, tmp_path):
    case, path = phantom
    with WebApp(path, tmp_path) as web:
        web.wait_idle("case_loaded")
        assert web.state("n_frames") == 48 and "8 slices of 256 x 256" in web.state("source_info")
        time.sleep(1.5)
        shot(web, "01-case")
        pixels = web.view_pixels().astype(float).mean(-1)
        z = displayed_slice(web, case)
        frame = case.series.data[web.state("frame_index"), z]
        # every 7th pixel: its voxel's HU against the pixel's grey level (CTP window 0-80 HU)
        rows, cols = np.mgrid[0:pixels.shape[0]:7, 0:pixels.shape[1]:7]
        zyx, inside = view_voxels(web, case, np.c_[rows.ravel(), cols.ravel()])
        assert np.all(zyx[inside, 0] == z)
        hu = frame[zyx[inside, 1], zyx[inside, 2]]
        grey = pixels[rows.ravel()[inside], cols.ravel()[inside]]
        assert np.median(pixels[rows.ravel()[~inside], cols.ravel()[~inside]]) < 15, "outside the volume is not black"
        bone, air, brain = hu > 300, hu < -300, (hu > 20) & (hu < 60)
        assert bone.sum() > 50 and air.sum() > 500 and brain.sum() > 1000
        assert np.median(grey[bone]) > 230, "bone is not white"
        assert np.median(grey[air]) < 15, "air is not black"
        assert 60 < np.median(grey[brain]) < 200, "brain is not grey"


def test_pvol_overlay_lies_over_the_true_arteries(phantom, tmp_path):
    case, path = phantom
    with WebApp(path, tmp_path) as web:
        open_and_select(web)
        shot(web, "02-aif-pvol")
        with_overlay = web.view_pixels().astype(int)
        web.set_state("pvol_overlay", "None")
        web.wait(lambda: web.state("pvol_overlay") == "None", 10)
        time.sleep(1.5)
        without = web.view_pixels().astype(int)
        changed = np.argwhere(np.abs(with_overlay - without).sum(-1) > 60)
        assert len(changed) > 20, f"the AIF Pvol changes only {len(changed)} pixels"
        voxels, inside = view_voxels(web, case, changed)
        assert inside.all()
        near_artery = ndimage.binary_dilation(case.truth["artery_mask"], iterations=1)
        on_artery = near_artery[tuple(voxels.T)].mean()
        assert on_artery > 0.9, f"only {on_artery:.0%} of the Pvol pixels lie on true arteries"


def test_click_on_an_artery_corrects_the_aif_and_recompute_changes_the_maps(phantom, tmp_path):
    case, path = phantom
    with WebApp(path, tmp_path) as web:
        open_and_map(web)
        automatic = web.state("maps_summary")
        assert automatic["aif_source"] == "automatic"
        web.click("layout-review")
        web.wait(lambda: web.state("layout") == "review", 10, "the review layout")
        z = displayed_slice(web, case)
        target = central_artery_voxel(case, z)
        curves = web.state("curves")
        assert curves["aif_hu"] == curves["aif_auto_hu"]
        web.click("pick-artery")
        web.wait(lambda: web.state("pick_mode") == "artery", 10)
        time.sleep(0.5)
        web.click_at(*web.page_xy_of_ras(zyx_to_ras([target], case.series.geometry)[0]))
        web.wait(lambda: web.state("aif_source") == "corrected", 30, "the corrected AIF")
        corrected = web.state("curves")
        assert web.state("picked")["artery"] == 1
        assert corrected["aif_hu"] != corrected["aif_auto_hu"]
        # the picked voxel's own curve (and its in-plane neighbours) is now the AIF: it peaks as arteries do
        assert max(corrected["aif_hu"]) > 150
        plotted = web.driver.execute_script(
            "return document.querySelectorAll('#curves-plot polyline[data-curve=\"aif_hu\"]').length")
        assert plotted >= 1
        shot(web, "03-artery-picked")
        web.click("pick-none")
        web.click("compute-maps")
        web.wait(lambda: web.state("maps_summary").get("aif_source") == "corrected" and not web.state("busy"), 120,
                 "maps from the corrected AIF")
        recomputed = web.state("maps_summary")
        assert recomputed["cbf_median"] != automatic["cbf_median"]
        shot(web, "04-maps")
        web.click("use-automatic")
        web.wait(lambda: web.state("aif_source") == "automatic", 10)
        assert web.state("curves")["aif_hu"] == corrected["aif_auto_hu"]


def test_bayes_chosen_in_the_page_shows_its_uncertainty_maps(phantom, tmp_path):
    case, path = phantom
    with WebApp(path, tmp_path) as web:
        open_and_select(web)
        field = web.find("#method").find_element("xpath", "./ancestor::div[contains(@class, 'v-field')][1]")
        field.click()  # the deconvolution choice, opened as a user opens it (its box, not the hidden input)
        item = web.wait(lambda: [e for e in web.driver.find_elements(
            "xpath", "//div[contains(@class, 'v-list-item')][normalize-space(.)='bayes']") if e.is_displayed()],
            30, "the bayes item")[0]
        item.click()
        web.wait(lambda: web.state("method") == "bayes", 10, "the method")
        web.click("compute-maps")
        web.wait_idle("maps_ready")
        web.wait(lambda: web.state("layout") == "maps", 30, "the maps layout")
        rows = [r.text for r in web.driver.find_elements("css selector", "#map-legend tr")]
        assert any(r.startswith("CBF SD 0") and "ml/100g/min" in r for r in rows), rows
        assert any(r.startswith("Tmax SD 0") and r.endswith("s") for r in rows), rows
        web.driver.execute_script("document.getElementById('map-legend').scrollIntoView({block: 'center'})")
        time.sleep(1.5)  # the views' next frame
        shot(web, "07-bayes-uncertainty")


def test_paint_into_core_changes_the_volume_and_the_export_keeps_it(phantom, tmp_path):
    from AIFSelectorLib.mrml.scene import open_bundle
    from StrokeLesionLib.mrml.stroke_lesion_logic import StrokeLesionLogic
    case, path = phantom
    with WebApp(path, tmp_path) as web:
        open_and_map(web)
        web.click("rcbf-30")
        web.wait(lambda: web.state("core_rcbf") == 0.3, 10)
        web.click("create-segments")
        web.wait_idle("segments_ready")
        before = web.state("volumes")["core_ml"]
        web.click("layout-review")
        web.wait(lambda: web.state("layout") == "review", 10, "the review layout")
        web.click("role-core")
        web.click("tool-paint")
        web.wait(lambda: web.state("segment_tool") == "paint", 10)
        time.sleep(0.5)
        left, top, w, h = web.view_rect()
        # a stroke through the healthy hemisphere (the phantom's lesion is on the other side)
        web.drag([(left + w * 0.42 + 6 * i, top + h * 0.5 + 3 * i) for i in range(12)])
        web.wait(lambda: web.state("volumes")["core_ml"] > before + 0.5, 30, "the painted Core volume")
        after = web.state("volumes")["core_ml"]
        shown = web.find("#volume-core_ml").text
        assert float(shown) == pytest.approx(after)
        shot(web, "05-painted-core")
        web.click("tool-erase")
        web.wait(lambda: web.state("segment_tool") == "erase", 10)
        time.sleep(0.5)
        web.drag([(left + w * 0.42 + 6 * i, top + h * 0.5 + 3 * i) for i in range(6)])  # half the stroke
        web.wait(lambda: web.state("volumes")["core_ml"] < after - 0.2, 30, "the erased Core volume")
        after = web.state("volumes")["core_ml"]
        assert after > before  # the other half is still painted
        web.click("tool-none")
        private = tmp_path / "exports" / "private-notes.txt"  # a file of the user's in the --exports folder
        private.parent.mkdir(exist_ok=True)
        private.write_text("not for the web")
        web.click("export")
        web.wait(lambda: web.state("exports"), 180, "the export")
        folder = Path(web.state("exports")[0]["folder"])
        assert web.download(web.state("exports")[0]["files"][0]["url"]) == (folder / "report.json").read_bytes()
        assert web.download("/exports/private-notes.txt") is None  # only the exports' downloads are served
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        assert report["volumes_ml"]["core_ml"] == pytest.approx(after, abs=0.01)
        assert report["thresholds"]["core_rcbf"] == pytest.approx(0.3)
        assert "Core" in report["edited_segments"]
        assert (folder / "report.png").stat().st_size > 10_000
        env = open_bundle(folder / "scene.mrb")
        try:
            logic = StrokeLesionLogic(env.scene)
            assert logic.volumes()["core_ml"] == pytest.approx(after, abs=0.01)
            assert "Core" in logic.editedSegments()
        finally:
            env.close()


def test_invalid_upload_gives_a_message_and_the_app_keeps_working(tmp_path):
    small = make_phantom(seed=5, shape_zyx=(4, 64, 64), n_frames=30)
    good = write_series_nifti(tmp_path / "small_ctp.nii.gz", small.series)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a CT perfusion series")
    big = tmp_path / "big.nii.gz"
    big.write_bytes(np.random.default_rng(0).bytes(3_000_000))
    with WebApp(None, tmp_path / "web", extra_args=["--max-upload-mb", "2"]) as web:
        web.wait(lambda: web.state("status_message") is not None, 60, "the page")
        upload = web.find("#upload input[type=file], input[type=file]")
        upload.send_keys(str(big))  # refused by the page before its bytes are sent
        error = web.wait(lambda: web.state("error_message"), 60, "the size message")
        assert "upload: the upload is 3 MB, more than the server's limit of 2 MB" in error, error
        web.set_state("error_message", "")
        upload = web.find("#upload input[type=file], input[type=file]")
        upload.send_keys(str(bad))
        error = web.wait(lambda: web.state("error_message"), 60, "the error message")
        assert "broken.nii.gz" in error and "Traceback" not in error and "\n" not in error
        assert not web.state("case_loaded")
        assert web.find("#error").is_displayed()
        shot(web, "06-invalid-upload")
        web.set_state("error_message", "")
        web.find("input[type=file]").send_keys(str(good))
        web.wait_idle("case_loaded", 120)
        assert "4 slices of 64 x 64" in web.state("source_info")
        assert bad.read_bytes().startswith(b"\x1f\x8b this")  # the user's files are untouched
        web.server.send_signal(signal.SIGTERM)
        assert web.server.wait(20) == 128 + signal.SIGTERM
