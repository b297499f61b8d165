"""Dataset readers (ISLES 2018, AISD, ATLAS) on tiny files laid out exactly as the public sets are."""
import numpy as np
import pytest
import SimpleITK as sitk

from AIFSelectorLib.io.ctp_io import series_from_array
from AIFSelectorLib.ctp_series import VolumeGeometry
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.volume_io import write_series_nifti, write_volume
from training.lesion_data import aisd, atlas, isles2018

# ------------------------------------------------------------------------------------------- ISLES 2018

ISLES_GEOMETRY = VolumeGeometry((0.9, 0.9, 5.0), (-100.0, -110.0, 20.0))
ISLES_MODALITIES = ("CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "OT", "MR_DWI")


def make_isles_case(root, number, first_id, shape=(2, 6, 5), skip=(), bad_shape=None, n_frames=14):
    """TRAINING/case_<number>/SMIR.Brain.XX.O.<modality>.<id>/SMIR.Brain.XX.O.<modality>.<id>.nii, the
    values of modality i are i + the voxel index, so a mix-up shows."""
    case = root / f"case_{number}"
    rng = np.random.default_rng(number)
    index = np.arange(np.prod(shape)).reshape(shape)
    for i, modality in enumerate(ISLES_MODALITIES):
        if modality in skip:
            continue
        name = f"SMIR.Brain.XX.O.{modality}.{first_id + i}"
        if modality == "OT":
            array = (index % 3 == 0).astype(np.uint8)
        else:
            array = (100 * i + index).astype(np.int16)
        if modality == bad_shape:
            array = array[:, :-1]
        write_volume(case / name / f"{name}.nii", array, ISLES_GEOMETRY)
    data = (40 + rng.normal(0, 3, (n_frames,) + shape)).astype(np.int16)
    name = f"SMIR.Brain.XX.O.CT_4DPWI.{first_id + 10}"
    write_series_nifti(case / name / f"{name}.nii", series_from_array(
        data, dt_s=1.0, spacing_mm=ISLES_GEOMETRY.spacing_mm, origin_mm=ISLES_GEOMETRY.origin_mm))
    return case, data


def test_isles2018_training_and_testing_cases(tmp_path):
    root = tmp_path / "ISLES2018_Training" / "TRAINING"
    case10, _ = make_isles_case(root, 10, 345600)
    case2, data = make_isles_case(root, 2, 345500)
    test_case, _ = make_isles_case(tmp_path / "ISLES2018_Testing" / "TESTING", 1, 346000, skip=("OT", "MR_DWI"))
    assert isles2018.list_cases(tmp_path / "ISLES2018_Training") == [case2, case10]  # numeric order
    assert isles2018.list_cases(root) == [case2, case10]
    assert isles2018.list_cases(case2) == [case2]

    c = isles2018.load_case(case2)
    assert c["case_id"] == "case_2"
    np.testing.assert_array_equal(c["series"].data, data)
    np.testing.assert_allclose(c["series"].times_s, np.arange(14.0))
    assert c["geometry"].matches(ISLES_GEOMETRY)
    index = np.arange(60).reshape(2, 6, 5)
    for key, i in (("cbf", 1), ("cbv", 2), ("mtt", 3), ("tmax", 4)):
        assert c["maps"][key].dtype == np.float32
        np.testing.assert_array_equal(c["maps"][key], 100 * i + index)
    np.testing.assert_array_equal(c["ct"], index)
    np.testing.assert_array_equal(c["dwi"], 600 + index)
    assert c["lesion"].dtype == bool
    np.testing.assert_array_equal(c["lesion"], index % 3 == 0)
    assert c["paths"]["MR_DWI"].name == "SMIR.Brain.XX.O.MR_DWI.345506.nii"

    t = isles2018.load_case(test_case)
    assert t["lesion"] is None and t["dwi"] is None and t["maps"]["tmax"].shape == (2, 6, 5)


def test_isles2018_missing_and_mismatched_files(tmp_path):
    case, _ = make_isles_case(tmp_path / "a", 3, 1000, skip=("CT_Tmax",))
    with pytest.raises(InputError, match=r"ISLES 2018 case case_3: missing CT_Tmax"):
        isles2018.load_case(case)
    case, _ = make_isles_case(tmp_path / "b", 4, 2000, bad_shape="OT")
    with pytest.raises(InputError, match=r"case_4: OT .* has shape \(2, 5, 5\), the perfusion series \(2, 6, 5\)"):
        isles2018.load_case(case)
    case, _ = make_isles_case(tmp_path / "c", 5, 3000)
    cbv = next(case.glob("SMIR.Brain.XX.O.CT_CBV.*/*.nii"))
    write_volume(cbv, np.zeros((2, 6, 5), np.int16), VolumeGeometry((0.9, 0.9, 2.5)))
    with pytest.raises(InputError, match=r"case_5: CT_CBV .* voxel spacing"):
        isles2018.load_case(case)
    cbv.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="cannot read"):
        isles2018.load_case(case)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no ISLES 2018 case_N folders"):
        isles2018.list_cases(empty)


