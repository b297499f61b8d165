"""Every CTP input format (4D NIfTI, Slicer .seq.nrrd, DICOM, ISLES 2018 layout, numpy), resampling of
irregular frame times, and the InputError for every kind of bad input."""
import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from AIFSelectorLib.io.dicom import dicom_time_s
from AIFSelectorLib.io.isles2018 import isles2018_case
from AIFSelectorLib.io.ctp_io import load_ctp, series_from_array, write_series_seq_nrrd
from AIFSelectorLib.io.time_grid import resample_uniform, uniform_grid
from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.volume_io import write_series_nifti, write_volume

ROT = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
C, S = np.cos(0.3), np.sin(0.3)
OBLIQUE = np.array([[C, 0.0, S], [0.0, 1.0, 0.0], [-S, 0.0, C]]) @ ROT
GEOMETRY = VolumeGeometry((0.5, 0.6, 2.5), (10.0, -20.0, 30.0), OBLIQUE)
IRREGULAR_TIMES = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0, 9.5, 11.0, 14.0, 17.0])


def make_series(n=12, dtype=np.float32, times=None, geometry=GEOMETRY, shape=(3, 4, 5), seed=0):
    rng = np.random.default_rng(seed)
    data = (40 + 100 * rng.random((n,) + shape)).astype(dtype)
    times = np.arange(n) * 1.5 if times is None else times
    return CTPSeries(data, times, geometry)


def assert_same_geometry(a: VolumeGeometry, b: VolumeGeometry, tol=1e-4):
    np.testing.assert_allclose(a.spacing_mm, b.spacing_mm, atol=tol)
    np.testing.assert_allclose(a.origin_mm, b.origin_mm, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol)


def patch_nifti(path, time_code=None, pixdim4=None, toffset=None, gzip_to=None):
    """Rewrites fields of an uncompressed NIfTI-1 header in place (and optionally gzips it to gzip_to)."""
    raw = bytearray(path.read_bytes())
    if time_code is not None:
        raw[123] = (raw[123] & 0x07) | time_code
    if pixdim4 is not None:
        struct.pack_into("<f", raw, 76 + 16, pixdim4)
    if toffset is not None:
        struct.pack_into("<f", raw, 136, toffset)
    path.write_bytes(bytes(raw))
    if gzip_to is not None:
        gzip_to.write_bytes(gzip.compress(bytes(raw)))
        return gzip_to
    return path


# ------------------------------------------------------------------------------------------------- NIfTI

def test_nifti_float_round_trip(tmp_path):
    series = make_series()
    path = write_series_nifti(tmp_path / "ctp.nii.gz", series)
    back = load_ctp(path)
    assert back.data.dtype == np.float32 and back.data.shape == series.data.shape
    np.testing.assert_array_equal(back.data, series.data)
    np.testing.assert_allclose(back.times_s, series.times_s, atol=1e-6)
    assert_same_geometry(back.geometry, series.geometry)
    import nibabel as nib
    assert nib.load(str(path)).header.get_xyzt_units() == ("mm", "sec")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_int16_with_millisecond_units(tmp_path, suffix):
    series = make_series(dtype=np.int16)
    path = write_series_nifti(tmp_path / "ctp.nii", series)
    path = patch_nifti(path, time_code=16, pixdim4=1500.0, toffset=3000.0,
                       gzip_to=tmp_path / "ms.nii.gz" if suffix == ".nii.gz" else None)
    back = load_ctp(path)
    assert back.data.dtype == np.int16
    np.testing.assert_array_equal(back.data, series.data)
    np.testing.assert_allclose(back.times_s, 3.0 + 1.5 * np.arange(12), atol=1e-6)
    assert_same_geometry(back.geometry, series.geometry)


