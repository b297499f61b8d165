"""The `strokelesion` command line (see README and DESIGN.md for the contract).

Every command that writes a folder checks it is free before working, writes into a staging folder and
renames it into place at the end, so a failure leaves no partial output. Bad input prints one line,
``strokelesion: error: <what is wrong>``, and exits with status 2.
"""
import argparse
import contextlib
import sys
from pathlib import Path

from AIFSelectorLib.constants import DENOISE_SIGMA_MM
from AIFSelectorLib.errors import InputError

from .lesion_models import MODELS
from .lesion_thresholds import MIN_ISLAND_ML, Thresholds
from .output_folder import check_free, staged_folder


@contextlib.contextmanager
def _progress_bar(desc: str):
    """Yields a callable(fraction) drawing a progress bar on stderr, created on first use and always
    cleared at the end (so an error message starts on a clean line)."""
    bar = []

    def update(fraction: float):
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


def load_series(path, dt_s=None):
    """A CTP series from any supported input, resampled to a uniform grid when its frames are irregular.
    Returns (series, note) where note says what was resampled, or ''."""
    from AIFSelectorLib.ctp_io import load_ctp, resample_uniform
    series = load_ctp(path, dt_s=dt_s)
    if series.is_uniform:
        return series, ""
    uniform = resample_uniform(series)
    return uniform, f"irregular frame times resampled to a uniform {uniform.dt_s:g} s grid"


def _load_mask(path, series):
    from AIFSelectorLib.volume_io import read_volume
    mask, geometry = read_volume(path)
    if mask.shape != series.shape_zyx or not geometry.matches(series.geometry):
        raise InputError(f"the mask {Path(path).name} has another geometry than the series "
                         f"(shape {mask.shape} vs {series.shape_zyx}, spacing {geometry.spacing_mm} vs "
                         f"{series.geometry.spacing_mm})")
    return mask > 0


def _options(args):
    """The RunOptions of the command line; a lesion model's weights are checked here, before any work."""
    from .pipeline import RunOptions
    options = RunOptions(aif=getattr(args, "aif", "aifnet"), method=args.method,
                         thresholds=Thresholds(args.core_rcbf, args.tmax, args.min_island_ml),
                         smooth_mm=args.smooth_mm, device=args.device,
                         lesion_model=getattr(args, "lesion_model", "none"))
    if options.lesion_model != "none":
        from .lesion_models import check_weights
        check_weights(options.lesion_model)
    return options


def _run_and_write(series, options, out, overwrite, source, note="", extra_report=None, stage_hook=None):
    from .pipeline import report_dict, run_case, write_outputs
    check_free(out, overwrite)
    with _progress_bar("maps") as progress:
        result = run_case(series, options, progress=progress)
    report = report_dict(result, source)
    if note:
        report["input"]["note"] = note
    with staged_folder(out, overwrite) as stage:
        if stage_hook is not None:
            report.update(stage_hook(stage, result) or {})
        if extra_report:
            report.update(extra_report)
        write_outputs(result, stage, report)
    return result, report


def _print_volumes(report):
    v = report["volumes_ml"]
    ratio = "n/a" if v["mismatch_ratio"] is None else f"{v['mismatch_ratio']:.2f}"
    print(f"core {v['core_ml']:.1f} ml, penumbra {v['penumbra_ml']:.1f} ml, "
          f"mismatch ratio {ratio}, mismatch volume {v['mismatch_volume_ml']:.1f} ml")
    flags = [k for k, on in report["aif"]["quality_flags"].items() if on]
    if flags:
        print("AIF quality flags: " + ", ".join(flags))
    for w in report["aif"]["warnings"]:
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
    import importlib.util
    if importlib.util.find_spec("slicer") is None:
        raise InputError("--scene needs slicer-core: pip install slicer-core")


def _write_scene(args, result):
    """Writes the --scene bundle (atomically) after the run; imports slicer only here."""
    if getattr(args, "scene", None) is None:
        return
    from .scene_bundle import write_scene_bundle
    write_scene_bundle(result, args.scene)
    print(f"wrote {args.scene}")


def cmd_run(args):
    _check_scene(args)
    options = _options(args)
    series, note = load_series(args.ctp, args.dt)
    if args.mask:
        options.brain_mask = _load_mask(args.mask, series)
    result, report = _run_and_write(series, options, args.out, args.overwrite, str(args.ctp), note)
    _print_volumes(report)
    if result.lesion is not None:
        print(f"lesion ({options.lesion_model}) {report['volumes_ml']['lesion_ml']:.1f} ml")
    print(f"wrote {args.out}")
    _write_scene(args, result)
    return 0