# ------------------------------------------------------------------------------------------------- AISD

AISD_SPACING = (0.45, 0.45, 5.0)
SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.777"


def make_hu_volume(shape=(5, 16, 14), seed=0):
    """A head-like CT: brain ~35 HU in a skull, with a different brain size on every slice, so the slice
    order can be told from the images."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    hu = np.full(shape, -1000.0)
    for z in range(nz):
        r = 3 + 1.0 * z
        d = np.hypot(yy - ny / 2, xx - nx / 2)
        hu[z][d < r + 1.5] = 1000.0
        hu[z][d < r] = 35.0
    return np.round(hu + rng.normal(0, 2, shape)).astype(np.int16)


def write_dicom_ct(folder, hu_zyx, spacing_xyz=AISD_SPACING, shuffle=True):
    """One DICOM file per slice (SimpleITK stores HU + 1024 with Rescale Intercept -1024), file names in
    no spatial order."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    nz = hu_zyx.shape[0]
    for z in range(nz):
        image = sitk.GetImageFromArray(hu_zyx[z][None].astype(np.int16))
        position = (-30.0, -40.0, 10.0 + z * spacing_xyz[2])
        image.SetSpacing(spacing_xyz)
        image.SetOrigin(position)
        tags = {"0008|0060": "CT", "0020|000e": SERIES_UID, "0020|0013": str(nz - z),
                "0020|0032": "\\".join(f"{c:.6f}" for c in position), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|1052": "-1024", "0028|1053": "1", "0018|0050": str(spacing_xyz[2])}
        for k, v in tags.items():
            image.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"{(z * 7) % nz if shuffle else z:06d}.dcm"))
        writer.Execute(image)


def write_png_stack(folder, stack_zyx):
    folder.mkdir(parents=True, exist_ok=True)
    for z, s in enumerate(stack_zyx):
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(s, dtype=np.uint8)), str(folder / f"{z:03d}.png"))


def window(hu, level=40, width=80):
    return np.clip((hu.astype(float) - level + width / 2) / width * 255, 0, 255).astype(np.uint8)


def make_aisd(root, case_id, hu, labels, renders_reversed=False, nested=True, dicom_part="dicom-1"):
    image_dir = root / "image" / "image" if nested else root / "image"
    mask_dir = root / "mask" / "mask" if nested else root / "mask"
    order = slice(None, None, -1) if renders_reversed else slice(None)
    write_png_stack(image_dir / case_id, window(hu)[order])
    write_png_stack(mask_dir / case_id, labels[order])
    write_dicom_ct(root / dicom_part / case_id / "CT", hu)


def test_aisd_release_layout(tmp_path):
    root = tmp_path / "AISD"
    hu = make_hu_volume()
    labels = np.zeros(hu.shape, np.uint8)
    labels[1, 6:9, 5:8] = 2
    labels[3, 7:9, 6:9] = 4
    labels[4, 2, 2] = 1
    make_aisd(root, "0073410", hu, labels)
    make_aisd(root, "0091465", hu, labels, renders_reversed=True, dicom_part="dicom-3")
    (root / "dicom-1" / "0073410" / "DWI").mkdir()  # other series beside CT are ignored
    cases = aisd.list_cases(root)
    assert [c.case_id for c in cases] == ["0073410", "0091465"]
    assert cases[1].ct == root / "dicom-3" / "0091465" / "CT"
    for case in cases:
        c = aisd.load_case(case)
        assert c["ncct"].dtype == np.float32
        np.testing.assert_array_equal(c["ncct"], hu)  # HU, spatial order
        np.testing.assert_allclose(c["geometry"].spacing_mm, AISD_SPACING, rtol=1e-5)
        np.testing.assert_array_equal(c["labels"], labels)  # both numberings end in spatial order
        np.testing.assert_array_equal(c["lesion"], labels > 0)
        assert c["slices_reversed"] == (case.case_id == "0091465")
    acute = aisd.load_case(cases[0], lesion_labels=(2, 3))
    np.testing.assert_array_equal(acute["lesion"], labels == 2)


