"""Output folders never lose a user's data: where --out may point, what --overwrite may replace, a second
run on the same name, short writes, full or read-only locations, SIGTERM and SIGKILL at any point.

Whole processes (``python -m StrokeLesionLib.cli``) where a signal, a resource limit or a second process is
part of the case; ``main()`` in-process otherwise.
"""
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from StrokeLesionLib.cli import main
from StrokeLesionLib.case.output_folder import MARKER

CLI = [sys.executable, "-m", "StrokeLesionLib.cli"]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(capsys, argv, *words, status=2):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == status, err
    assert len(err.splitlines()) == 1 and err.startswith("strokelesion: error: "), err
    for w in words:
        assert w.lower() in err.lower(), err
    return err


def debris(parent: Path, name: str) -> list:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# ------------------------------------------------------------------------------- where --out may point

def test_out_above_or_at_the_input_is_refused(small_ctp, tmp_path, capsys, monkeypatch):
    study = tmp_path / "study"
    for case in ("case1", "case2"):
        (study / case).mkdir(parents=True)
        shutil.copy(small_ctp, study / case / "ctp.nii.gz")
    (study / "case2" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    ctp = study / "case1" / "ctp.nii.gz"
    fails(capsys, ["run", ctp, "--out", study, "--overwrite"], "holds the input")
    fails(capsys, ["run", ctp, "--out", study / "case1", "--overwrite"], "holds the input")
    fails(capsys, ["run", ctp, "--out", ctp, "--overwrite"], "holds the input")
    fails(capsys, ["run", study / "case1", "--out", study / "case1" / "results"], "inside the input folder")
    monkeypatch.chdir(study)
    fails(capsys, ["run", ctp, "--out", ".", "--overwrite"], "current folder")
    fails(capsys, ["run", ctp, "--out", "", "--overwrite"], "current folder")
    fails(capsys, ["run", ctp, "--out", "..", "--overwrite"], "current folder")
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_only_what_strokelesion_wrote(small_ctp, tmp_path, capsys):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "chapter1.tex").write_text("years of work")
    fails(capsys, ["aif", small_ctp, "--aif", "classic", "--out", user, "--overwrite"], "not written by strokelesion")
    assert (user / "chapter1.tex").read_text(encoding="utf-8") == "years of work"

    out = tmp_path / "res"
    assert main(["aif", str(small_ctp), "--aif", "classic", "--out", str(out)]) == 0
    marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    assert marker["tool"] == "strokelesion" and set(marker["files"]) == {
        "aif.csv", "aif_pvol.nii.gz", "report.json", "vof_pvol.nii.gz"}
    (out / "my_notes.txt").write_text("keep")
    fails(capsys, ["aif", small_ctp, "--aif", "classic", "--out", out, "--overwrite"], "did not write", "my_notes.txt")
    assert (out / "my_notes.txt").read_text(encoding="utf-8") == "keep"
    (out / "my_notes.txt").unlink()
    old = (out / "aif.csv").stat().st_ino
    assert main(["aif", str(small_ctp), "--aif", "classic", "--out", str(out), "--overwrite"]) == 0
    assert (out / "aif.csv").stat().st_ino != old and (out / MARKER).is_file()
    assert debris(tmp_path, "res") == []


def test_existing_output_is_kept_without_overwrite(small_ctp, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["aif", str(small_ctp), "--aif", "classic", "--out", str(out)]) == 0
    before = snapshot(out)
    fails(capsys, ["aif", small_ctp, "--aif", "classic", "--out", out], "already exists")
    (tmp_path / "file").write_text("x")
    fails(capsys, ["aif", small_ctp, "--out", tmp_path / "file"], "not a folder")
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- resources and locations

@contextlib.contextmanager
def tiny_mount(path: Path, size: str, read_only: bool = False):
    """A tmpfs of ``size`` at ``path`` (as root); skips the test where mounting is not allowed."""
    path.mkdir()
    opts = f"size={size}" + (",ro" if read_only else "")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_and_read_only_locations_fail_before_any_work(small_ctp, tmp_path, capsys):
    with tiny_mount(tmp_path / "full", "1m") as full:
        fails(capsys, ["phantom", "--out", full / "ph"], "not enough free space")
        assert list(full.iterdir()) == []
    with tiny_mount(tmp_path / "ro", "1m", read_only=True) as ro:
        t0 = time.perf_counter()
        fails(capsys, ["run", small_ctp, "--out", ro / "res"], "cannot", "read-only")
        assert time.perf_counter() - t0 < 5.0  # refused before reading the series or computing
        assert list(ro.iterdir()) == []


