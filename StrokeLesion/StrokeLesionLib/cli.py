"""The `strokelesion` command line (see the README for the contract).

Every command that writes a folder claims it before any work (:mod:`output_folder`: checked, locked,
staged, verified, installed in one rename), so a failure, a kill or a second run never leaves a partial
output and never removes anything this tool did not write. Bad input or a bad option prints one line,
``strokelesion: error: <what is wrong>``, and exits with status 2; a failure while writing (full disk,
file size limit) prints one line and exits with status 1; SIGTERM exits with status 143.
"""
import argparse
import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path

# Before numpy loads: the stages run slabs and chunks on every core themselves, and OpenBLAS threads of their own
# (which spin after each product) only took cores from them: the maps stage ran 0.78 s instead of 0.49 s on
# the 2-core machine. A value set by the user is kept. Child processes (batch workers) inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from AIFSelectorLib.constants import DENOISE_SIGMA_MM
from AIFSelectorLib.deconvolution import MAP_METHODS
from AIFSelectorLib.io.time_grid import PLAUSIBLE_DT_S
from AIFSelectorLib.errors import InputError

from StrokeLesionLib.lesion_models.checks import MODELS
from AIFSelectorLib.thresholds.decision import MIN_ISLAND_ML, Thresholds
from StrokeLesionLib.case.output_folder import Terminated, claimed_output

OPTION_RANGES = {
    "--dt": PLAUSIBLE_DT_S,
    "--core-rcbf": (0.05, 0.95),
    "--tmax": (0.5, 30.0),
    "--min-island-ml": (0.0, 100.0),
    "--smooth-mm": (0.0, 20.0),
    "--noise-hu": (0.0, 200.0),
    "--head-rotation-max": (0.0, 45.0),
    "--seed": (0, 2 ** 32 - 1),
    "--port": (0, 65535),
    "--max-upload-mb": (1.0, 100000.0),
}
"""Accepted ranges (inclusive) of the numeric options: --dt in seconds as the file check (PLAUSIBLE_DT_S);
--core-rcbf a fraction of control CBF (clinical rules use 0.20-0.45); --tmax in seconds (clinical 4-10 s);
--min-island-ml in ml; --smooth-mm in mm; --noise-hu in HU; --head-rotation-max in degrees; --seed as numpy;
--port a TCP port (0: any free one); --max-upload-mb in MB."""