def _segment_inputs(args):
    """(inputs for lesion_models.segment, geometry, report 'input' section) from the command line."""
    from .lesion_models import read_image_3d
    if args.model != "pseudodwi":
        for flag, value in (("--maps", args.maps), ("--dt", args.dt)):
            if value is not None:
                raise InputError(f"{flag} is for --model pseudodwi only")
        image, geometry = read_image_3d(args.image, args.model)
        inputs = {"ncct" if args.model == "sean" else "t1": image, "spacing_xyz": geometry.spacing_mm}
        return inputs, geometry, {"source": str(args.image), "shape_zyx": list(image.shape),
                                  "spacing_mm": list(geometry.spacing_mm)}
    series, note = load_series(args.image, args.dt)
    inputs = {"series": series}
    if args.maps is not None:
        inputs.update(_read_maps_folder(args.maps, series))
    section = {"source": str(args.image), "shape_tzyx": list(series.data.shape),
               "spacing_mm": list(series.geometry.spacing_mm), "frame_interval_s": series.dt_s,
               "maps": str(args.maps) if args.maps is not None else "computed (AIFNet AIF/VOF, oSVD)"}
    if note:
        section["note"] = note
    return inputs, series.geometry, section


def _read_maps_folder(folder, series):
    """--maps DIR: cbf/cbv/mtt/tmax.nii.gz (and brain_mask.nii.gz when there), e.g. a `run` output folder."""
    from AIFSelectorLib.volume_io import read_volume
    from .lesion_models import MAP_KEYS
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
    import time
    from AIFSelectorLib.model_weights import resolve_device
    from .lesion_models import check_weights, segment
    from .pipeline import VERSION, write_json, write_lesion_outputs
    t0 = time.perf_counter()
    check_free(args.out, args.overwrite)
    resolve_device(args.device)  # fail before any work: no CUDA for --device cuda,
    check_weights(args.model)  # missing or corrupted weights
    inputs, geometry, input_section = _segment_inputs(args)
    t_load = time.perf_counter() - t0
    mask, extras, info = segment(args.model, inputs, device=args.device)
    info["timings_s"] = {"load": round(t_load, 3), **info["timings_s"],
                         "total": round(time.perf_counter() - t0, 3)}
    report = {"strokelesion_version": VERSION, "input": input_section, "lesion_ml": info["lesion_ml"],
              "lesion_model": info}
    with staged_folder(args.out, args.overwrite) as stage:
        write_lesion_outputs(stage, mask, extras, geometry)
        write_json(stage / "report.json", report)
    print(f"lesion ({args.model}) {info['lesion_ml']:.1f} ml")
    print(f"wrote {args.out}")
    return 0


def cmd_aif(args):
    from AIFSelectorLib import aif_csv
    from AIFSelectorLib.perfusion_pipeline import prepare
    from AIFSelectorLib.volume_io import write_volume
    from .pipeline import select_input_functions, write_json
    series, note = load_series(args.ctp, args.dt)
    check_free(args.out, args.overwrite)
    prepared = prepare(series)
    f = select_input_functions(prepared, args.aif, args.device)
    with staged_folder(args.out, args.overwrite) as stage:
        aif_csv.write_aif_csv(stage / "aif.csv", f.times_s, f.aif_hu, f.vof_hu)
        write_volume(stage / "aif_pvol.nii.gz", f.aif_pvol, series.geometry)
        if f.vof_pvol is not None:
            write_volume(stage / "vof_pvol.nii.gz", f.vof_pvol, series.geometry)
        write_json(stage / "report.json", {"input": {"source": str(args.ctp), "note": note},
                                           "models": f.details.get("models", {}),
                                           "aif": {"selector": f.method, "warnings": f.warnings,
                                                   "bolus_arrival_s": prepared.bolus.arrival_s}})
    for w in f.warnings:
        print("warning: " + w)
    print(f"wrote {args.out}")
    return 0


def cmd_phantom(args):
    from AIFSelectorLib.phantom import make_phantom, write_phantom
    check_free(args.out, args.overwrite)
    case = make_phantom(seed=args.seed, noise_hu=args.noise_hu, lesion_variety=args.lesion_variety,
                        head_rotation_max_deg=args.head_rotation_max)
    with staged_folder(args.out, args.overwrite) as stage:
        write_phantom(case, stage)
    print(f"wrote phantom seed {args.seed} to {args.out}")
    return 0


