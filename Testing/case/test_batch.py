"""`strokelesion batch` on a small cohort with Dask: 8 phantom cases, one corrupted, 2 local workers: 7 done,
the corrupted one reported with its one-line error, every case in the summary; a second run does no work for
the 7 done cases; a changed input is redone."""
import contextlib
import csv
import gzip
import json
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("distributed")

from AIFSelectorLib.io.volume_io import write_series_nifti  # noqa: E402
from AIFSelectorLib.phantom.case import make_phantom  # noqa: E402
from StrokeLesionLib.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    for i in range(8):
        case = make_phantom(seed=20 + i, shape_zyx=(3, 48, 48), n_frames=24)
        folder = root / "cases" / f"case{i}"
        folder.mkdir(parents=True)
        write_series_nifti(folder / "ctp.nii.gz", case.series)
    broken = root / "cases" / "case5" / "ctp.nii.gz"
    broken.write_bytes(gzip.compress(gzip.decompress(broken.read_bytes())[:5000]))  # truncated
    return root


def _summary(out):
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def test_batch_runs_every_case_and_resumes(cohort, capsys):
    out = cohort / "results"
    argv = ["batch", str(cohort / "cases"), "--out", str(out), "--workers", "2", "--aif", "classic"]
    assert main(argv) == 1  # one case failed
    rows = _summary(out)
    assert sorted(rows) == [f"case{i}" for i in range(8)]
    assert [k for k, r in rows.items() if r["status"] != "done"] == ["case5"]
    assert "truncated" in rows["case5"]["error"] and "\n" not in rows["case5"]["error"]
    assert all(float(rows[k]["penumbra_ml"]) >= 0 for k in rows if k != "case5")
    assert not (out / "case5").exists() and all((out / f"case{i}" / "report.json").is_file() for i in range(8) if i != 5)
    printed = capsys.readouterr().out
    assert "7 of 8 cases done, 1 failed" in printed

    stamps = {i: (out / f"case{i}" / "report.json").stat().st_mtime_ns for i in range(8) if i != 5}
    assert main(argv) == 1  # resumed: nothing redone, the failure kept (no --retry-failed)
    assert {i: (out / f"case{i}" / "report.json").stat().st_mtime_ns for i in stamps} == stamps
    assert _summary(out)["case5"]["status"] == "failed"

    case = make_phantom(seed=99, shape_zyx=(3, 48, 48), n_frames=24)
    write_series_nifti(cohort / "cases" / "case2" / "ctp.nii.gz", case.series)  # a changed input is redone
    assert main(argv) == 1
    after = {i: (out / f"case{i}" / "report.json").stat().st_mtime_ns for i in stamps}
    assert [i for i in stamps if after[i] != stamps[i]] == [2]


def test_a_csv_manifest_redoes_a_failed_case_when_its_options_change(cohort, tmp_path, capsys):
    """A CSV manifest (relative paths from its folder); a failed case is kept as failed while nothing changed,
    redone when the options change, retried with --retry-failed; progress counts every case, and the printed
    table gives each case's volumes or its error."""
    from StrokeLesionLib.case.batch import read_manifest, run_batch
    manifest = cohort / "two.csv"
    manifest.write_text("case_id,input\nok,cases/case0/ctp.nii.gz\nbroken,cases/case5/ctp.nii.gz\n",
                        encoding="utf-8")
    cases = read_manifest(manifest)
    assert [(c.case_id, c.input) for c in cases] == [("ok", str(cohort / "cases/case0/ctp.nii.gz")),
                                                     ("broken", str(cohort / "cases/case5/ctp.nii.gz"))]
    out = tmp_path / "results"
    seen = []

    def batch(options, **kwargs):
        seen.clear()
        rows = run_batch(cases, out, ["--aif", "classic", *options], workers=2,
                         progress=lambda *counts: seen.append(counts), **kwargs)
        return {r["case_id"]: r for r in rows}

    rows = batch([])
    assert rows["ok"]["status"] == "done" and rows["broken"]["status"] == "failed"
    assert seen[-1] == (1, 1, 0, 2)  # done, failed, running, of the cases run
    assert all(d + f + r <= t for d, f, r, t in seen)
    assert batch([])["broken"]["status"] == "failed" and seen == []  # nothing changed: no work
    rows = batch(["--tmax", "7"])  # changed options: both redone
    assert seen[-1] == (1, 1, 0, 2) and "truncated" in rows["broken"]["error"]
    batch(["--tmax", "7"], retry_failed=True)
    assert seen[-1] == (0, 1, 0, 1)  # only the failure, retried
    assert main(["batch", str(manifest), "--out", str(out), "--aif", "classic", "--tmax", "7"]) == 1
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["case", "status", "core", "penumbra"]
    ok = next(line for line in table if line.startswith("ok ")).split()
    assert ok[1] == "done" and float(ok[2]) == pytest.approx(float(rows["ok"]["core_ml"]))
    assert "truncated" in next(line for line in table if line.startswith("broken "))