def _ranged(option: str, integer: bool = False):
    """An argparse type: a finite number inside OPTION_RANGES[option]; else an error naming both."""
    lo, hi = OPTION_RANGES[option]

    def convert(text):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be {'an integer' if integer else 'a number'} "
                                             f"from {lo:g} to {hi:g}, got {text!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{option} must be from {lo:g} to {hi:g}, got {text}")
        return value
    return convert


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are the one line ``strokelesion: error: ...`` and exit status 2."""

    def error(self, message):
        message = message.replace("\n", " ")
        if message.startswith("argument ") and ": " in message:
            message = message.split(": ", 1)[1] if "must be" in message else message
        self.exit(2, f"strokelesion: error: {message}\n")


PLAIN_PROGRESS_STEP = 0.25
"""Where stderr is not a terminal (a log file, a pipe, a batch system), progress is a plain line
``<stage>: N %`` at every quarter, not a redrawn bar."""


@contextlib.contextmanager
def _progress_bar(desc: str):
    """Yields a callable(fraction): on a terminal a tqdm bar on stderr, created on first use and always
    cleared at the end (so an error message starts on a clean line); elsewhere plain progress lines."""
    bar = []
    shown = [0.0]

    def update(fraction: float):
        if not sys.stderr.isatty():
            if fraction >= shown[0] + PLAIN_PROGRESS_STEP - 1e-9:
                shown[0] = PLAIN_PROGRESS_STEP * int(fraction / PLAIN_PROGRESS_STEP + 1e-9)
                print(f"{desc}: {100 * shown[0]:.0f} %", file=sys.stderr, flush=True)
            return
        if not bar:
            from tqdm import tqdm
            bar.append(tqdm(total=100, desc=desc, unit="%", leave=False, file=sys.stderr,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}"))
        bar[0].n = int(round(100 * fraction))
        bar[0].refresh()
    try:
        yield update
    finally:
        if bar:
            bar[0].close()


def load_uniform_series(path, dt_s=None, series_uid=None):
    """io.ctp_io.load_uniform_series, imported on first use (SimpleITK takes 0.3 s to import)."""
    from AIFSelectorLib.io.ctp_io import load_uniform_series as load
    return load(path, dt_s, series_uid)


def _load_mask(path, series):
    from AIFSelectorLib.io.volume_io import read_volume
    mask, geometry = read_volume(path)
    if mask.shape != series.shape_zyx or not geometry.matches(series.geometry):
        raise InputError(f"the mask {Path(path).name} has another geometry than the series "
                         f"(shape {mask.shape} vs {series.shape_zyx}, spacing {geometry.spacing_mm} vs "
                         f"{series.geometry.spacing_mm})")
    return mask > 0


def _check_device(device):
    """--device cuda without CUDA (or without torch) is refused before any work."""
    if device == "cuda":
        from AIFSelectorLib.models.device import resolve_device
        try:
            resolve_device("cuda")
        except ImportError:
            raise InputError("--device cuda needs torch with CUDA: torch is not installed") from None


def _input_bytes(path) -> int:
    """Size of an input file, or of the files of an input folder (links not followed)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _claim(args, inputs=(), needed_bytes: int = 0):
    """The claimed output folder of a command (see output_folder); ``needed_bytes``: free space asked for."""
    from StrokeLesionLib.case.pipeline import VERSION
    command = " ".join(["strokelesion"] + [str(a) for a in sys.argv[1:]]) if sys.argv else "strokelesion"
    return claimed_output(args.out, args.overwrite, inputs=[i for i in inputs if i is not None],
                          command=command, needed_bytes=needed_bytes, version=VERSION)


def _needed_for(path) -> int:
    """Free space asked for the outputs of one CTP input: half its size (the maps of a series take about a
    quarter of its frames), and 16 MB at least."""
    return (16 << 20) + _input_bytes(path) // 2


def _options(args):
    """The RunOptions of the command line; a lesion model's weights are checked here, before any work."""
    from StrokeLesionLib.case.pipeline import RunOptions
    _check_device(getattr(args, "device", None))
    options = RunOptions(aif=getattr(args, "aif", "aifnet"), method=args.method,
                         thresholds=Thresholds(args.core_rcbf, args.tmax, args.min_island_ml),
                         smooth_mm=args.smooth_mm, device=args.device,
                         lesion_model=getattr(args, "lesion_model", "none"))
    if options.lesion_model != "none":
        from StrokeLesionLib.lesion_models.registry import check_weights
        check_weights(options.lesion_model)
    return options


def _run_and_write(series, options, stage, source, note="", extra_report=None, read_s=None):
    """Runs the case and writes its outputs into ``stage`` (a claimed output folder); ``extra_report``:
    optional callable(result) -> dict of more report.json sections; ``read_s``: seconds spent reading."""
    from StrokeLesionLib.case.pipeline import report_dict, run_case, write_outputs
    with _progress_bar("maps") as progress:
        result = run_case(series, options, progress=progress)
    report = report_dict(result, source, note)
    if read_s is not None:
        report["timings_s"] = {"read": round(read_s, 3), **report["timings_s"]}
    if extra_report is not None:
        report.update(extra_report(result))
    write_outputs(result, stage.path, report)
    return result, report


def _print_volumes(report):
    v = report["volumes_ml"]
    ratio = "n/a" if v["mismatch_ratio"] is None else f"{v['mismatch_ratio']:.2f}"
    print(f"core {v['core_ml']:.1f} ml, penumbra {v['penumbra_ml']:.1f} ml, "
          f"mismatch ratio {ratio}, mismatch volume {v['mismatch_volume_ml']:.1f} ml")
    flags = [k for k, on in report["aif"]["quality_flags"].items() if on]
    if flags:
        print("AIF quality flags: " + ", ".join(flags))
    for w in report["warnings"]:
        print("warning: " + w)


