"""Bad input through the command line: one-line error naming the problem, exit status 2, no output."""
import gzip
import shutil

import numpy as np
import pytest

from AIFSelectorLib.io.aif_csv import write_aif_csv
from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry
from AIFSelectorLib.io.volume_io import write_series_nifti, write_volume
from StrokeLesionLib.cli import main


@pytest.fixture(scope="module")
def case_dir(small_case, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    write_series_nifti(d / "ctp.nii.gz", small_case.series)
    write_aif_csv(d / "aif.csv", small_case.series.times_s, small_case.aif_hu, small_case.vof_hu)
    return d, small_case


def _fails(capsys, argv, out, *words):
    """Runs the CLI, checks exit status 2, a single stderr line naming the problem and no output."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("strokelesion: error: ")
    for w in words:
        assert w.lower() in err.lower(), err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "staging folder left behind"
    return err


def _series(data, dt=1.0):
    return CTPSeries(data, np.arange(data.shape[0]) * dt, VolumeGeometry((1, 1, 5)))


def test_3d_volume(tmp_path, capsys):
    write_volume(tmp_path / "vol.nii.gz", np.zeros((4, 16, 16), np.int16), VolumeGeometry())
    _fails(capsys, ["run", tmp_path / "vol.nii.gz", "--out", tmp_path / "o"], tmp_path / "o", "3D")


def test_too_few_frames(tmp_path, capsys):
    data = np.zeros((8, 4, 16, 16), np.int16)
    write_series_nifti(tmp_path / "short.nii.gz", _series_unchecked(data))
    _fails(capsys, ["run", tmp_path / "short.nii.gz", "--out", tmp_path / "o"], tmp_path / "o", "10", "frames")


def _series_unchecked(data, dt=1.0):
    """A series object holding data the container would refuse (to write bad files with our writer)."""
    s = object.__new__(CTPSeries)
    s.data, s.times_s, s.geometry = data, np.arange(data.shape[0]) * dt, VolumeGeometry((1, 1, 5))
    return s


def test_nan_values(tmp_path, capsys):
    data = np.full((12, 4, 16, 16), 30.0, np.float32)
    data[5, 2, 3, 3] = np.nan
    write_series_nifti(tmp_path / "nan.nii.gz", _series_unchecked(data))
    _fails(capsys, ["run", tmp_path / "nan.nii.gz", "--out", tmp_path / "o"], tmp_path / "o", "NaN")


def test_missing_frame_interval(tmp_path, capsys):
    data = np.full((12, 4, 16, 16), 30, np.int16)
    write_series_nifti(tmp_path / "ctp.nii", _series(data))
    raw = bytearray((tmp_path / "ctp.nii").read_bytes())
    raw[92:96] = np.float32(0).tobytes()       # pixdim[4] = 0
    raw[123] = 0                               # xyzt_units unknown
    (tmp_path / "ctp.nii").write_bytes(bytes(raw))
    _fails(capsys, ["run", tmp_path / "ctp.nii", "--out", tmp_path / "o"], tmp_path / "o", "frame")


def test_non_increasing_frame_times(tmp_path, capsys):
    from AIFSelectorLib.io.ctp_io import write_series_seq_nrrd
    data = np.full((12, 4, 16, 16), 30, np.int16)
    path = tmp_path / "ctp.seq.nrrd"
    write_series_seq_nrrd(path, _series(data))
    text = path.read_bytes()
    head, sep, body = text.partition(b"\n\n")
    lines = head.split(b"\n")
    for i, line in enumerate(lines):
        if line.lower().startswith(b"axis 0 index values:="):
            lines[i] = b"axis 0 index values:=" + b" ".join(b"%d" % v for v in [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11])
    path.write_bytes(b"\n".join(lines) + sep + body)
    _fails(capsys, ["run", path, "--out", tmp_path / "o"], tmp_path / "o", "increasing")


def test_aif_file_wrong_length(case_dir, tmp_path, capsys):
    d, case = case_dir
    t = case.series.times_s[:-3]
    write_aif_csv(tmp_path / "short.csv", t, case.aif_hu[:-3])
    _fails(capsys, ["maps", d / "ctp.nii.gz", "--aif", tmp_path / "short.csv", "--out", tmp_path / "o"],
           tmp_path / "o", "27", "30")


def test_aif_file_wrong_columns(case_dir, tmp_path, capsys):
    d, _ = case_dir
    (tmp_path / "cols.csv").write_text("t,signal\n0,40\n1,41\n")
    _fails(capsys, ["maps", d / "ctp.nii.gz", "--aif", tmp_path / "cols.csv", "--out", tmp_path / "o"],
           tmp_path / "o", "aif_hu")


def test_mask_of_another_geometry(case_dir, tmp_path, capsys):
    d, _ = case_dir
    write_volume(tmp_path / "mask.nii.gz", np.ones((4, 32, 32), np.uint8), VolumeGeometry())
    _fails(capsys, ["run", d / "ctp.nii.gz", "--mask", tmp_path / "mask.nii.gz", "--out", tmp_path / "o"],
           tmp_path / "o", "geometry")


def test_non_image_file(tmp_path, capsys):
    (tmp_path / "notes.nii.gz").write_text("this is not an image\n")
    _fails(capsys, ["run", tmp_path / "notes.nii.gz", "--out", tmp_path / "o"], tmp_path / "o", "notes.nii.gz")


def test_truncated_file(case_dir, tmp_path, capsys):
    d, _ = case_dir
    raw = gzip.decompress((d / "ctp.nii.gz").read_bytes())
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    _fails(capsys, ["run", tmp_path / "cut.nii", "--out", tmp_path / "o"], tmp_path / "o", "cut.nii")


def test_existing_output_folder_is_kept(case_dir, tmp_path, capsys):
    d, _ = case_dir
    out = tmp_path / "results"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    status = main(["run", str(d / "ctp.nii.gz"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "already exists" in err and len(err.splitlines()) == 1
    assert (out / "mine.txt").read_text(encoding="utf-8") == "keep me" and len(list(out.iterdir())) == 1
    shutil.rmtree(out)
