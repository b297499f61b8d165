"""Every bad input and option of the safety issue, through the command line: exit status 2, one line
``strokelesion: error: ...`` naming the problem, no output folder, no staging debris, and every file that
was there before unchanged. Numbered as in the issue (5 options, 6 NIfTI, 7 DICOM, 8 inputs, 9 resources
and hostile files, 10 weights)."""
import gzip
import json
import os
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AIFSelectorLib.io.aif_csv import write_aif_csv
from AIFSelectorLib.phantom.case import make_phantom
from AIFSelectorLib.io.volume_io import write_series_nifti, write_volume
from StrokeLesionLib.cli import main

SPACING = (1.8, 1.8, 5.0)


@pytest.fixture
def case(small_case):
    return small_case


@pytest.fixture
def work(tmp_path, case):
    """A folder with the small case's CTP (NIfTI, uncompressed and gzip), its true AIF and brain mask."""
    write_series_nifti(tmp_path / "ctp.nii", case.series)
    write_series_nifti(tmp_path / "ctp.nii.gz", case.series)
    write_aif_csv(tmp_path / "aif.csv", case.series.times_s, case.aif_hu, case.vof_hu)
    write_volume(tmp_path / "brain.nii.gz", case.truth["brain_mask"], case.series.geometry)
    return tmp_path


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, folder, argv, *words):
    """Runs the CLI writing to folder/out: status 2, one line naming the problem, nothing written, every
    file there before intact."""
    before = snapshot(folder)
    status = main([str(a) for a in argv] + ["--out", str(folder / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("strokelesion: error: "), err
    for w in words:
        assert w.lower() in err.lower(), err
    assert snapshot(folder) == before
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith((".out", "out"))) == []
    return err


# ------------------------------------------------------------------------------------------- 5. options

@pytest.mark.parametrize("option,value", [
    ("--dt", "1e-9"), ("--dt", "1000"), ("--dt", "nan"), ("--min-island-ml", "nan"), ("--tmax", "1e9"),
    ("--core-rcbf", "-1"), ("--core-rcbf", "2"), ("--smooth-mm", "nan"), ("--smooth-mm", "-3"),
    ("--tmax", "inf"), ("--core-rcbf", "abc")])
def test_numeric_options_out_of_range(work, capsys, option, value):
    refused(capsys, work, ["run", work / "ctp.nii.gz", option, value], option, "from")


@pytest.mark.parametrize("option,value", [("--seed", "-1"), ("--seed", "1.5"), ("--noise-hu", "nan"),
                                          ("--head-rotation-max", "400")])
def test_phantom_options_out_of_range(work, capsys, option, value):
    refused(capsys, work, ["phantom", option, value], option)


def test_unknown_choice_is_one_line(work, capsys):
    refused(capsys, work, ["run", work / "ctp.nii.gz", "--method", "magic"], "invalid choice")


# --------------------------------------------------------------------------------------------- 6. NIfTI

def _patched(work, name, edits):
    raw = bytearray((work / "ctp.nii").read_bytes())
    for offset, fmt, value in edits:
        raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *value)
    (work / name).write_bytes(bytes(raw))
    return work / name


@pytest.mark.parametrize("label,edits,words", [
    ("spacing0", [(80, "<f", (0.0,))], ("spacing", "zero")),
    ("spacingnan", [(80, "<f", (float("nan"),))], ("spacing",)),
    ("spacing1e30", [(84, "<f", (1e30,))], ("spacing", "implausible")),
    ("negoffset", [(108, "<f", (-88.0 * 64,))], ("offset",)),
    ("rgb", [(70, "<2h", (128, 24))], ("RGB",)),
    ("uint8", [(70, "<2h", (2, 8))], ("8-bit", "HU")),
    ("int8", [(70, "<2h", (256, 8))], ("8-bit", "HU")),
    ("complex", [(70, "<2h", (32, 64))], ("complex",)),
])
def test_broken_nifti_headers(work, capsys, label, edits, words):
    path = _patched(work, f"{label}.nii", edits)
    refused(capsys, work, ["run", path], path.name, *words)


def test_nifti_of_another_tool_reads_the_same(work, case):
    """A file written by SimpleITK (ITK's NIfTI writer) gives the same series as our nibabel writer."""
    from AIFSelectorLib.io.ctp_io import load_ctp
    image = sitk.GetImageFromArray(case.series.data.astype(np.int16), isVector=False)
    image.SetSpacing(tuple(case.series.geometry.spacing_mm) + (1.0,))
    sitk.WriteImage(image, str(work / "itk.nii.gz"))
    a, b = load_ctp(work / "itk.nii.gz"), load_ctp(work / "ctp.nii.gz")
    np.testing.assert_array_equal(a.data, b.data.astype(np.int16))
    np.testing.assert_allclose(a.geometry.spacing_mm, b.geometry.spacing_mm, rtol=1e-6)


# --------------------------------------------------------------------------------------------- 7. DICOM

def _write_dicom(folder, case, uid, description, flip=False, skip_z=None, odd=None):
    """One file per slice and frame; ``flip`` mirrors left-right (another orientation), ``skip_z`` leaves a
    slice out of every frame, ``odd`` = (frame, 'orientation'|'spacing') changes one image."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    data = case.series.data
    g = case.series.geometry
    for f in range(data.shape[0]):
        for z in range(data.shape[1]):
            if z == skip_z:
                continue
            image = sitk.GetImageFromArray(np.asarray(data[f, z][None], np.int16))
            direction = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
            spacing = list(g.spacing_mm)
            if odd is not None and odd[0] == f and z == 1:
                if odd[1] == "orientation":
                    direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
                else:
                    spacing[0] *= 1.5
            image.SetSpacing(spacing)
            position = np.array(g.origin_mm) + z * g.spacing_mm[2] * np.array([0.0, 0.0, 1.0])
            image.SetOrigin(tuple(position))
            image.SetDirection(tuple(direction.ravel()))
            tags = {"0008|0060": "CT", "0020|000e": uid, "0008|103e": description,
                    "0020|0013": str(f * data.shape[1] + z + 1), "0008|0032": f"1200{f:02d}.000000",
                    "0020|0032": "\\".join(f"{c:.6f}" for c in position), "0008|0022": "20261201",
                    "0020|0037": "\\".join(f"{c:.6f}" for c in np.concatenate([direction[:, 0], direction[:, 1]])),
                    "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}", "0028|1052": "0", "0028|1053": "1"}
            for k, v in tags.items():
                image.SetMetaData(k, v)
            writer.SetFileName(str(folder / f"{uid[-3:]}_{f:03d}_{z:02d}.dcm"))
            writer.Execute(image)
    return folder


@pytest.fixture(scope="module")
def dicom_case():
    return make_phantom(seed=5, shape_zyx=(4, 48, 48), n_frames=20, spacing_mm=SPACING)


def test_several_dicom_series_are_listed_and_chosen(tmp_path, capsys, dicom_case):
    folder = tmp_path / "study"
    _write_dicom(folder, dicom_case, "1.2.826.0.1.111", "CTP axial")
    _write_dicom(folder, dicom_case, "1.2.826.0.1.222", "CTP mirrored", flip=True)
    err = refused(capsys, tmp_path, ["run", folder, "--aif", "classic"], "2 DICOM series", "1.2.826.0.1.111",
                  "1.2.826.0.1.222", "CTP mirrored", "80 images", "20 time points", "--series")
    assert "study" in err
    assert main(["run", str(folder), "--aif", "classic", "--series", "1.2.826.0.1.111",
                 "--out", str(tmp_path / "res")]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "res" / "report.json").read_text(encoding="utf-8"))
    assert report["input"]["series_instance_uid"] == "1.2.826.0.1.111"
    assert report["input"]["series_description"] == "CTP axial"
    refused(capsys, tmp_path, ["run", folder, "--series", "9.9.9"], "no DICOM series with UID 9.9.9")


@pytest.mark.parametrize("odd,words", [((5, "orientation"), ("orientation",)), ((7, "spacing"), ("pixel spacing",))])
def test_dicom_image_with_another_orientation_or_spacing(tmp_path, capsys, dicom_case, odd, words):
    folder = _write_dicom(tmp_path / "dicom", dicom_case, "1.2.3.4", "CTP", odd=odd)
    refused(capsys, tmp_path, ["run", folder], *words)


def test_dicom_slice_missing_in_every_frame(tmp_path, capsys, dicom_case):
    folder = _write_dicom(tmp_path / "dicom", dicom_case, "1.2.3.4", "CTP", skip_z=2)
    refused(capsys, tmp_path, ["run", folder], "slice is missing in every frame")


# -------------------------------------------------------------------------------------------- 8. inputs

def test_mask_of_the_whole_head_is_refused(work, capsys, case):
    write_volume(work / "ones.nii.gz", np.ones(case.series.shape_zyx, np.uint8), case.series.geometry)
    refused(capsys, work, ["run", work / "ctp.nii.gz", "--mask", work / "ones.nii.gz"], "air or bone")


def test_aif_without_vof_is_reported(work, case):
    write_aif_csv(work / "aif_only.csv", case.series.times_s, case.aif_hu)
    assert main(["maps", str(work / "ctp.nii.gz"), "--aif", str(work / "aif_only.csv"), "--out",
                 str(work / "res")]) == 0
    report = json.loads((work / "res" / "report.json").read_text(encoding="utf-8"))
    assert report["aif"]["quality_flags"]["vof_missing"] is True
    assert any("no vof_hu column" in w for w in report["warnings"])
    assert report["aif"]["vof_partial_volume_scale"] == 1.0


def test_aif_sample_outside_the_ct_range_is_refused(work, capsys, case):
    aif = case.aif_hu.copy()
    aif[7] = 1e12
    write_aif_csv(work / "spike.csv", case.series.times_s, aif, case.vof_hu)
    refused(capsys, work, ["maps", work / "ctp.nii.gz", "--aif", work / "spike.csv"], "spike.csv", "line 9",
            "CT range")


def test_aif_spike_is_flagged(work, case):
    aif = case.aif_hu.copy()
    aif[3] += 900.0  # before the bolus: no curve can jump 900 HU for one frame
    write_aif_csv(work / "spike.csv", case.series.times_s, aif, case.vof_hu)
    assert main(["maps", str(work / "ctp.nii.gz"), "--aif", str(work / "spike.csv"), "--out", str(work / "res")]) == 0
    report = json.loads((work / "res" / "report.json").read_text(encoding="utf-8"))
    assert report["aif"]["quality_flags"]["outlier_samples"] is True
    assert main(["maps", str(work / "ctp.nii.gz"), "--aif", str(work / "aif.csv"), "--out", str(work / "res2")]) == 0
    clean = json.loads((work / "res2" / "report.json").read_text(encoding="utf-8"))
    assert clean["aif"]["quality_flags"]["outlier_samples"] is False


# ------------------------------------------------------------------------- 9. resources, hostile files

def test_header_declaring_a_huge_image_in_a_tiny_file(work, capsys):
    raw = bytearray((work / "ctp.nii").read_bytes()[:416])
    raw[40:56] = struct.pack("<8h", 4, 32767, 32767, 32767, 32767, 1, 1, 1)
    (work / "huge.nii").write_bytes(bytes(raw))
    refused(capsys, work, ["run", work / "huge.nii"], "huge.nii", "truncated")


def test_gzip_bomb_beyond_memory_is_refused_before_allocating(work, capsys):
    """2000 x 2000 x 256 x 40 int16 voxels declared (82 GB as stored, 220 GB with the pipeline's working memory
    and headroom: beyond any machine these tests run on), stored as a few MB of compressed zeros: refused from
    the header, nothing decompressed into memory."""
    header = bytearray((work / "ctp.nii").read_bytes()[:352])
    header[40:56] = struct.pack("<8h", 4, 2000, 2000, 256, 40, 1, 1, 1)
    header[70:74] = struct.pack("<2h", 4, 16)
    with gzip.open(work / "bomb.nii.gz", "wb", compresslevel=9) as f:
        f.write(bytes(header))
        zeros = bytes(1 << 24)
        for _ in range(16):
            f.write(zeros)
    assert (work / "bomb.nii.gz").stat().st_size < 2_000_000
    refused(capsys, work, ["run", work / "bomb.nii.gz"], "bomb.nii.gz", "memory")


def test_fifo_is_refused_without_hanging(work, capsys):
    os.mkfifo(work / "ctp_fifo.nii.gz")
    done = []
    t = threading.Thread(target=lambda: done.append(
        refused(capsys, work, ["run", work / "ctp_fifo.nii.gz"], "not a regular file")), daemon=True)
    t.start()
    t.join(30)
    assert done, "reading a FIFO hung"


def test_fifo_in_a_dicom_folder_is_skipped(tmp_path, capsys, dicom_case):
    folder = _write_dicom(tmp_path / "dicom", dicom_case, "1.2.3.4", "CTP")
    os.mkfifo(folder / "pipe.dcm")
    assert main(["run", str(folder), "--aif", "classic", "--out", str(tmp_path / "res")]) == 0


def test_detached_nrrd_header_reads_only_a_data_file_beside_it(work, capsys, case):
    from AIFSelectorLib.io.ctp_io import write_series_seq_nrrd
    write_series_seq_nrrd(work / "seq.nrrd", case.series, compress=False)
    text = (work / "seq.nrrd").read_bytes()
    head, _, body = text.partition(b"\n\n")
    secret = work / "elsewhere" / "secret.raw"
    secret.parent.mkdir()
    secret.write_bytes(body)
    for i, name in enumerate([str(secret), "../elsewhere/secret.raw", "/etc/passwd"]):
        (work / f"d{i}.nhdr").write_bytes(head + f"\ndata file: {name}\n".encode())
        refused(capsys, work, ["run", work / f"d{i}.nhdr", "--aif", "classic"], "not beside the header")
    shutil.copy(secret, work / "beside.raw")
    (work / "ok.nhdr").write_bytes(head + b"\ndata file: beside.raw\n")
    assert main(["run", str(work / "ok.nhdr"), "--aif", "classic", "--out", str(work / "res")]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(work, capsys):
    refused(capsys, work, ["run", work / "ctp.nii.gz", "--device", "cuda"], "--device cuda", "no CUDA")
    refused(capsys, work, ["aif", work / "ctp.nii.gz", "--device", "cuda"], "no CUDA")


# -------------------------------------------------------------------------------------------- 10. weights

@pytest.fixture
def model_folder(tmp_path, monkeypatch):
    """A copy of the shipped AIFNet weights and manifest, used through STROKELESION_MODELS_DIR."""
    from AIFSelectorLib.models.weights import models_dir
    folder = tmp_path / "models"
    folder.mkdir()
    manifest = json.loads((models_dir() / "manifest.json").read_text(encoding="utf-8"))
    for name in ("aif", "vof"):
        shutil.copy(models_dir() / manifest["models"][name]["file"], folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("STROKELESION_MODELS_DIR", str(folder))
    return folder, manifest


def test_checkpoint_of_another_kind_is_refused(model_folder, work, capsys):
    from AIFSelectorLib.input_functions.aifnet.networks import load_model
    from AIFSelectorLib.errors import InputError
    folder, manifest = model_folder
    entry = dict(manifest["models"]["vof"])
    entry["config"] = dict(entry["config"], kind="aif")
    entry["version"] = manifest["models"]["aif"]["version"]
    manifest["models"]["aif"] = entry  # the VOF checkpoint registered as the AIF network
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"hold a 'vof' model, the manifest entry says 'aif'"):
        load_model("aif", folder)


def test_malformed_manifest_is_one_line(model_folder, work, capsys):
    folder, _ = model_folder
    (folder / "manifest.json").write_text("[]")
    refused(capsys, work, ["run", work / "ctp.nii.gz", "--lesion-model", "pseudodwi"], "manifest", "malformed")


def test_weights_are_loaded_from_the_bytes_that_were_hashed(model_folder, monkeypatch):
    """torch.load gets the bytes whose sha256 matched, never the path (which could change in between)."""
    from AIFSelectorLib.models import weights as model_weights
    from AIFSelectorLib.input_functions.aifnet.networks import load_model
    seen = []
    real = torch.load

    def spy(source, *args, **kwargs):
        seen.append(source)
        assert kwargs.get("weights_only") is True
        return real(source, *args, **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    model_weights._load_checked.cache_clear()
    load_model("vof", model_folder[0])
    assert seen and all(hasattr(s, "read") for s in seen)


# -------------------------------------------------------------------- found in review: bombs and links

def test_compressed_nrrd_bomb_is_refused_before_inflating(work, capsys):
    import zlib
    header = (b"NRRD0004\ntype: short\ndimension: 4\nsizes: 4 4 2 12\nspace: left-posterior-superior\n"
              b"space directions: (1,0,0) (0,1,0) (0,0,1) none\nkinds: domain domain domain list\n"
              b"endian: little\nencoding: gzip\naxis 3 index values:=" + b" ".join(b"%d" % i for i in range(12)) + b"\n\n")
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = packer.compress(bytes(64 << 20)) + packer.flush()  # 64 MB of zeros for 768 bytes declared
    (work / "bomb.seq.nrrd").write_bytes(header + body)
    refused(capsys, work, ["run", work / "bomb.seq.nrrd", "--aif", "classic"], "inflate to more than the header")


def test_nifti_extension_bomb_and_pair_magic_are_refused(work, capsys):
    raw = bytearray((work / "ctp.nii").read_bytes())
    bomb = bytearray(raw[:348]) + bytes([1, 0, 0, 0]) + struct.pack("<2i", 256 << 20, 0)
    (work / "ext.nii").write_bytes(bytes(bomb) + bytes(raw[352:]))
    refused(capsys, work, ["run", work / "ext.nii"], "extension")
    pair = bytearray(raw)
    pair[344:348] = b"ni1\0"
    (work / "pair.nii").write_bytes(bytes(pair))
    refused(capsys, work, ["run", work / "pair.nii"], "separate .img file")


def test_overwrite_never_follows_links_out_of_the_folder(work):
    from StrokeLesionLib.case.output_folder import MARKER
    victim = work / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work", encoding="utf-8")
    out = work / "res"
    assert main(["aif", str(work / "ctp.nii.gz"), "--aif", "classic", "--out", str(out)]) == 0
    os.symlink(victim, out / "sub")
    marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    marker["files"] += ["sub", "sub/thesis.tex"]  # a marker edited to point through the link
    (out / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    assert main(["aif", str(work / "ctp.nii.gz"), "--aif", "classic", "--out", str(out), "--overwrite"]) == 0
    assert (victim / "thesis.tex").read_text(encoding="utf-8") == "years of work"


def test_lock_and_marker_that_are_not_regular_files(work, capsys):
    (work / "notes.txt").write_text("mine", encoding="utf-8")
    os.symlink(work / "notes.txt", work / ".out.lock")
    assert main(["aif", str(work / "ctp.nii.gz"), "--aif", "classic", "--out", str(work / "out")]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert (work / "notes.txt").read_text(encoding="utf-8") == "mine" and not (work / "out").exists()
    os.unlink(work / ".out.lock")
    fake = work / "res"
    fake.mkdir()
    os.mkfifo(fake / ".strokelesion-output.json")
    done = []
    t = threading.Thread(target=lambda: done.append(main(["aif", str(work / "ctp.nii.gz"), "--aif", "classic",
                                                           "--out", str(fake), "--overwrite"])), daemon=True)
    t.start()
    t.join(30)
    assert done == [2], "a FIFO marker hung the run or was accepted"


def test_nrrd_with_a_2d_space_is_one_line(work, capsys):
    header = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 12\nspace dimension: 2\n"
              b"space directions: (1,0) (0,1) none\nkinds: domain domain list\nendian: little\nencoding: raw\n\n")
    (work / "flat.nrrd").write_bytes(header + bytes(4 * 4 * 12 * 2))
    refused(capsys, work, ["run", work / "flat.nrrd"], "flat.nrrd")