def _check_scene(args):
    """--scene OUT.mrb: fails before any work when the bundle cannot be written."""
    scene = getattr(args, "scene", None)
    if scene is None:
        return
    if scene.suffix.lower() != ".mrb":
        raise InputError(f"--scene must name a Slicer scene bundle ending in .mrb, got {scene.name}")
    if scene.exists() and not args.overwrite:
        raise InputError(f"scene bundle {scene} already exists: choose another name or pass --overwrite")
    if scene.exists() and not scene.is_file():
        raise InputError(f"--scene {scene} exists and is not a file")
    out = Path(args.out).expanduser().resolve()
    if out in scene.expanduser().resolve().parents:
        raise InputError(f"--scene {scene} lies inside --out {args.out}: write the bundle beside the folder")
    import importlib.util
    if importlib.util.find_spec("slicer") is None:
        raise InputError("--scene needs slicer-core: pip install slicer-core")


def _write_scene(args, result):
    """Writes the --scene bundle (atomically) after the run; imports slicer only here."""
    if getattr(args, "scene", None) is None:
        return
    from StrokeLesionLib.mrml.scene_bundle import write_scene_bundle
    write_scene_bundle(result, args.scene)
    print(f"wrote {args.scene}")


def cmd_run(args):
    _check_scene(args)
    options = _options(args)
    aif_file = None if args.aif in ("aifnet", "classic") else args.aif
    digest = getattr(args, "batch_fingerprint", None)  # `batch` marks the outputs it resumes from
    extra = (lambda result: {"batch_fingerprint": digest}) if digest else None
    with _claim(args, [args.ctp, args.mask, aif_file], _needed_for(args.ctp)) as stage:
        t0 = time.perf_counter()
        series, note = load_uniform_series(args.ctp, args.dt, args.series)
        if args.mask:
            options.brain_mask = _load_mask(args.mask, series)
        result, report = _run_and_write(series, options, stage, str(args.ctp), note, extra_report=extra,
                                        read_s=time.perf_counter() - t0)
    _print_volumes(report)
    if result.lesion is not None:
        print(f"lesion ({options.lesion_model}) {report['volumes_ml']['lesion_ml']:.1f} ml")
    print(f"wrote {args.out}")
    _write_scene(args, result)
    return 0


def _segment_inputs(args):
    """(inputs for lesion_models.segment, geometry, report 'input' section) from the command line."""
    from StrokeLesionLib.lesion_models.checks import read_image_3d
    if args.model != "pseudodwi":
        for flag, value in (("--maps", args.maps), ("--dt", args.dt), ("--series", args.series)):
            if value is not None:
                raise InputError(f"{flag} is for --model pseudodwi only")
        image, geometry = read_image_3d(args.image, args.model)
        inputs = {"ncct" if args.model == "sean" else "t1": image, "spacing_xyz": geometry.spacing_mm}
        return inputs, geometry, {"source": str(args.image), "shape_zyx": list(image.shape),
                                  "spacing_mm": list(geometry.spacing_mm)}
    series, note = load_uniform_series(args.image, args.dt, args.series)
    inputs = {"series": series}
    if args.maps is not None:
        inputs.update(_read_maps_folder(args.maps, series))
    from StrokeLesionLib.case.pipeline import input_section
    section = input_section(series, str(args.image), note)
    section["maps"] = str(args.maps) if args.maps is not None else "computed (AIFNet AIF/VOF, oSVD)"
    return inputs, series.geometry, section


def _read_maps_folder(folder, series):
    """--maps DIR: cbf/cbv/mtt/tmax.nii.gz (and brain_mask.nii.gz when there), e.g. a `run` output folder."""
    from AIFSelectorLib.io.volume_io import read_volume
    from StrokeLesionLib.lesion_models.checks import MAP_KEYS
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--maps {folder}: not a folder")
    missing = [f"{k}.nii.gz" for k in MAP_KEYS if not (folder / f"{k}.nii.gz").is_file()]
    if missing:
        raise InputError(f"--maps {folder}: missing perfusion map(s) {', '.join(missing)}")
    out = {"maps": {}}
    for name in MAP_KEYS + ("brain_mask",):
        path = folder / f"{name}.nii.gz"
        if name == "brain_mask" and not path.is_file():
            continue
        array, geometry = read_volume(path)
        if array.shape != series.shape_zyx or not geometry.matches(series.geometry, tol=1e-2):
            raise InputError(f"--maps: {path.name} lies on another grid than the series (shape {array.shape} "
                             f"vs {series.shape_zyx}, spacing {geometry.spacing_mm} vs {series.geometry.spacing_mm})")
        if name == "brain_mask":
            out["brain_mask"] = array > 0
        else:
            out["maps"][name] = array
    return out


