"""`strokelesion batch`: every case of a cohort through `strokelesion run`, on Dask.

Cases run on a dask.distributed cluster: a LocalCluster of worker processes by default, or an existing
cluster at ``--scheduler ADDRESS`` (the same code path). Each case is one `strokelesion run` process, so a
case that fails (bad input, out of memory, a killed process) costs only itself; its one-line error is kept.
Each case writes ``OUT/<case id>/`` with the safety of `run` (claimed, verified, installed whole), and
``OUT/summary.csv`` lists every case: status, error, volumes, mismatch, AIF quality flags, seconds.

Resumable: a case's report.json holds ``batch_fingerprint``, the sha256 of its inputs (path, size and
modification time of every file) and of the run options; a case whose output holds the same fingerprint
is skipped, the others are (re)done; a failed case whose inputs and options are unchanged (its fingerprint,
kept in summary.csv) is retried only with ``--retry-failed``, one whose inputs or options changed is redone.
"""
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from StrokeLesionLib.case.output_folder import sweep_debris

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.prepare.preprocessing import usable_cores
from AIFSelectorLib.io.volume_io import atomic_path

SUMMARY_COLUMNS = ("case_id", "status", "error", "core_ml", "penumbra_ml", "hypoperfused_ml", "mismatch_ratio",
                   "lesion_ml", "aif_quality_flags", "seconds", "input", "fingerprint")
EARLIER_SUMMARY_COLUMNS = (SUMMARY_COLUMNS[:-1],)
"""Headers of summaries written by earlier versions (without the fingerprint): still batch's own."""
PROGRESS_POLL_S = 1.0
"""Seconds between two looks at the cluster for the progress display (cases running now)."""
CASE_TIMEOUT_S = 3600
"""A case still running after this many seconds is stopped and reported as failed."""


@dataclass(frozen=True)
class Case:
    """One line of a manifest: an id (its output folder's name), the CTP input and optional files."""

    case_id: str
    input: str
    aif: str = ""
    mask: str = ""
    series_uid: str = ""


