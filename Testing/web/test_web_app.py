"""The web app's behaviour without a browser: the app object on a trame server that is not started, its
async steps run with asyncio (what a page's button calls), and `strokelesion serve` as a process.

The browser tests (test_browser_workflow.py) check the same steps through a real page; these run where no
browser can be installed, and cover what a page cannot reach cheaply: run folders, Cancel, the size and
name checks of uploads, edits kept over a recompute, the command's errors and SIGTERM.
"""
import asyncio
import itertools
import json
import re
import signal
import subprocess

import numpy as np
import pytest

from AIFSelectorLib.errors import InputError

pytest.importorskip("trame_slicer", reason="the web app needs trame-slicer (pip install '.[web]')")

from browser import strokelesion_command  # noqa: E402
from StrokeLesionLib.case.report_figure import nice_ticks  # noqa: E402
from StrokeLesionLib.web.curves_plot import curves_svg  # noqa: E402
from StrokeLesionLib.web.uploads import check_upload, safe_name, save_upload  # noqa: E402

_names = itertools.count()


def new_app(**kwargs):
    from trame.app import get_server
    from StrokeLesionLib.web.app import StrokeLesionWebApp
    return StrokeLesionWebApp(get_server(f"test-{next(_names)}", client_type="vue3"), **kwargs)


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def app():
    a = new_app()
    yield a
    a.close()