def test_aisd_nifti_variant_and_bad_cases(tmp_path):
    root = tmp_path / "AISD"
    hu = make_hu_volume(seed=1)
    g = VolumeGeometry(AISD_SPACING)
    write_volume(root / "image" / "0001.nii.gz", hu, g)
    write_volume(root / "mask" / "0001.nii.gz", (hu > 30) & (hu < 40), g)
    (c,) = aisd.list_cases(root)
    loaded = aisd.load_case(c)
    np.testing.assert_array_equal(loaded["ncct"], hu)
    np.testing.assert_array_equal(loaded["lesion"], (hu > 30) & (hu < 40))

    write_png_stack(root / "mask" / "0002", np.zeros((4, 16, 14), np.uint8))
    with pytest.raises(InputError, match=r"AISD case 0002: no CT found \(expected dicom-\*/0002/CT"):
        aisd.list_cases(root)
    write_dicom_ct(root / "dicom-0" / "0002" / "CT", hu)  # 5 slices against 4 mask slices
    case2 = aisd.list_cases(root)[1]
    with pytest.raises(InputError, match=r"AISD case 0002: the mask has shape \(4, 16, 14\), the CT \(5, 16, 14\)"):
        aisd.load_case(case2)
    for f in (root / "dicom-0" / "0002" / "CT").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(InputError, match="AISD case 0002"):
        aisd.load_case(case2)
    with pytest.raises(InputError, match="not an AISD folder"):
        aisd.list_cases(tmp_path)


# ------------------------------------------------------------------------------------------------ ATLAS

def test_atlas_v2_bids_and_r12_layouts(tmp_path):
    g = VolumeGeometry((1.0, 1.0, 1.0), (-98.0, -134.0, -72.0))
    rng = np.random.default_rng(5)
    t1 = rng.normal(60, 10, (6, 7, 8)).astype(np.float32)
    lesion = np.zeros(t1.shape, np.uint8)
    lesion[2:4, 3:5, 1:3] = 1
    anat = tmp_path / "ATLAS_2" / "Training" / "R001" / "sub-r001s001" / "ses-1" / "anat"
    stem = "sub-r001s001_ses-1_space-MNI152NLin2009aSym"
    write_volume(anat / f"{stem}_T1w.nii.gz", t1, g)
    write_volume(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", lesion, g)
    test_anat = tmp_path / "ATLAS_2" / "Testing" / "R002" / "sub-r002s004" / "ses-1" / "anat"
    write_volume(test_anat / "sub-r002s004_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", t1, g)
    scan = tmp_path / "ATLAS_R1.2" / "standard_MNI" / "c0001" / "c0001s0001t01"
    write_volume(scan / "c0001s0001t01_t1w_deface_stx.nii.gz", t1, g)
    second = np.zeros_like(lesion)
    second[5, 0, 0] = 1
    write_volume(scan / "c0001s0001t01_LesionSmooth_stx.nii.gz", lesion, g)
    write_volume(scan / "c0001s0001t01_LesionSmooth_1_stx.nii.gz", second, g)

    cases = atlas.list_cases(tmp_path)
    assert [c.case_id for c in cases] == ["c0001s0001t01", stem, "sub-r002s004_ses-1_space-MNI152NLin2009aSym"]
    r12, bids, test = (atlas.load_case(c) for c in cases)
    np.testing.assert_array_equal(bids["t1"], t1)
    np.testing.assert_array_equal(bids["lesion"], lesion > 0)
    assert bids["geometry"].matches(g)
    np.testing.assert_array_equal(r12["lesion"], (lesion > 0) | (second > 0))
    assert test["lesion"] is None
    assert [c.case_id for c in atlas.list_cases(tmp_path / "ATLAS_2" / "Training")] == [stem]

    write_volume(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", lesion[:, :-1], g)
    with pytest.raises(InputError, match=rf"ATLAS {stem}: the mask .* lies on another grid than the T1"):
        atlas.load_case(atlas.list_cases(tmp_path / "ATLAS_2" / "Training")[0])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no ATLAS T1 images"):
        atlas.list_cases(empty)