def test_nifti_time_unit_rules_and_dt_override(tmp_path):
    path = write_series_nifti(tmp_path / "ctp.nii", make_series())
    patch_nifti(path, time_code=0, pixdim4=2.0)  # no unit, plausible: seconds
    np.testing.assert_allclose(load_ctp(path).times_s, 2.0 * np.arange(12))
    np.testing.assert_allclose(load_ctp(path, dt_s=0.8).times_s, 0.8 * np.arange(12))
    patch_nifti(path, time_code=0, pixdim4=0.0)
    with pytest.raises(InputError, match=r"ctp\.nii: frame times are missing .*pass --dt SECONDS"):
        load_ctp(path)
    np.testing.assert_allclose(load_ctp(path, dt_s=1.0).times_s, np.arange(12))
    patch_nifti(path, time_code=16, pixdim4=1.0)  # 1 ms frames: a unit mistake
    with pytest.raises(InputError, match=r"ctp\.nii: frame interval 0\.001 s .* implausible.*--dt"):
        load_ctp(path)
    with pytest.raises(InputError, match="positive number of seconds"):
        load_ctp(path, dt_s=-1)


def test_nifti_bad_files(tmp_path):
    with pytest.raises(InputError, match="file not found: .*missing.nii.gz"):
        load_ctp(tmp_path / "missing.nii.gz")
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image\n" * 20)
    with pytest.raises(InputError, match=r"cannot read notes\.nii\.gz: not a NIfTI image"):
        load_ctp(text)
    for dtype in (np.float32, np.int16):  # floats are read here, integers by SimpleITK: both checked
        full = write_series_nifti(tmp_path / "full.nii.gz", make_series(shape=(6, 16, 16), dtype=dtype))
        half = tmp_path / "half.nii.gz"
        half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(InputError, match=r"cannot read half\.nii\.gz: the file is truncated or corrupted"):
            load_ctp(half)
        raw = write_series_nifti(tmp_path / "raw.nii", make_series(dtype=dtype))
        cut = tmp_path / "cut.nii"
        cut.write_bytes(raw.read_bytes()[:-100])
        with pytest.raises(InputError, match=r"cannot read cut\.nii: the file is truncated"):
            load_ctp(cut)
    volume = write_volume(tmp_path / "ncct.nii.gz", np.zeros((3, 4, 5), np.int16), GEOMETRY)
    with pytest.raises(InputError, match=r"ncct\.nii\.gz is a 3D volume, not a 4D CT perfusion series"):
        load_ctp(volume)
    image = sitk.GetImageFromArray(np.zeros((5, 3, 4, 5), np.float32), isVector=False)
    image.SetSpacing((1.0, 1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "short.nii.gz"))
    with pytest.raises(InputError, match=r"short\.nii\.gz: a CTP series needs at least 10 time frames; got 5"):
        load_ctp(tmp_path / "short.nii.gz")
    nan = make_series()
    nan.data[3, 1, 2, 2] = np.nan
    image = sitk.GetImageFromArray(nan.data, isVector=False)
    image.SetSpacing((1.0, 1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "nan.nii.gz"))
    with pytest.raises(InputError, match=r"nan\.nii\.gz: the CTP series contains NaN or infinite values"):
        load_ctp(tmp_path / "nan.nii.gz")
    other = tmp_path / "ctp.txt"
    other.write_text("1,2,3\n")
    with pytest.raises(InputError, match=r"ctp\.txt: unsupported file type"):
        load_ctp(other)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError, match=r"empty_folder: no CT perfusion series found"):
        load_ctp(empty)