def cmd_segment(args):
    from StrokeLesionLib.lesion_models.registry import check_weights, segment
    from StrokeLesionLib.case.pipeline import VERSION, write_json, write_lesion_outputs
    t0 = time.perf_counter()
    _check_device(args.device)  # fail before any work: no CUDA for --device cuda,
    check_weights(args.model)  # missing or corrupted weights
    with _claim(args, [args.image, args.maps], _needed_for(args.image)) as stage:
        inputs, geometry, input_section = _segment_inputs(args)
        t_load = time.perf_counter() - t0
        mask, extras, info = segment(args.model, inputs, device=args.device)
        info["timings_s"] = {"load": round(t_load, 3), **info["timings_s"],
                             "total": round(time.perf_counter() - t0, 3)}
        report = {"strokelesion_version": VERSION, "input": input_section, "lesion_ml": info["lesion_ml"],
                  "lesion_model": info}
        write_lesion_outputs(stage.path, mask, extras, geometry)
        write_json(stage / "report.json", report)
    print(f"lesion ({args.model}) {info['lesion_ml']:.1f} ml")
    print(f"wrote {args.out}")
    return 0


def cmd_aif(args):
    from AIFSelectorLib.input_functions.policy import select_input_functions
    from AIFSelectorLib.input_functions.quality import aif_quality_flags
    from AIFSelectorLib.io import aif_csv
    from AIFSelectorLib.io.volume_io import write_volume
    from AIFSelectorLib.maps.compute import deconvolution_aif
    from AIFSelectorLib.prepare.prepared import prepare
    from StrokeLesionLib.case.pipeline import VERSION, aif_section, input_section, thread_report, write_json
    _check_device(args.device)
    with _claim(args, [args.ctp], _needed_for(args.ctp)) as stage:
        series, note = load_uniform_series(args.ctp, args.dt, args.series)
        prepared = prepare(series)
        f = select_input_functions(prepared, args.aif, args.device)
        enh, scale = deconvolution_aif(prepared, f)
        flags = aif_quality_flags(enh, series.dt_s, prepared.bolus.arrival_s, has_vof=f.vof_hu is not None)
        aif_csv.write_aif_csv(stage / "aif.csv", f.times_s, f.aif_hu, f.vof_hu)
        write_volume(stage / "aif_pvol.nii.gz", f.aif_pvol, series.geometry)
        if f.vof_pvol is not None:
            write_volume(stage / "vof_pvol.nii.gz", f.vof_pvol, series.geometry)
        write_json(stage / "report.json", {"strokelesion_version": VERSION,
                                           "input": input_section(series, str(args.ctp), note),
                                           "aif": aif_section(prepared, f, flags, enh, scale),
                                           "models": dict(f.details.get("models", {})),
                                           "warnings": list(prepared.warnings) + list(f.warnings),
                                           "threads": thread_report()})
    for w in f.warnings:
        print("warning: " + w)
    print(f"wrote {args.out}")
    return 0


PHANTOM_BYTES = 200 << 20
"""Free space asked for a phantom folder (about 110 MB written) or a demo (phantom and results)."""


def cmd_phantom(args):
    from AIFSelectorLib.phantom.case import make_phantom, write_phantom
    with _claim(args, needed_bytes=PHANTOM_BYTES) as stage:
        case = make_phantom(seed=args.seed, noise_hu=args.noise_hu, lesion_variety=args.lesion_variety,
                            head_rotation_max_deg=args.head_rotation_max)
        write_phantom(case, stage.path)
    print(f"wrote phantom seed {args.seed} to {args.out}")
    return 0