def cmd_demo(args):
    from AIFSelectorLib.phantom import make_phantom, write_phantom
    from .truth_comparison import compare_with_truth, format_comparison
    check_free(args.out, args.overwrite)
    _check_scene(args)
    options = _options(args)
    print(f"making the digital phantom (seed {args.seed}) ...")
    case = make_phantom(seed=args.seed)
    phantom_dir = Path(args.out).resolve().parent / f".{Path(args.out).name}.phantom-input"
    try:
        write_phantom(case, phantom_dir)
        series, note = load_series(phantom_dir / "ctp.nii.gz")

        def keep_phantom_and_compare(stage, result):
            phantom_dir.rename(stage / "phantom")
            return {"truth_comparison": compare_with_truth(result, case)}

        result, report = _run_and_write(series, options, args.out, args.overwrite, "phantom/ctp.nii.gz",
                                        note, stage_hook=keep_phantom_and_compare)
    finally:
        if phantom_dir.exists():
            import shutil
            shutil.rmtree(phantom_dir, ignore_errors=True)
    print(format_comparison(report["truth_comparison"]))
    for w in report["aif"]["warnings"]:
        print("warning: " + w)
    print(f"wrote {args.out} (phantom and its truth in {Path(args.out) / 'phantom'})")
    _write_scene(args, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strokelesion", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common_out(sp):
        sp.add_argument("--out", required=True, type=Path, help="output folder (must not exist)")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    def common_ctp(sp):
        sp.add_argument("ctp", type=Path, help="4D NIfTI, .seq.nrrd, DICOM folder or ISLES 2018 case folder")
        sp.add_argument("--dt", type=float, default=None, help="frame interval in seconds (overrides the file)")

    def common_maps(sp):
        sp.add_argument("--method", choices=("osvd", "csvd", "tikhonov"), default="osvd")
        sp.add_argument("--core-rcbf", type=float, default=Thresholds().core_rcbf,
                        help="core: rCBF below this fraction (0.38; 0.30 as RAPID)")
        sp.add_argument("--tmax", type=float, default=Thresholds().tmax_s, help="Tmax threshold in seconds")
        sp.add_argument("--min-island-ml", type=float, default=MIN_ISLAND_ML,
                        help="drop core/penumbra islands smaller than this (ml)")
        sp.add_argument("--smooth-mm", type=float, default=DENOISE_SIGMA_MM,
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
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("segment", help="one deep lesion model on its input image")
    sp.add_argument("image", type=Path,
                    help="pseudodwi: CTP (4D NIfTI, .seq.nrrd, DICOM folder, ISLES 2018 case folder); "
                         "sean: NCCT in HU, xnet: T1 MRI (3D NIfTI/NRRD or DICOM folder)")
    sp.add_argument("--model", required=True, choices=MODELS, help="lesion model")
    common_out(sp)
    sp.add_argument("--dt", type=float, default=None, help="pseudodwi: frame interval in seconds (overrides the file)")
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
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--noise-hu", type=float, default=5.0, help="CT noise sigma per voxel and frame (HU)")
    sp.add_argument("--lesion-variety", action="store_true",
                    help="1-3 lesions of random site, size and shape, chronic T1 look (the lesion models' data)")
    sp.add_argument("--head-rotation-max", type=float, default=8.0, metavar="DEG",
                    help="in-plane head rotation drawn in +/- DEG (default 8)")
    sp.set_defaults(func=cmd_phantom)

    sp = sub.add_parser("demo", help="phantom -> whole pipeline -> results beside the truth")
    sp.add_argument("--out", type=Path, default=Path("strokelesion-demo"))
    sp.add_argument("--overwrite", action="store_true")
    sp.add_argument("--seed", type=int, default=0)
    common_maps(sp)
    sp.add_argument("--aif", choices=("aifnet", "classic"), default="aifnet", help="AIF/VOF selector")
    sp.add_argument("--lesion-model", choices=("pseudodwi", "none"), default="pseudodwi",
                    help="deep lesion model run on the phantom (default pseudodwi; its weights saw only phantoms)")
    sp.add_argument("--scene", type=Path, help="also write a Slicer scene bundle (.mrb; needs slicer-core)")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"strokelesion: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("strokelesion: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