# ---------------------------------------------------------------------------------------------- .seq.nrrd

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def write_slicer_sequence(slicer, path, series: CTPSeries, unit="s", scale=1.0):
    """A .seq.nrrd written by slicer-core itself: a sequence of scalar volume nodes, saved through
    vtkMRMLVolumeSequenceStorageNode."""
    import vtk
    from vtk.util import numpy_support
    scene = slicer.vtkMRMLScene()
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit(unit)
    sequence.SetIndexType(sequence.NumericIndex)
    g = series.geometry
    ras_direction = LPS_FROM_RAS @ np.asarray(g.direction).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, ras_direction[r, c])
    for t, frame in zip(series.times_s, series.data):
        image = vtk.vtkImageData()
        nz, ny, nx = frame.shape
        image.SetDimensions(nx, ny, nz)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(frame.ravel(), deep=True))
        volume = slicer.vtkMRMLScalarVolumeNode()
        volume.SetAndObserveImageData(image)
        volume.SetSpacing(*g.spacing_mm)
        volume.SetOrigin(*(LPS_FROM_RAS @ np.asarray(g.origin_mm)))
        volume.SetIJKToRASDirectionMatrix(matrix)
        sequence.SetDataNodeAtValue(volume, repr(float(t) * scale))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    sequence.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.WriteData(sequence) == 1
    return path


def test_seq_nrrd_written_by_slicer_core(tmp_path):
    slicer = pytest.importorskip("slicer")
    series = make_series(dtype=np.int16, times=IRREGULAR_TIMES)
    path = write_slicer_sequence(slicer, tmp_path / "ctp.seq.nrrd", series)
    header = path.read_bytes()[:1200].split(b"\n\n")[0].decode()
    assert "kinds: domain domain domain list" in header and "axis 3 index values:=" in header
    back = load_ctp(path)
    assert back.data.dtype == np.int16
    np.testing.assert_array_equal(back.data, series.data)
    np.testing.assert_allclose(back.times_s, IRREGULAR_TIMES)
    assert_same_geometry(back.geometry, series.geometry)
    ms = write_slicer_sequence(slicer, tmp_path / "ms.seq.nrrd", series, unit="ms", scale=1000.0)
    np.testing.assert_allclose(load_ctp(ms).times_s, IRREGULAR_TIMES)


@pytest.mark.parametrize("list_axis", [0, 3])
def test_seq_nrrd_writer_is_read_by_slicer_core(tmp_path, list_axis):
    slicer = pytest.importorskip("slicer")
    from vtk.util import numpy_support
    series = make_series(times=IRREGULAR_TIMES + 2.25)
    path = write_series_seq_nrrd(tmp_path / "ctp.seq.nrrd", series, list_axis=list_axis)
    assert f"axis {list_axis} index values:=2.25 3.25 ".encode() in path.read_bytes()[:2000]
    scene = slicer.vtkMRMLScene()
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(sequence) == 1
    assert sequence.GetNumberOfDataNodes() == 12
    assert (sequence.GetIndexName(), sequence.GetIndexUnit()) == ("time", "s")
    np.testing.assert_allclose([float(sequence.GetNthIndexValue(i)) for i in range(12)], series.times_s)
    volume = sequence.GetNthDataNode(4)
    assert volume.IsA("vtkMRMLScalarVolumeNode")
    frame = numpy_support.vtk_to_numpy(volume.GetImageData().GetPointData().GetScalars())
    np.testing.assert_array_equal(frame.reshape(series.shape_zyx), series.data[4])
    np.testing.assert_allclose(volume.GetSpacing(), GEOMETRY.spacing_mm)
    np.testing.assert_allclose(volume.GetOrigin(), LPS_FROM_RAS @ np.asarray(GEOMETRY.origin_mm), atol=1e-6)
    import vtk
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASDirectionMatrix(m)
    ras = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
    np.testing.assert_allclose(ras, LPS_FROM_RAS @ OBLIQUE, atol=1e-9)