def cmd_serve(args):
    from StrokeLesionLib.web.serve import serve
    from AIFSelectorLib.models.device import cuda_if_present
    _check_device(args.device)
    device = cuda_if_present() if args.device == "auto" else args.device
    return serve(str(args.source) if args.source else None, args.host, args.port,
                 str(args.exports) if args.exports else None, device, args.max_upload_mb)


def cmd_demo(args):
    from AIFSelectorLib.phantom.case import make_phantom, write_phantom
    from StrokeLesionLib.case.truth_comparison import compare_with_truth, format_comparison
    _check_scene(args)
    options = _options(args)
    with _claim(args, needed_bytes=2 * PHANTOM_BYTES) as stage:
        print(f"making the digital phantom (seed {args.seed}) ...")
        case = make_phantom(seed=args.seed)
        write_phantom(case, stage / "phantom")  # the phantom lives in the output folder from the start
        series, note = load_uniform_series(stage / "phantom" / "ctp.nii.gz")
        result, report = _run_and_write(series, options, stage, "phantom/ctp.nii.gz", note,
                                        lambda r: {"truth_comparison": compare_with_truth(r, case)})
    print(format_comparison(report["truth_comparison"]))
    for w in report["warnings"]:
        print("warning: " + w)
    print(f"wrote {args.out} (phantom and its truth in {Path(args.out) / 'phantom'})")
    _write_scene(args, result)
    return 0


