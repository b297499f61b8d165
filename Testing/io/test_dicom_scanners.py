"""DICOM as scanners write it: times only in AcquisitionDateTime, one enhanced multi-frame file with
per-frame functional groups, RLE-compressed images, and a toggling-table (shuttle) acquisition (refused,
with one line). Files are written by pydicom in the test."""
from datetime import datetime, timedelta

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (ExplicitVRLittleEndian, RLELossless, generate_uid)  # noqa: E402

from AIFSelectorLib.errors import InputError  # noqa: E402
from AIFSelectorLib.io.ctp_io import load_ctp  # noqa: E402

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
START = datetime(2026, 11, 30, 23, 59, 50)  # crosses midnight
SPACING = (0.8, 0.8, 5.0)  # x, y, z mm


def _series(n_frames=12, nz=4, ny=12, nx=10, seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-100, 200, size=(n_frames, nz, ny, nx)).astype(np.int16)
    times = np.cumsum(np.r_[0.0, np.full(n_frames - 1, 1.5)])
    return hu, times


def _base(sop_class, uid, rows, cols):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", uid, "1.2.3"
    ds.SeriesDescription = "CTP 4D"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def _dt(seconds: float) -> str:
    return (START + timedelta(seconds=float(seconds))).strftime("%Y%m%d%H%M%S.%f")


def write_single_frames(folder, hu, times, time_tag="datetime", slab_of=None, compress=False):
    """One file per slice and frame. time_tag 'datetime': AcquisitionDateTime only (no AcquisitionTime);
    slab_of(z) -> 0/1 with a time shift per slab (a shuttle acquisition: slab 1 a half interval later)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_frames, nz, ny, nx = hu.shape
    uid = generate_uid()
    for f in range(n_frames):
        for z in range(nz):
            ds = _base(CT_IMAGE, uid, ny, nx)
            shift = 0.75 * slab_of(z) if slab_of else 0.0
            ds.AcquisitionDateTime = _dt(times[f] + shift)
            ds.ImagePositionPatient = [0.0, 0.0, z * SPACING[2]]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [SPACING[1], SPACING[0]]
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.InstanceNumber = f * nz + z + 1
            ds.PixelData = (hu[f, z].astype(np.int16) + 1024).tobytes()
            if compress:
                ds.compress(RLELossless)
            ds.save_as(folder / f"im_{(f * 7 + z * 13) % 997:04d}_{f}_{z}.dcm", enforce_file_format=True)
    return folder


def write_enhanced(path, hu, times, per_slice_s=0.0, drop_groups=0):
    """One Enhanced CT file: frames shuffled, per-frame position and FrameAcquisitionDateTime (each slice
    ``per_slice_s`` later than the one before), shared spacing, orientation and rescale; ``drop_groups``
    per-frame groups missing (a corrupted file)."""
    n_frames, nz, ny, nx = hu.shape
    ds = _base(ENHANCED_CT, generate_uid(), ny, nx)
    order = np.random.default_rng(1).permutation(n_frames * nz)
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [SPACING[1], SPACING[0]], SPACING[2]
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = -1024, 1, "HU"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orient]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, pixels = [], []
    for k in order:
        f, z = divmod(int(k), nz)
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, z * SPACING[2]]
        content = Dataset()
        content.FrameAcquisitionDateTime = _dt(times[f] + per_slice_s * z)
        content.TemporalPositionIndex = f + 1
        item.PlanePositionSequence = [plane]
        item.FrameContentSequence = [content]
        frames.append(item)
        pixels.append(hu[f, z].astype(np.int16) + 1024)
    ds.PerFrameFunctionalGroupsSequence = frames[:len(frames) - drop_groups]
    ds.PixelData = np.stack(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _same(series, hu, times):
    np.testing.assert_array_equal(series.data, hu)
    np.testing.assert_allclose(series.times_s, times, atol=1e-4)
    np.testing.assert_allclose(series.geometry.spacing_mm, SPACING, atol=1e-6)


def test_times_only_in_acquisition_datetime(tmp_path):
    hu, times = _series()
    folder = write_single_frames(tmp_path / "dt", hu, times)
    _same(load_ctp(folder), hu, times)


def test_enhanced_multiframe_ct(tmp_path):
    hu, times = _series()
    path = write_enhanced(tmp_path / "enhanced.dcm", hu, times)
    series = load_ctp(path)
    _same(series, hu, times)
    assert series.source_info["series_description"] == "CTP 4D"
    _same(load_ctp(tmp_path), hu, times)  # the folder holding it


def test_rle_compressed_series(tmp_path):
    hu, times = _series(n_frames=10, nz=3)
    folder = write_single_frames(tmp_path / "rle", hu, times, compress=True)
    assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == RLELossless
    _same(load_ctp(folder), hu, times)


def test_toggling_table_acquisition_is_refused(tmp_path):
    hu, times = _series(nz=6)
    folder = write_single_frames(tmp_path / "shuttle", hu, times, slab_of=lambda z: int(z >= 3))
    with pytest.raises(InputError, match=r"toggling-table \(shuttle\) acquisition: 2 table positions "
                                         r"\(0 to 10 mm, 15 to 25 mm\)"):
        load_ctp(folder)


def test_enhanced_with_per_slice_times_and_a_corrupted_one(tmp_path, capsys):
    """Each slice stamped 0.1 s after the one before: frames grouped by TemporalPositionIndex, each time point
    at its slices' mean time; a file missing functional groups is one line, not a traceback."""
    hu, times = _series()
    series = load_ctp(write_enhanced(tmp_path / "stamped.dcm", hu, times, per_slice_s=0.1))
    np.testing.assert_array_equal(series.data, hu)
    np.testing.assert_allclose(series.times_s, times, atol=1e-4)
    broken = tmp_path / "broken"
    broken.mkdir()
    write_enhanced(broken / "broken.dcm", hu, times, drop_groups=3)
    with pytest.raises(InputError, match="per-frame functional groups"):
        load_ctp(broken / "broken.dcm")