def read_manifest(path) -> List[Case]:
    """Cases from a CSV (columns case_id, input[, aif, mask, series_uid]; relative paths from the CSV's
    folder) or from a folder (one case per subfolder: an ISLES 2018 case, a DICOM series or one CTP file)."""
    path = Path(path)
    if path.is_dir():
        cases = [Case(p.name, str(p)) for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    elif path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or "case_id" not in rows[0] or "input" not in rows[0]:
            raise InputError(f"{path.name}: a batch manifest needs the columns case_id and input")
        base = path.parent

        def resolved(value):
            value = (value or "").strip()
            return str(base / value) if value and not Path(value).is_absolute() else value
        cases = [Case(r["case_id"].strip(), resolved(r["input"]), resolved(r.get("aif")), resolved(r.get("mask")),
                      (r.get("series_uid") or "").strip()) for r in rows]
    else:
        raise InputError(f"batch manifest not found: {path}")
    ids = [c.case_id for c in cases]
    bad = [i for i in ids if not i or "/" in i or "\\" in i or i.startswith(".")]
    if bad:
        raise InputError(f"{path.name}: case ids must be plain folder names, got {bad[0]!r}")
    if len(set(ids)) != len(ids):
        raise InputError(f"{path.name}: case ids repeat ({sorted(i for i in set(ids) if ids.count(i) > 1)[0]})")
    if not cases:
        raise InputError(f"{path.name}: no cases")
    return cases


def fingerprint(case: Case, options: Sequence[str]) -> str:
    """sha256 of the case's inputs (path, size, modification time of every file) and the run options."""
    h = hashlib.sha256(json.dumps([case.case_id, list(options)]).encode())
    for value in (case.input, case.aif, case.mask, case.series_uid):
        p = Path(value) if value else None
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p is not None and p.is_dir() else [p]
        for q in files:
            if q is not None and q.exists():
                st = q.stat()
                h.update(f"{q}|{st.st_size}|{st.st_mtime_ns}".encode())
            else:
                h.update(str(value).encode())
    return h.hexdigest()


def run_command(case: Case, out: Path, options: Sequence[str], digest: str, overwrite: bool) -> List[str]:
    argv = [sys.executable, "-m", "StrokeLesionLib.cli", "run", case.input, "--out", str(out / case.case_id),
            "--batch-fingerprint", digest, *options]
    for flag, value in (("--aif", case.aif), ("--mask", case.mask), ("--series", case.series_uid)):
        if value:
            argv += [flag, value]
    return argv + (["--overwrite"] if overwrite else [])


LOCK_WAIT_S = 120.0
"""A case whose output is still locked by a process of a lost worker (ending on SIGTERM) is retried for this
long before it counts as failed."""


def _die_with_parent() -> None:
    """In the case process (Linux): SIGTERM when the worker that started it dies, so a killed worker leaves no
    orphan run behind; its staging folder is removed on the way out."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_case_process(argv: List[str], case_out: str = "", digest: str = "", threads: int = 0) -> Dict[str, object]:
    """Runs one case as its own process (a dask task): {'status', 'error', 'seconds'}. A task rerun after its
    worker was lost finds the case done when the output already holds its fingerprint, and replaces an
    output of other inputs; a case whose output is locked by another run (a lost worker's process still
    stopping) is retried for LOCK_WAIT_S. threads: the case's CPU threads (0: every core it may run on)."""
    from AIFSelectorLib.prepare.preprocessing import THREADS_ENV
    t0 = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if threads > 0:
        env[THREADS_ENV] = str(threads)
    while True:
        if case_out:
            report = _read_report(Path(case_out))
            if report is not None and report.get("batch_fingerprint") == digest:
                sweep_debris(case_out)  # a lost worker's run may have left its staging folder
                return {"status": "done", "error": "", "seconds": round(time.perf_counter() - t0, 2)}
            if Path(case_out).exists() and "--overwrite" not in argv:
                argv = argv + ["--overwrite"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", errors="replace",
                                  timeout=CASE_TIMEOUT_S, env=env,
                                  preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"stopped after {CASE_TIMEOUT_S} s", "seconds": CASE_TIMEOUT_S}
        errors = [line for line in done.stderr.splitlines() if line.startswith("strokelesion:")]
        error = errors[-1].split("error: ", 1)[-1] if errors else (
            "" if done.returncode == 0 else f"exit status {done.returncode}")
        if "another strokelesion run is writing" in error and time.perf_counter() - t0 < LOCK_WAIT_S:
            time.sleep(1.0)
            continue
        return {"status": "done" if done.returncode == 0 else "failed", "error": error,
                "seconds": round(time.perf_counter() - t0, 2)}


def _read_report(case_out: Path) -> Optional[dict]:
    try:
        return json.loads((case_out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _report(out: Path, case: Case) -> Optional[dict]:
    return _read_report(out / case.case_id)


def _previous(out: Path) -> Dict[str, dict]:
    try:
        with open(out / "summary.csv", newline="", encoding="utf-8") as f:
            return {r["case_id"]: r for r in csv.DictReader(f)}
    except (OSError, ValueError, KeyError):
        return {}


def summary_row(case: Case, status: str, error: str, seconds, report: Optional[dict],
                digest: str = "") -> Dict[str, object]:
    v = (report or {}).get("volumes_ml", {})
    flags = [k for k, on in (report or {}).get("aif", {}).get("quality_flags", {}).items() if on]
    return {"case_id": case.case_id, "status": status, "error": error, "core_ml": v.get("core_ml", ""),
            "penumbra_ml": v.get("penumbra_ml", ""), "hypoperfused_ml": v.get("hypoperfused_ml", ""),
            "mismatch_ratio": v.get("mismatch_ratio", ""), "lesion_ml": v.get("lesion_ml", ""),
            "aif_quality_flags": ";".join(flags), "seconds": seconds, "input": case.input, "fingerprint": digest}


def _running(client, keys) -> int:
    """How many of ``keys`` are executing on a worker now (tasks assigned to a worker but queued behind
    another are not counted)."""
    try:
        executing = client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])
        return sum(k in keys for ks in executing.values() for k in ks)
    except Exception:  # noqa: BLE001 - an older or remote worker without that state: the scheduler's view
        try:
            return sum(str(k) in keys for ks in client.processing().values() for k in ks)
        except Exception:  # noqa: BLE001 - a scheduler gone: the cases' own results still come (or fail)
            return 0


def run_batch(cases: Sequence[Case], out, options: Sequence[str], workers: int = 2,
              threads_per_worker: Optional[int] = None, scheduler: Optional[str] = None, retry_failed: bool = False,
              progress=None) -> List[Dict[str, object]]:
    """Runs the cases that need it on a dask.distributed cluster and writes OUT/summary.csv; returns its rows
    in manifest order. Each worker runs one case at a time, with ``threads_per_worker`` CPU threads (default:
    this machine's cores shared among the local workers; on an existing cluster, every core of the worker's
    machine). ``progress``: optional callable(done, failed, running, total) over the cases run
    (``running``: executing now; the rest are queued), called once a second and at each case's end."""
    from dask.distributed import Client, LocalCluster, as_completed

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.csv"
    if summary.exists():
        try:
            with open(summary, encoding="utf-8") as f:
                ours = f.readline().strip() in [",".join(c) for c in (SUMMARY_COLUMNS,) + EARLIER_SUMMARY_COLUMNS]
        except (OSError, UnicodeDecodeError):
            ours = False
        if not ours or summary.is_symlink():
            raise InputError(f"{summary} was not written by strokelesion batch: it is never replaced; "
                             f"choose another --out")
    previous = _previous(out)
    rows: Dict[str, Dict[str, object]] = {}
    todo = []
    for case in cases:
        digest = fingerprint(case, options)
        report = _report(out, case)
        if report is not None and report.get("batch_fingerprint") == digest:
            rows[case.case_id] = summary_row(case, "done", "", previous.get(case.case_id, {}).get("seconds", ""),
                                             report, digest)
        elif previous.get(case.case_id, {}).get("status") == "failed" and not retry_failed and \
                previous[case.case_id].get("fingerprint") == digest:
            rows[case.case_id] = dict(previous[case.case_id])
        else:
            todo.append((case, run_command(case, out, options, digest, overwrite=(out / case.case_id).exists()),
                         digest))
    if todo:
        threads = threads_per_worker or (0 if scheduler else max(1, usable_cores() // workers))
        cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1,
                                                      processes=True, dashboard_address=None)
        try:
            with Client(scheduler or cluster) as client:
                futures = {client.submit(run_case_process, argv, str(out / case.case_id), digest, threads,
                                         key=f"case-{case.case_id}-{i}", pure=False): (case, digest)
                           for i, (case, argv, digest) in enumerate(todo)}
                pending = {str(f.key) for f in futures}
                failed = done = 0
                finished = as_completed(futures)
                while not finished.is_empty():
                    for future in finished.next_batch(block=False) if finished.has_ready() else ():
                        case, digest = futures[future]
                        pending.discard(str(future.key))
                        try:
                            result = future.result()
                        except Exception as e:  # noqa: BLE001 - a lost worker: the case failed, the batch goes on
                            result = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0],
                                      "seconds": ""}
                        done += result["status"] == "done"
                        failed += result["status"] != "done"
                        rows[case.case_id] = summary_row(
                            case, result["status"], result["error"], result["seconds"],
                            _report(out, case) if result["status"] == "done" else None, digest)
                    if progress is not None:
                        progress(done, failed, _running(client, pending) if pending else 0, len(todo))
                    if pending:
                        time.sleep(PROGRESS_POLL_S)
        finally:
            if cluster is not None:
                cluster.close()
    ordered = [rows[c.case_id] for c in cases]
    write_csv(out / "summary.csv", ordered, SUMMARY_COLUMNS)
    return ordered


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """``rows`` under the header ``columns`` (None and missing values empty), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