def test_run_folder_reopens_with_its_curves_maps_and_segments(small_ctp, tmp_path, app):
    from StrokeLesionLib.cli import main
    out = tmp_path / "run"
    assert main(["run", str(small_ctp), "--out", str(out), "--aif", "classic", "--core-rcbf", "0.3"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    run(app.open_path(out))
    assert app.state.error_message == ""
    assert app.state.core_rcbf == pytest.approx(0.3)
    for key in ("core_ml", "penumbra_ml", "mismatch_ratio"):
        assert app.state.volumes[key] == pytest.approx(report["volumes_ml"][key], abs=0.011)
    times, aif = np.loadtxt(out / "aif.csv", delimiter=",", skiprows=1, usecols=(0, 1), unpack=True)
    assert np.allclose(app.state.curves["aif_hu"], aif, atol=1e-3)


def test_a_run_folder_without_its_ctp_is_a_message(small_ctp, tmp_path, app):
    from StrokeLesionLib.cli import main
    import shutil
    ctp = tmp_path / "ctp.nii.gz"
    shutil.copyfile(small_ctp, ctp)
    out = tmp_path / "run"
    assert main(["run", str(ctp), "--out", str(out), "--aif", "classic"]) == 0
    ctp.unlink()
    run(app.open_path(out))
    assert "is not found" in app.state.error_message and not app.state.case_loaded


def test_cancel_stops_the_maps_and_changes_nothing(small_ctp, app):
    run(app.open_path(small_ctp))
    app.state.selector = "classic"
    run(app.select_input_functions())
    assert app.state.input_functions_ready

    async def compute_and_cancel():
        task = asyncio.ensure_future(app.compute_maps())
        while not app.state.busy:
            await asyncio.sleep(0.001)
        app.cancel()
        await task
    run(compute_and_cancel())
    assert "cancelled" in app.state.status_message
    assert not app.state.maps_ready and not app.state.busy
    assert app.session.aif.mapVolume("cbf") is None
    run(app.compute_maps())  # and the app still works
    assert app.state.maps_ready


def test_segments_recomputed_after_an_edit_go_to_a_new_segmentation(small_ctp, app):
    run(app.open_path(small_ctp))
    app.state.selector = "classic"
    run(app.select_input_functions())
    run(app.compute_maps())
    run(app.create_segments())
    first = app.session.segmentation()
    core = app.session.lesion.segmentMask(first, "core")
    edited = core.copy()
    edited[0, 10:20, 10:20] = True  # a user's paint stroke
    app.session.lesion._setSegment(first, "core", edited, app.session.series().geometry, "{}")
    first.GetSegmentation().GetSegment(app.session.segment_id("core")).SetTag("StrokeLesion.MaskHash", "user")
    app.state.core_rcbf = 0.3
    run(app.create_segments())
    second = app.session.segmentation()
    assert second is not first
    assert np.array_equal(app.session.lesion.segmentMask(first, "core"), edited)  # the edit is still there
    assert "were kept" in app.state.status_message and first.GetName() in app.state.status_message
    assert app.state.segmentation_names == [first.GetName(), second.GetName()]
    app.state.ready()  # (a started server's state: its change handlers run on flush)
    app.state.segmentation_name = first.GetName()  # the page's chooser: back to the edited segmentation
    app.state.flush()
    assert app.session.segmentation() is first
    voxel_ml = app.session.series().geometry.voxel_volume_ml
    assert app.state.volumes["core_ml"] == pytest.approx(edited.sum() * voxel_ml, abs=0.01)


def test_bayes_maps_show_their_sds_in_the_side_panel_and_probe(small_ctp, app):
    run(app.open_path(small_ctp))
    app.state.selector = "classic"
    run(app.select_input_functions())
    app.state.method = "bayes"
    run(app.compute_maps())
    assert [m["key"] for m in app.state.map_legend][-2:] == ["cbf_sd", "tmax_sd"]
    series = app.session.series()
    from AIFSelectorLib.mrml.conversion import zyx_to_ras
    z, y, x = np.argwhere(app.session.perfusion.tissue)[0]
    app._probe(list(zyx_to_ras([(z, y, x)], series.geometry)[0]))
    assert "CBF SD" in app.state.probe and "Tmax SD" in app.state.probe
    run(app.create_segments())
    ranges = app.session.case_result().volume_ranges  # what an export writes into report.json and report.png
    assert ranges["core_ml"][0] <= app.state.volumes["core_ml"] <= ranges["core_ml"][1]
    app.state.method = "osvd"
    run(app.compute_maps())  # no stale SDs beside another method's maps
    assert [m["key"] for m in app.state.map_legend] == ["cbf", "cbv", "mtt", "tmax", "ttp", "rcbf"]


def test_frame_slider_and_tissue_curve_under_the_cursor(small_ctp, app):
    run(app.open_path(small_ctp))
    times = app.session.frame_times_s()
    app.state.ready()  # (a started server's state: its change handlers run on flush)
    app.state.frame_index = 5
    app.state.flush()
    assert app.session.aif.inputBrowser().GetSelectedItemNumber() == 5
    assert app.state.frame_time_s == pytest.approx(times[5])
    app.state.selector = "classic"
    run(app.select_input_functions())
    series = app.session.series()
    z, y, x = (n // 2 for n in series.shape_zyx)
    from AIFSelectorLib.mrml.conversion import zyx_to_ras
    app._probe(list(zyx_to_ras([(z, y, x)], series.geometry)[0]))
    tissue = np.array(app.state.curves["tissue_hu"], float)
    assert np.allclose(tissue, series.data[:, z, y, x], atol=0.01)  # the voxel's own curve, in HU


def test_uploads_are_checked_before_anything_is_written(tmp_path):
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\x\\ct p.nii.gz") == "ct_p.nii.gz"
    assert safe_name(".hidden.nii") == "hidden.nii"
    with pytest.raises(InputError, match="not usable"):
        safe_name("../")
    one = [{"name": "a.nii.gz", "size": 10, "content": b"0123456789"}]
    assert check_upload(one) == "image"
    assert check_upload([{"name": "s.mrb", "size": 1, "content": b"x"}]) == "scene"
    assert check_upload([{"name": f"{i}.dcm", "size": 1, "content": b"x"} for i in range(3)]) == "dicom"
    with pytest.raises(InputError, match="limit of 5e-06 MB"):
        check_upload(one, max_mb=5e-6)  # 10 bytes against 5
    with pytest.raises(InputError, match="limit of 5e-06 MB"):  # the bytes count, not the size declared
        check_upload([{"name": "a.nii.gz", "size": 1, "content": [b"01234", b"56789"]}], max_mb=5e-6)
    with pytest.raises(InputError, match="got 2 file"):
        check_upload(one + [{"name": "b.mrb", "size": 1, "content": b"x"}])
    with pytest.raises(InputError, match="nothing was uploaded"):
        check_upload([])
    root = tmp_path / "uploads"
    root.mkdir()
    with pytest.raises(InputError, match="two uploaded files are named"):
        save_upload([{"name": "x/1.dcm", "size": 1, "content": b"x"}, {"name": "y/1.dcm", "size": 1, "content": b"y"}],
                    root)
    assert list(root.iterdir()) == []  # nothing left behind
    kind, path, folder = save_upload([{"name": "../evil.nii.gz", "size": 3, "content": [b"a", b"bc"]}], root)
    assert kind == "image" and path == folder / "evil.nii.gz" and path.read_bytes() == b"abc"
    assert folder.parent == root


def test_a_websocket_message_cannot_allocate_more_than_the_upload_limit():
    from wslink import chunking
    from StrokeLesionLib.web.uploads import limit_websocket_messages
    original = chunking.UnChunker.set_max_message_size
    try:
        limit_websocket_messages(1.0)
        limit_websocket_messages(1.0)  # twice: still one cap, not a cap of a cap
        unchunker = chunking.UnChunker()
        unchunker.set_max_message_size(4 * 1024 ** 3)  # what wslink grants an authenticated client
        assert unchunker.max_message_size == 1_000_000 + 64 * 2 ** 20
        header = chunking._encode_header(7, 0, 2 * 1024 ** 3)  # a message declaring 2 GB
        with pytest.raises(ValueError, match="exceeds the allocation limit"):
            unchunker.process_chunk(header + b"x")
    finally:
        chunking.UnChunker.set_max_message_size = original


def test_an_upload_that_does_not_load_is_a_message_and_is_removed(tmp_path, app):
    run(app.upload([{"name": "scan.nii.gz", "size": 20, "content": b"\x1f\x8bnot really gzip data"}]))
    assert "scan.nii.gz" in app.state.error_message and "\n" not in app.state.error_message
    assert list(app.upload_root.iterdir()) == []
    assert not app.state.case_loaded


def test_curves_plot_draws_each_curve_and_gaps():
    svg = curves_svg({"time_s": [0, 1, 2, 3], "aif_hu": [40, 300, 100, 50], "vof_hu": [40, 60, 200, 80],
                      "aif_auto_hu": [40, 250, 90, 50], "vof_auto_hu": [40, 60, 200, 80],
                      "tissue_hu": [30, None, 35, 33]}, corrected=True)
    assert len(re.findall(r'data-curve="aif_hu"', svg)) == 1
    assert len(re.findall(r'data-curve="tissue_hu"', svg)) == 2  # the missing sample splits the line
    assert "aif_auto_hu" in svg and "time (s)" in svg
    assert "aif_auto_hu" not in curves_svg({"time_s": [0, 1], "aif_hu": [1, 2], "aif_auto_hu": [1, 2]})
    assert nice_ticks(0, 47) == [0, 10, 20, 30, 40]


def test_serve_refuses_bad_arguments_with_one_line(tmp_path):
    for args, message in ((["serve", str(tmp_path / "missing.nii.gz")], "does not exist"),
                          (["serve", "--port", "70000"], "--port"),
                          (["serve", "--max-upload-mb", "0"], "--max-upload-mb")):
        done = subprocess.run(strokelesion_command() + args, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def test_serve_binds_localhost_and_stops_on_sigterm(small_ctp, tmp_path):
    server = subprocess.Popen(strokelesion_command() + ["serve", str(small_ctp), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        assert re.match(r"serving http://127\.0\.0\.1:\d+/", line), line
        port = int(re.search(r":(\d+)/", line).group(1))
        # Linux's table of TCP sockets: the listening one on this port is bound to 127.0.0.1 (0100007F) only
        listening = [line.split()[1] for line in open("/proc/net/tcp", encoding="ascii").read().splitlines()[1:]
                     if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"]
        assert listening == ["0100007F:%04X" % port], listening
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 128 + signal.SIGTERM
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_deep_lesion_model_becomes_a_segment(small_ctp, app):
    run(app.open_path(small_ctp))
    app.state.selector = "classic"
    run(app.select_input_functions())
    run(app.compute_maps())
    app.state.lesion_model = "pseudodwi"
    run(app.create_segments())
    assert app.state.error_message == ""
    assert app.session.segment_id("lesion") is not None
    lesion = app.session.lesion.segmentMask(role="lesion")
    voxel_ml = app.session.series().geometry.voxel_volume_ml
    assert app.state.volumes["lesion_ml"] == pytest.approx(lesion.sum() * voxel_ml, abs=0.01)


def test_an_exported_scene_reopens_with_its_segments(small_ctp, tmp_path, app):
    run(app.open_path(small_ctp))
    app.state.selector = "classic"
    run(app.select_input_functions())
    run(app.compute_maps())
    run(app.create_segments())
    volumes = dict(app.state.volumes)
    (app.exports_dir / "private-notes.txt").write_text("a file of the user's")
    run(app.export())
    folder = app.state.exports[0]["folder"]
    served = sorted(p.relative_to(app.served_dir).as_posix() for p in app.served_dir.rglob("*") if p.is_file())
    assert served == ["export-1/report.json", "export-1/report.png", "export-1/scene.mrb"]
    other = new_app()
    try:
        run(other.open_path(folder))  # an export folder holds scene.mrb
        assert other.state.error_message == ""
        assert other.state.case_loaded and other.state.maps_ready and other.state.segments_ready
        assert other.state.volumes["core_ml"] == pytest.approx(volumes["core_ml"], abs=0.01)
        assert other.state.curves["aif_hu"] == app.state.curves["aif_hu"]
    finally:
        other.close()