def cmd_batch(args):
    from StrokeLesionLib.case.batch import read_manifest, run_batch
    cases = read_manifest(args.manifest)
    if args.workers < 1 or (args.threads_per_worker is not None and args.threads_per_worker < 1):
        raise InputError("--workers and --threads-per-worker must be at least 1")
    options = ["--aif", args.aif, "--method", args.method, "--core-rcbf", repr(args.core_rcbf), "--tmax",
               repr(args.tmax), "--min-island-ml", repr(args.min_island_ml), "--smooth-mm", repr(args.smooth_mm),
               "--lesion-model", args.lesion_model] + (["--device", args.device] if args.device else []) + (
               ["--dt", repr(args.dt)] if args.dt else [])
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    from StrokeLesionLib.case.batch_display import cases_progress, format_summary_table
    with cases_progress() as progress:
        rows = run_batch(cases, out, options, args.workers, args.threads_per_worker, args.scheduler,
                         args.retry_failed, progress=progress)
    print(format_summary_table(rows))
    n_failed = sum(r["status"] != "done" for r in rows)
    print(f"{len(rows) - n_failed} of {len(rows)} cases done, {n_failed} failed; summary in {out / 'summary.csv'}")
    if args.reference:
        from StrokeLesionLib.case.agreement import write_agreement
        summary = write_agreement(out, cases, {r["case_id"]: r for r in rows},
                                  Thresholds(args.core_rcbf, args.tmax, args.min_island_ml), args.reference)
        for s in summary:
            icc = "n/a" if s["icc_a1"] is None else f"{s['icc_a1']:.3f}"
            dice = "" if s["median_dice_vs_ot"] is None else f", median Dice vs OT {s['median_dice_vs_ot']:.3f}"
            print(f"agreement with {args.reference}, {s['measure']}: ICC(A,1) {icc}, bias {s['bias_ml']:.1f} ml "
                  f"(LoA {s['loa_low_ml']:.1f} to {s['loa_high_ml']:.1f}){dice}")
        print(f"agreement tables in {out / 'agreement.csv'}, {out / 'agreement_summary.csv'}, "
              f"{out / 'agreement.png'}")
    return 0 if n_failed == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="strokelesion", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common_out(sp):
        sp.add_argument("--out", required=True, type=Path,
                        help="output folder: a new folder, not the current one nor one holding the input")
        sp.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder that strokelesion wrote (never any other)")

    def common_ctp(sp):
        sp.add_argument("ctp", type=Path, help="4D NIfTI, .seq.nrrd, DICOM folder or ISLES 2018 case folder")
        sp.add_argument("--dt", type=_ranged("--dt"), default=None,
                        help="frame interval in seconds, 0.05-60 (overrides the file)")
        sp.add_argument("--series", default=None, metavar="UID",
                        help="the DICOM Series Instance UID to read from a folder holding several series")

    def common_maps(sp):
        sp.add_argument("--method", choices=MAP_METHODS, default="osvd")
        sp.add_argument("--core-rcbf", type=_ranged("--core-rcbf"), default=Thresholds().core_rcbf,
                        help="core: rCBF below this fraction (0.38; 0.30 as RAPID)")
        sp.add_argument("--tmax", type=_ranged("--tmax"), default=Thresholds().tmax_s,
                        help="Tmax threshold in seconds (0.5-30)")
        sp.add_argument("--min-island-ml", type=_ranged("--min-island-ml"), default=MIN_ISLAND_ML,
                        help="drop core/penumbra islands smaller than this (ml)")
        sp.add_argument("--smooth-mm", type=_ranged("--smooth-mm"), default=DENOISE_SIGMA_MM,
                        help="in-plane scale (mm) of the edge-preserving denoising before deconvolution (0: none)")
        sp.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="run deconvolution with torch on this device (default: numpy)")

    sp = sub.add_parser("run", help="whole pipeline on one CTP series")
    common_ctp(sp)
    common_out(sp)
    sp.add_argument("--aif", default="aifnet",
                    help="aifnet (default; falls back to classic with a warning if its weights are unusable), "
                         "classic, or a CSV file time_s,aif_hu[,vof_hu]")
    sp.add_argument("--mask", type=Path, help="brain mask replacing the automatic one (same geometry)")
    common_maps(sp)
    sp.add_argument("--lesion-model", choices=("pseudodwi", "none"), default="none",
                    help="also segment the lesion with this deep model (writes lesion.nii.gz, pseudo_dwi.nii.gz)")
    sp.add_argument("--scene", type=Path, help="also write a Slicer scene bundle (.mrb; needs slicer-core)")
    sp.add_argument("--batch-fingerprint", default=None, help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("batch", help="every case of a manifest (CSV or folder of cases) through run, on Dask")
    sp.add_argument("manifest", type=Path, help="CSV (case_id,input[,aif,mask,series_uid]) or a folder of cases")
    sp.add_argument("--out", required=True, type=Path, help="folder of the case folders and summary.csv")
    sp.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    sp.add_argument("--threads-per-worker", type=int, default=None,
                    help="CPU threads of each case (default: the cores shared among the local workers)")
    sp.add_argument("--scheduler", default=None, metavar="ADDRESS", help="an existing dask.distributed scheduler")
    sp.add_argument("--retry-failed", action="store_true", help="run the cases that failed before again")
    sp.add_argument("--aif", choices=("aifnet", "classic"), default="aifnet", help="AIF/VOF selector")
    sp.add_argument("--dt", type=_ranged("--dt"), default=None, help="frame interval in seconds, 0.05-60")
    common_maps(sp)
    sp.add_argument("--lesion-model", choices=("pseudodwi", "none"), default="none")
    sp.add_argument("--reference", choices=("isles2018",), default=None,
                    help="also compare every case with the dataset's own maps and labels (agreement tables)")
    sp.set_defaults(func=cmd_batch)

    sp = sub.add_parser("segment", help="one deep lesion model on its input image")
    sp.add_argument("image", type=Path,
                    help="pseudodwi: CTP (4D NIfTI, .seq.nrrd, DICOM folder, ISLES 2018 case folder); "
                         "sean: NCCT in HU, xnet: T1 MRI (3D NIfTI/NRRD or DICOM folder)")
    sp.add_argument("--model", required=True, choices=MODELS, help="lesion model")
    common_out(sp)
    sp.add_argument("--dt", type=_ranged("--dt"), default=None,
                    help="pseudodwi: frame interval in seconds, 0.05-60 (overrides the file)")
    sp.add_argument("--series", default=None, metavar="UID",
                    help="the DICOM Series Instance UID to read from a folder holding several series")
    sp.add_argument("--maps", type=Path, default=None,
                    help="pseudodwi: folder with cbf/cbv/mtt/tmax.nii.gz (e.g. a `run` output); default: computed")
    sp.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    sp.set_defaults(func=cmd_segment)

    sp = sub.add_parser("maps", help="maps from a given AIF (CSV)")
    common_ctp(sp)
    common_out(sp)
    sp.add_argument("--aif", required=True, help="CSV file time_s,aif_hu[,vof_hu]")
    sp.add_argument("--mask", type=Path, help="brain mask replacing the automatic one (same geometry)")
    common_maps(sp)
    sp.set_defaults(func=cmd_run)  # run with a given AIF: same steps, no --scene

    sp = sub.add_parser("aif", help="AIF/VOF curves and Pvol volumes only")
    common_ctp(sp)
    common_out(sp)
    sp.add_argument("--aif", choices=("aifnet", "classic"), default="aifnet", help="AIF/VOF selector")
    sp.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="AIFNet device (auto: CUDA when present)")
    sp.set_defaults(func=cmd_aif)

    sp = sub.add_parser("phantom", help="a digital CTP phantom with its ground truth")
    common_out(sp)
    sp.add_argument("--seed", type=_ranged("--seed", integer=True), default=0)
    sp.add_argument("--noise-hu", type=_ranged("--noise-hu"), default=5.0,
                    help="CT noise sigma per voxel and frame (HU, 0-200)")
    sp.add_argument("--lesion-variety", action="store_true",
                    help="1-3 lesions of random site, size and shape, chronic T1 look (the lesion models' data)")
    sp.add_argument("--head-rotation-max", type=_ranged("--head-rotation-max"), default=8.0, metavar="DEG",
                    help="in-plane head rotation drawn in +/- DEG (default 8)")
    sp.set_defaults(func=cmd_phantom)

    sp = sub.add_parser("demo", help="phantom -> whole pipeline -> results beside the truth")
    sp.add_argument("--out", type=Path, default=Path("strokelesion-demo"))
    sp.add_argument("--overwrite", action="store_true",
                    help="replace an existing output folder that strokelesion wrote (never any other)")
    sp.add_argument("--seed", type=_ranged("--seed", integer=True), default=0)
    common_maps(sp)
    sp.add_argument("--aif", choices=("aifnet", "classic"), default="aifnet", help="AIF/VOF selector")
    sp.add_argument("--lesion-model", choices=("pseudodwi", "none"), default="pseudodwi",
                    help="deep lesion model run on the phantom (default pseudodwi; its weights saw only phantoms)")
    sp.add_argument("--scene", type=Path, help="also write a Slicer scene bundle (.mrb; needs slicer-core)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("serve", help="the review web app (trame-slicer) in a browser")
    sp.add_argument("source", nargs="?", type=Path,
                    help="a CTP (any input run reads), a scene bundle (.mrb) or a folder holding scene.mrb; "
                         "or none, and upload one from the page")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=_ranged("--port", integer=True), default=8080, help="TCP port (0: any free)")
    sp.add_argument("--exports", type=Path,
                    help="folder for the page's exports (default: a temporary folder removed at exit)")
    sp.add_argument("--max-upload-mb", type=_ranged("--max-upload-mb"), default=1024.0,
                    help="largest upload accepted, MB (default 1024)")
    sp.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="deconvolution, AIFNet and the lesion model on this device")
    sp.set_defaults(func=cmd_serve)
    return p


def _terminate(signum, frame):
    raise Terminated(signum)


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad option (its one line is printed): a status, not an exit
        return e.code if isinstance(e.code, int) else 2
    handlers = {}
    if hasattr(signal, "SIGTERM"):
        try:  # only the main thread may set handlers (main() called from a worker thread keeps them)
            for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if sig is not None:
                    handlers[sig] = signal.signal(sig, _terminate)
        except ValueError:
            pass
    try:
        return args.func(args)
    except InputError as e:
        print(f"strokelesion: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a failure while writing: full disk, file size limit, permissions
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"strokelesion: error: {e.strerror or e}{where} (nothing was installed)", file=sys.stderr)
        return 1
    except MemoryError:
        print("strokelesion: error: out of memory (nothing was installed)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("strokelesion: interrupted (nothing was installed)", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"strokelesion: terminated by signal {e.args[0]} (nothing was installed)", file=sys.stderr)
        return 128 + int(e.args[0])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