def test_seq_nrrd_writer_round_trip(tmp_path):
    series = make_series(dtype=np.int16, times=IRREGULAR_TIMES)
    for compress, list_axis in ((True, 0), (False, 0), (True, 3), (False, 3)):
        path = write_series_seq_nrrd(tmp_path / f"c{compress}{list_axis}.seq.nrrd", series, compress=compress,
                                     list_axis=list_axis)
        back = load_ctp(path)
        assert back.data.dtype == np.int16
        np.testing.assert_array_equal(back.data, series.data)
        np.testing.assert_allclose(back.times_s, IRREGULAR_TIMES)
        assert_same_geometry(back.geometry, series.geometry, tol=1e-9)
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def _nrrd(path, header_lines, data):
    path.write_bytes(("\n".join(["NRRD0004"] + header_lines) + "\n\n").encode() + data.tobytes())
    return path


def test_seq_nrrd_old_layout_ras_milliseconds(tmp_path):
    """Slicer < 5.9 put the list axis first; a RAS file must come out in LPS."""
    data = np.arange(12 * 2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4, 12)  # (z, y, x, t): t fastest
    times_ms = " ".join(str(int(1000 * t)) for t in IRREGULAR_TIMES)
    path = _nrrd(tmp_path / "old.seq.nrrd", [
        "type: short", "dimension: 4", "space: right-anterior-superior", "sizes: 12 4 3 2",
        "space directions: none (0.5,0,0) (0,0.6,0) (0,0,2)", "kinds: list domain domain domain",
        'labels: "time" "" "" ""', 'units: "ms" "" "" ""', "endian: little", "encoding: raw",
        "space origin: (10,20,30)", "axis 0 index type:=numeric", f"axis 0 index values:={times_ms}"], data)
    series = load_ctp(path)
    np.testing.assert_array_equal(series.data, np.moveaxis(data, -1, 0))
    np.testing.assert_allclose(series.times_s, IRREGULAR_TIMES)
    np.testing.assert_allclose(series.geometry.origin_mm, (-10, -20, 30))
    np.testing.assert_allclose(series.geometry.direction, np.diag([-1.0, -1.0, 1.0]).ravel())
    np.testing.assert_allclose(series.geometry.spacing_mm, (0.5, 0.6, 2.0))


def test_seq_nrrd_bad_frame_times(tmp_path):
    data = np.zeros((12, 2, 3, 4), np.float32)
    common = ["type: float", "dimension: 4", "space: left-posterior-superior", "sizes: 4 3 2 12",
              "space directions: (1,0,0) (0,1,0) (0,0,1) none", "kinds: domain domain domain list",
              "endian: little", "encoding: raw", "space origin: (0,0,0)"]
    no_times = _nrrd(tmp_path / "notimes.seq.nrrd", common, data)
    with pytest.raises(InputError, match=r"notimes\.seq\.nrrd: frame times are missing.*--dt SECONDS"):
        load_ctp(no_times)
    assert load_ctp(no_times, dt_s=2.0).dt_s == 2.0
    backwards = " ".join(str(t) for t in IRREGULAR_TIMES[::-1])
    path = _nrrd(tmp_path / "backwards.seq.nrrd", common + ['units: "" "" "" "s"',
                                                            f"axis 3 index values:={backwards}"], data)
    with pytest.raises(InputError, match=r"backwards\.seq\.nrrd: frame times must be strictly increasing"):
        load_ctp(path)
    frames = _nrrd(tmp_path / "frames.seq.nrrd", common + ['labels: "" "" "" "frame"',
                                                           "axis 3 index values:=" + " ".join(map(str, range(12)))],
                   data)
    with pytest.raises(InputError, match=r"frames\.seq\.nrrd: frame times are missing \(the sequence index 'frame'"):
        load_ctp(frames)
    flat = write_volume(tmp_path / "flat.nrrd", np.zeros((3, 4, 5), np.int16), GEOMETRY)
    with pytest.raises(InputError, match=r"flat\.nrrd is a 3D volume"):
        load_ctp(flat)
    full = write_series_seq_nrrd(tmp_path / "full.seq.nrrd", make_series(shape=(6, 16, 16)))
    half = tmp_path / "half.seq.nrrd"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cannot read half\.seq\.nrrd: .*truncated or corrupted"):
        load_ctp(half)
    text = tmp_path / "text.seq.nrrd"
    text.write_text("NRRD? no, a note\n")
    with pytest.raises(InputError, match=r"cannot read text\.seq\.nrrd: not a NRRD image"):
        load_ctp(text)
    nan = make_series()
    nan.data[5, 0, 1, 1] = np.inf
    path = write_series_seq_nrrd(tmp_path / "nan.seq.nrrd", nan)
    with pytest.raises(InputError, match=r"nan\.seq\.nrrd: the CTP series contains NaN or infinite values"):
        load_ctp(path)