def test_short_write_installs_nothing(tmp_path):
    """A file size limit (ulimit -f 20000: 20 MB, the phantom's CTP is about 85 MB) makes the write fail:
    exit status 1, one line, no output folder, no staging folder."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000 * 1024, 20_000 * 1024))
    run = subprocess.run(CLI + ["phantom", "--out", str(tmp_path / "ph")], capture_output=True, encoding="utf-8",
                         errors="replace", preexec_fn=limit, timeout=300)
    err = run.stderr.strip()
    assert run.returncode == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("strokelesion: error: ") and "too large" in err.lower(), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_tiny_disk_mid_write_installs_nothing(tmp_path):
    """A location with too little room for the outputs that still passes the first estimate (the phantom
    asks for 200 MB; a 210 MB tmpfs filled to 120 MB leaves 90 MB): the write fails, nothing installed."""
    with tiny_mount(tmp_path / "disk", "210m") as disk:
        (disk / "filler").write_bytes(b"\0" * (120 << 20))
        run = subprocess.run(CLI + ["phantom", "--out", str(disk / "ph")], capture_output=True, encoding="utf-8",
                             errors="replace", timeout=300)
        err = run.stderr.strip()
        if run.returncode == 2:  # the estimate already refused it: also correct, nothing written
            assert "not enough free space" in err, err
        else:
            assert run.returncode == 1 and "no space" in err.lower(), err
        assert len(err.splitlines()) == 1, err
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


# --------------------------------------------------------------------------- concurrency and signals

def test_two_runs_on_one_out(tmp_path):
    """Two runs to one --out at once: one completes, the other refuses with one line, nothing deleted."""
    out = tmp_path / "ph"
    procs = [subprocess.Popen(CLI + ["phantom", "--out", str(out), "--seed", str(s)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, encoding="utf-8", errors="replace") for s in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read().strip()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, e in results if code == 2)
    assert len(err.splitlines()) == 1 and ("another strokelesion run" in err or "already exists" in err), err
    params = json.loads((out / "truth" / "params.json").read_text(encoding="utf-8"))
    winner = [s for (code, _), s in zip(results, (1, 2)) if code == 0][0]
    assert params["seed"] == winner and (out / MARKER).is_file()
    assert debris(tmp_path, "ph") == []


def _start_and_kill(argv, sig, delay_s, started=None):
    """Exit code and stderr of the command, sent ``sig`` ``delay_s`` seconds after it started or, with ``started``
    (a callable), as soon as that says the command is at work (the process still running)."""
    p = subprocess.Popen(CLI + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    if started is None:
        time.sleep(delay_s)
    else:
        deadline = time.monotonic() + 60
        while not started() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    p.send_signal(sig)
    code = p.wait(timeout=120)
    return code, p.stderr.read()


def _is_complete(folder: Path) -> bool:
    marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    return all((folder / f).is_file() for f in marker["files"])


def test_sigterm_cleans_up_and_sigkill_debris_is_swept(tmp_path):
    out = tmp_path / "ph"
    staging = lambda: any(name.startswith(".ph.partial-") for name in debris(tmp_path, "ph"))  # noqa: E731
    code, err = _start_and_kill(["phantom", "--out", str(out)], signal.SIGTERM, 0, started=staging)
    assert code == 128 + signal.SIGTERM, err
    assert "terminated" in err and not out.exists() and debris(tmp_path, "ph") == []
    code, _ = _start_and_kill(["phantom", "--out", str(out)], signal.SIGKILL, 0, started=staging)
    assert code == -signal.SIGKILL and not out.exists()
    assert any(name.startswith(".ph.partial-") for name in debris(tmp_path, "ph"))
    assert subprocess.run(CLI + ["phantom", "--out", str(out)], capture_output=True, timeout=300).returncode == 0
    assert _is_complete(out) and debris(tmp_path, "ph") == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_overwrite_killed_at_any_point_leaves_old_or_new(tmp_path, sig):
    """--overwrite killed at several moments across a run (and after it): OUT is always a whole folder,
    the old one or the new one, and the next run leaves no debris."""
    out = tmp_path / "ph"
    assert subprocess.run(CLI + ["phantom", "--out", str(out), "--seed", "1"], capture_output=True,
                          timeout=300).returncode == 0
    t0 = time.perf_counter()
    assert subprocess.run(CLI + ["phantom", "--out", str(out), "--seed", "2", "--overwrite"],
                          capture_output=True, timeout=300).returncode == 0
    duration = time.perf_counter() - t0
    seen = set()
    for fraction in (0.2, 0.5, 0.8, 0.9, 0.95, 1.0):
        _start_and_kill(["phantom", "--out", str(out), "--seed", str(3 + len(seen) % 2), "--overwrite"], sig,
                        fraction * duration)
        assert out.is_dir() and _is_complete(out)
        seen.add(json.loads((out / "truth" / "params.json").read_text(encoding="utf-8"))["seed"])
    assert subprocess.run(CLI + ["phantom", "--out", str(out), "--seed", "1", "--overwrite"],
                          capture_output=True, timeout=300).returncode == 0
    assert _is_complete(out) and debris(tmp_path, "ph") == []


def test_a_file_added_to_the_old_folder_during_overwrite_survives(tmp_path):
    out = tmp_path / "ph"
    assert subprocess.run(CLI + ["phantom", "--out", str(out)], capture_output=True, timeout=300).returncode == 0
    p = subprocess.Popen(CLI + ["phantom", "--out", str(out), "--seed", "3", "--overwrite"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    time.sleep(2.0)
    (out / "reading.txt").write_text("a colleague's notes")
    code = p.wait(timeout=300)
    kept = list(tmp_path.glob("ph*/reading.txt"))
    assert [k.read_text(encoding="utf-8") for k in kept] == ["a colleague's notes"], (code, p.stderr.read())
    if code == 2:
        assert "did not write" in p.stderr.read()
    assert _is_complete(out)


def test_outputs_follow_the_umask(small_ctp, tmp_path):
    out = tmp_path / "res"
    previous = os.umask(0o022)
    try:
        assert main(["aif", str(small_ctp), "--aif", "classic", "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    assert (out.stat().st_mode & 0o777) == 0o755
    assert {(p.stat().st_mode & 0o777) for p in out.iterdir()} == {0o644}
    np.testing.assert_array_equal(np.loadtxt(out / "aif.csv", delimiter=",", skiprows=1).shape[1], 3)