@contextlib.contextmanager
def dask_cluster(folder, worker_args):
    """A dask scheduler and two workers (``worker_args`` added to each) as separate processes on 127.0.0.1;
    yields (scheduler address, worker processes); every process is killed on the way out."""
    scheduler_file = folder / "scheduler.json"
    base = [sys.executable, "-m"]
    procs = [subprocess.Popen(base + ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                      "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(100):
            if scheduler_file.is_file() and scheduler_file.stat().st_size:
                break
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text(encoding="utf-8"))["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = [subprocess.Popen(base + ["distributed.cli.dask_worker", address, "--nthreads", "1",
                                            "--no-dashboard", "--host", "127.0.0.1", *worker_args],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        procs += workers
        yield address, workers
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait(timeout=30)


def test_batch_on_an_existing_cluster_gives_the_same_volumes(cohort, tmp_path):
    """A scheduler and two workers started as separate processes on 127.0.0.1; `batch --scheduler` gives the
    volumes of the local run."""
    local = cohort / "results-local"
    assert main(["batch", str(cohort / "cases"), "--out", str(local), "--aif", "classic"]) == 1
    remote = cohort / "results-remote"
    with dask_cluster(tmp_path, ["--nworkers", "1"]) as (address, _):
        assert main(["batch", str(cohort / "cases"), "--out", str(remote), "--aif", "classic",
                     "--scheduler", address]) == 1
    a, b = _summary(local), _summary(remote)
    assert sorted(a) == sorted(b)
    for k in a:
        assert (a[k]["status"], a[k]["core_ml"], a[k]["penumbra_ml"]) == (b[k]["status"], b[k]["core_ml"],
                                                                           b[k]["penumbra_ml"]), k


def test_a_summary_the_tool_did_not_write_is_kept(cohort, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "summary.csv").write_text("my,own,table\n", encoding="utf-8")
    assert main(["batch", str(cohort / "cases"), "--out", str(out), "--aif", "classic"]) == 2
    assert "never replaced" in capsys.readouterr().err
    assert (out / "summary.csv").read_text(encoding="utf-8") == "my,own,table\n"
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]


def test_a_killed_worker_does_not_lose_cases(cohort, tmp_path):
    """Two workers (no nanny, so a kill is final) on a scheduler of their own; one is killed while cases run:
    every case still completes (the lost worker's tasks go to the other; its case process ends with it)."""
    out = tmp_path / "results"
    result = []
    with dask_cluster(tmp_path, ["--no-nanny"]) as (address, workers):
        batch = threading.Thread(target=lambda: result.append(main(
            ["batch", str(cohort / "cases"), "--out", str(out), "--aif", "classic", "--scheduler", address])))
        batch.start()
        t0 = time.monotonic()  # both workers run a case (two staging folders) before one is killed
        while len([p for p in out.glob(".*partial-*")] if out.exists() else []) < 2 and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        assert batch.is_alive(), "the batch ended before a worker could be killed"
        assert len(list(out.glob(".*partial-*"))) >= 2, "the two workers never ran cases at once"
        workers[0].send_signal(signal.SIGKILL)
        batch.join(600)
    assert result == [1]  # only the corrupted case failed
    rows = _summary(out)
    assert [k for k, r in rows.items() if r["status"] != "done"] == ["case5"], rows
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "staging folders left behind"