# ------------------------------------------------------------------------------------------------- DICOM

SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.4242"


def tm(seconds_of_day):
    seconds_of_day %= 86400.0
    hh, rest = divmod(seconds_of_day, 3600.0)
    mm, ss = divmod(rest, 60.0)
    return f"{int(hh):02d}{int(mm):02d}{ss:09.6f}"


def write_dicom_ctp(folder, hu_tzyx, times_s, start_s=86390.0, geometry=GEOMETRY, per_slice_times=False,
                    time_tags=("0008|0032",), temporal_position=False, skip=()):
    """One DICOM file per slice and frame with Rescale Intercept -1024 (SimpleITK's writer takes HU and
    stores HU + 1024), files named so that their order is neither slice nor time order."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = np.asarray(geometry.direction).reshape(3, 3)
    n_frames, nz = hu_tzyx.shape[:2]
    for f in range(n_frames):
        for z in range(nz):
            if (f, z) in skip:
                continue
            image = sitk.GetImageFromArray(hu_tzyx[f, z][None].astype(np.int16))
            position = np.asarray(geometry.origin_mm) + z * geometry.spacing_mm[2] * direction[:, 2]
            image.SetSpacing(geometry.spacing_mm)
            image.SetOrigin(tuple(position))
            image.SetDirection(tuple(direction.ravel()))
            t = start_s + times_s[f] + (0.05 * z if per_slice_times else 0.0)
            tags = {"0008|0060": "CT", "0020|000e": SERIES_UID, "0020|0013": str(f * nz + z + 1),
                    "0020|0032": "\\".join(f"{c:.6f}" for c in position),
                    "0020|0037": "\\".join(f"{c:.9f}" for c in np.concatenate([direction[:, 0], direction[:, 1]])),
                    "0028|1052": "-1024", "0028|1053": "1"}
            for tag in time_tags:
                tags[tag] = tm(t)
            if temporal_position:
                tags["0020|0100"] = str(f + 1)
                tags["0018|1060"] = f"{1000.0 * times_s[f]:.1f}"
            for k, v in tags.items():
                image.SetMetaData(k, v)
            writer.SetFileName(str(folder / f"IM{(z * 7 + f * 13) % 1000:04d}_{f}_{z}.dcm"))
            writer.Execute(image)
    return folder


def test_dicom_irregular_times_across_midnight(tmp_path):
    series = make_series(times=IRREGULAR_TIMES, dtype=np.int16, shape=(4, 6, 5))
    folder = write_dicom_ctp(tmp_path / "dicom", series.data, IRREGULAR_TIMES, start_s=86395.5)
    last = sorted(folder.glob("*_11_3.dcm"))[0].read_bytes()[-2 * 6 * 5:]  # pixel data: stored = HU + 1024
    np.testing.assert_array_equal(np.frombuffer(last, "<i2").reshape(6, 5), series.data[11, 3] + 1024)
    back = load_ctp(folder)
    assert back.data.dtype == np.int16
    np.testing.assert_array_equal(back.data, series.data)
    np.testing.assert_allclose(back.times_s, IRREGULAR_TIMES, atol=1e-5)
    assert_same_geometry(back.geometry, series.geometry, tol=1e-4)
    one_file = sorted(folder.iterdir())[5]
    np.testing.assert_array_equal(load_ctp(one_file).data, series.data)  # a file stands for its series
    resampled = resample_uniform(back)
    assert resampled.is_uniform and resampled.dt_s == pytest.approx(1.0)


def test_dicom_per_slice_times_content_time_and_temporal_position(tmp_path):
    series = make_series(times=IRREGULAR_TIMES, dtype=np.int16, shape=(3, 4, 5), geometry=VolumeGeometry())
    stamped = write_dicom_ctp(tmp_path / "stamped", series.data, IRREGULAR_TIMES, per_slice_times=True,
                              geometry=series.geometry, start_s=3600.0)
    back = load_ctp(stamped)
    np.testing.assert_array_equal(back.data, series.data)
    np.testing.assert_allclose(back.times_s, IRREGULAR_TIMES, atol=1e-5)
    content = write_dicom_ctp(tmp_path / "content", series.data, IRREGULAR_TIMES, time_tags=("0008|0033",),
                              geometry=series.geometry)
    np.testing.assert_allclose(load_ctp(content).times_s, IRREGULAR_TIMES, atol=1e-5)
    trigger = write_dicom_ctp(tmp_path / "trigger", series.data, IRREGULAR_TIMES, time_tags=(),
                              temporal_position=True, geometry=series.geometry)
    back = load_ctp(trigger)
    np.testing.assert_array_equal(back.data, series.data)
    np.testing.assert_allclose(back.times_s, IRREGULAR_TIMES, atol=1e-5)


def test_dicom_bad_series(tmp_path):
    series = make_series(dtype=np.int16, shape=(3, 4, 5), geometry=VolumeGeometry())
    holed = write_dicom_ctp(tmp_path / "holed", series.data, series.times_s, skip={(4, 1)},
                            geometry=series.geometry)
    with pytest.raises(InputError, match=r"holed: the DICOM frames have different slice counts \(2, 3 slices"):
        load_ctp(holed)
    untimed = write_dicom_ctp(tmp_path / "untimed", series.data, series.times_s, time_tags=(),
                              geometry=series.geometry)
    with pytest.raises(InputError, match=r"untimed: frame times are missing.*--dt SECONDS"):
        load_ctp(untimed)
    np.testing.assert_allclose(load_ctp(untimed, dt_s=2.0).times_s, 2.0 * np.arange(12))
    single = write_dicom_ctp(tmp_path / "single", series.data[:1], series.times_s[:1], geometry=series.geometry)
    with pytest.raises(InputError, match=r"single: the DICOM series has one image per slice position: a 3D"):
        load_ctp(single)


def test_dicom_time_parsing():
    assert dicom_time_s("235959.500000 ") == pytest.approx(86399.5)
    assert dicom_time_s("10:20:30.25") == pytest.approx(37230.25)
    assert dicom_time_s("1020") == pytest.approx(37200.0)
    assert dicom_time_s("") is None and dicom_time_s("abc") is None


# -------------------------------------------------------------------------------------------- ISLES 2018

def make_isles_case(root, case_id=345560, with_ot=True, with_pwi=True):
    case = root / "case_7"
    geometry = VolumeGeometry((0.9, 0.9, 5.0))
    modalities = ["CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax"] + (["OT"] if with_ot else [])
    for i, modality in enumerate(modalities):
        name = f"SMIR.Brain.XX.O.{modality}.{case_id + i}"
        write_volume(case / name / f"{name}.nii", np.full((2, 4, 5), i, np.int16), geometry)
    series = None
    if with_pwi:
        series = make_series(dtype=np.int16, geometry=geometry, shape=(2, 4, 5), times=np.arange(12.0))
        name = f"SMIR.Brain.XX.O.CT_4DPWI.{case_id + 10}"
        write_series_nifti(case / name / f"{name}.nii", series)
    return case, series


def test_isles2018_layout(tmp_path):
    case, series = make_isles_case(tmp_path)
    paths = isles2018_case(case)
    assert sorted(paths) == sorted(["CT", "CT_4DPWI", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "OT"])
    assert paths["CT_4DPWI"].name == "SMIR.Brain.XX.O.CT_4DPWI.345570.nii"
    assert paths["OT"].parent.name == "SMIR.Brain.XX.O.OT.345565"
    back = load_ctp(case)
    np.testing.assert_array_equal(back.data, series.data)
    np.testing.assert_allclose(back.times_s, np.arange(12.0))
    np.testing.assert_array_equal(load_ctp(paths["CT_4DPWI"].parent).data, series.data)  # the modality folder
    test_case, _ = make_isles_case(tmp_path / "test", with_ot=False, with_pwi=False)
    assert "OT" not in isles2018_case(test_case)
    with pytest.raises(InputError, match=r"case_7: ISLES 2018 case folder without a CT_4DPWI"):
        load_ctp(test_case)
    with pytest.raises(InputError, match="not an ISLES 2018 case folder"):
        isles2018_case(tmp_path)


# ------------------------------------------------------------------------------------ numpy and resampling

def test_series_from_array():
    data = np.zeros((12, 2, 3, 4), np.int16)
    s = series_from_array(data, dt_s=1.5, spacing_mm=(0.5, 0.5, 5.0), origin_mm=(1, 2, 3),
                          direction=ROT.ravel())
    assert s.data is data
    np.testing.assert_allclose(s.times_s, 1.5 * np.arange(12))
    assert s.geometry.spacing_mm == (0.5, 0.5, 5.0) and s.geometry.origin_mm == (1.0, 2.0, 3.0)
    np.testing.assert_allclose(series_from_array(data, times_s=IRREGULAR_TIMES).times_s, IRREGULAR_TIMES)
    with pytest.raises(InputError, match="not both"):
        series_from_array(data, dt_s=1.0, times_s=IRREGULAR_TIMES)
    with pytest.raises(InputError, match="frame times are missing"):
        series_from_array(data)
    with pytest.raises(InputError, match="array: a CTP series needs at least 10 time frames; got 4"):
        series_from_array(data[:4], dt_s=1.0)
    with pytest.raises(InputError, match="array: a CTP series must be 4D"):
        series_from_array(data[0], dt_s=1.0)


def test_resample_uniform():
    uniform = make_series()
    assert resample_uniform(uniform) is uniform
    # data linear in time are reproduced exactly by linear interpolation
    t = IRREGULAR_TIMES
    ramp = (10.0 + 2.0 * t)[:, None, None, None] * np.ones((1, 2, 3, 4))
    series = CTPSeries(ramp.astype(np.int16), t, GEOMETRY)
    out = resample_uniform(series)
    assert out.data.dtype == np.float32 and out.is_uniform
    np.testing.assert_allclose(out.times_s, np.arange(18.0))  # smallest interval 1 s, 0 .. 17 s
    np.testing.assert_allclose(out.data[:, 1, 2, 3], 10.0 + 2.0 * out.times_s, rtol=1e-6)
    assert out.geometry == series.geometry
    coarse = resample_uniform(series, dt_s=1.5)
    np.testing.assert_allclose(coarse.times_s, np.arange(0.0, 17.0, 1.5))
    np.testing.assert_allclose(coarse.data[:, 0, 0, 0], 10.0 + 2.0 * coarse.times_s, rtol=1e-6)
    with pytest.raises(InputError, match=r"resampled to a uniform 2 s grid: .*at least 10 time frames; got 9"):
        resample_uniform(series, dt_s=2.0)
    np.testing.assert_allclose(resample_uniform(uniform, dt_s=0.75).times_s, np.arange(0, 16.6, 0.75))
    fine = np.array([0.0, 0.1, 0.2] + list(np.arange(1.0, 12.0)))
    np.testing.assert_allclose(np.diff(uniform_grid(fine)), 0.5)  # never finer than 0.5 s by default


def test_nifti_gzip_inflate_members_fallback_and_corruption(tmp_path, monkeypatch):
    """.nii.gz voxels are inflated straight into the array (python-isal when installed, else zlib): the same
    voxels either way, a file of several gzip members (as pigz or concatenation write) reads whole, and a
    damaged byte inside the stream is one InputError line, not wrong voxels."""
    import zlib
    from AIFSelectorLib.io import nifti
    series = make_series(shape=(6, 16, 16), dtype=np.int16)
    path = write_series_nifti(tmp_path / "ctp.nii.gz", series)
    read = load_ctp(path).data
    np.testing.assert_array_equal(read, series.data)
    monkeypatch.setattr(nifti, "_inflater", lambda: (zlib.decompressobj, zlib.error))
    np.testing.assert_array_equal(load_ctp(path).data, read)
    monkeypatch.setattr(nifti, "INFLATE_BLOCK_BYTES", 999)  # members and blocks split at odd places
    raw = gzip.decompress(path.read_bytes())
    parts = [raw[:1000], raw[1000:5001], raw[5001:]]
    members = tmp_path / "members.nii.gz"
    members.write_bytes(b"".join(gzip.compress(p) for p in parts))
    np.testing.assert_array_equal(load_ctp(members).data, read)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    bad = tmp_path / "damaged.nii.gz"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=r"^cannot read damaged\.nii\.gz: the file is truncated or corrupted"):
        load_ctp(bad)


def test_memory_check_counts_stored_values_and_voxels(monkeypatch):
    """A 512x512x320x25 int16 whole brain needs 1.5 x (its 4.2 GB as stored + 64 bytes per voxel) = 13.3 GiB: it
    is read on a 16 GiB machine; the same values as float32 (a scaled header) are refused there, in one line."""
    from AIFSelectorLib.io import nifti
    monkeypatch.setattr(nifti, "available_memory_bytes", lambda: 16 << 30)
    n_voxels = 512 * 512 * 320
    nifti.check_memory(n_voxels * 25, "brain.nii.gz", itemsize=2, n_voxels=n_voxels)
    with pytest.raises(InputError, match=r"brain\.nii\.gz declares 2,097,152,000 voxel values, about 19\.2 GiB .* "
                                         r"16\.0 GiB of memory available: refusing to allocate it"):
        nifti.check_memory(n_voxels * 25, "brain.nii.gz", itemsize=4, n_voxels=n_voxels)


def test_a_nifti_dicom_extension_is_kept_unparsed_and_pydicom_is_not_imported(tmp_path):
    """NIfTI extension code 2 (a DICOM header) holds untrusted bytes the project never reads: nibabel keeps it as
    raw bytes instead of parsing it with pydicom (which then is not imported at all for a NIfTI series)."""
    import subprocess
    import sys
    import nibabel as nib
    data = np.random.default_rng(0).normal(40, 5, (3, 8, 8, 12)).astype(np.float32)  # x, y, z, t
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 5.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 1.0
    # bytes 4:6 are not UTF-8: pydicom's parser refused such a file as "not a NIfTI image"
    img.header.extensions.append(nib.nifti1.Nifti1Extension(2, b"\x00\x01\x02\x03\xff\xfe not DICOM" * 3))
    path = tmp_path / "with_extension.nii.gz"
    nib.save(img, str(path))
    code = ("import sys; from AIFSelectorLib.io.ctp_io import load_ctp; "
            f"s = load_ctp({str(path)!r}); print(s.data.shape, 'pydicom' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["(12,", "8,", "8,", "3)", "False"], done.stderr[-2000:]
    # where pydicom and nibabel were imported before (Slicer, a DICOM series read earlier): still not parsed
    code = ("import pydicom, nibabel; from AIFSelectorLib.io.ctp_io import load_ctp; "
            f"print(load_ctp({str(path)!r}).data.shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["(12,", "8,", "8,", "3)"], done.stderr[-2000:]
