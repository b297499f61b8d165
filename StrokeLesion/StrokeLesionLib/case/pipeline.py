"""The whole case: CTP series → input functions → perfusion maps → core/penumbra → (optionally) a deep
lesion model → output folder.

`run_case` computes, `write_outputs` writes the output folder of the command-line contract. The
Slicer Logic and the command line both call these.
"""
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from AIFSelectorLib import __version__ as VERSION
from AIFSelectorLib.constants import DENOISE_SIGMA_MM
from AIFSelectorLib.ctp_series import CTPSeries
from AIFSelectorLib.input_functions.functions import InputFunctions
from AIFSelectorLib.input_functions.policy import select_input_functions
from AIFSelectorLib.io import aif_csv
from AIFSelectorLib.io.volume_io import atomic_path, write_volume
from AIFSelectorLib.deconvolution import UNCERTAINTY_NAMES
from AIFSelectorLib.maps.compute import PerfusionMaps, compute_maps
from AIFSelectorLib.prepare.prepared import PreparedSeries, prepare
from AIFSelectorLib.prepare.preprocessing import THREADS_ENV, affinity_cores, usable_cores
from AIFSelectorLib.thresholds.decision import (Thresholds, decide, hypoperfusion_intensity_ratio, lesion_volumes,
                                                volume_ranges, INTERVAL_Z)
MAP_FILES = ("cbf", "cbv", "mtt", "tmax", "ttp", "rcbf", "rcbv")


@dataclass
class RunOptions:
    """What `strokelesion run` lets a user choose (command-line flags of the same names)."""

    aif: str = "aifnet"
    """A selector of the one policy (input_functions.policy): 'aifnet', 'classic', or the path of an AIF
    CSV (time_s, aif_hu[, vof_hu])."""
    method: str = "osvd"
    thresholds: Thresholds = field(default_factory=Thresholds)
    smooth_mm: float = DENOISE_SIGMA_MM
    device: Optional[str] = None
    brain_mask: Optional[np.ndarray] = None
    lesion_model: str = "none"
    """'none', or a lesion model run on the series and its maps ('pseudodwi', see lesion_models)."""


@dataclass
class CaseResult:
    prepared: PreparedSeries
    functions: InputFunctions
    perfusion: PerfusionMaps
    core: np.ndarray
    penumbra: np.ndarray
    volumes: Dict[str, Optional[float]]
    timings_s: Dict[str, float]
    options: RunOptions
    lesion: Optional[np.ndarray] = None
    """(z, y, x) bool from the lesion model, None when none was run."""
    lesion_extras: Dict[str, np.ndarray] = field(default_factory=dict)
    """The lesion model's (z, y, x) float32 images, e.g. 'pseudo_dwi' (what the segmenter saw)."""
    lesion_info: Dict[str, object] = field(default_factory=dict)
    volume_ranges: Optional[Dict[str, list]] = None
    """With posterior SD maps (method 'bayes'): per region, the [low, high] volume (ml) they imply."""

    @property
    def series(self) -> CTPSeries:
        return self.prepared.series


def run_case(series: CTPSeries, options: RunOptions = RunOptions(), progress=None) -> CaseResult:
    """Every stage on one uniformly sampled series; progress: optional callable(fraction) for the maps."""
    timings = {}
    t0 = time.perf_counter()
    prepared = prepare(series, options.brain_mask)
    timings["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    functions = select_input_functions(prepared, options.aif, options.device)
    timings["input_functions"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    perfusion = compute_maps(prepared, functions, method=options.method, smooth_mm=options.smooth_mm,
                             tmax_threshold_s=options.thresholds.tmax_s, device=options.device,
                             progress=progress)
    timings["maps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    voxel_ml = series.geometry.voxel_volume_ml
    core, penumbra = decide(perfusion.maps["rcbf"], perfusion.maps["tmax"], perfusion.tissue, voxel_ml,
                            options.thresholds)
    ranges = uncertainty_ranges(perfusion, voxel_ml, options.thresholds)
    timings["decision"] = time.perf_counter() - t0
    result = CaseResult(prepared, functions, perfusion, core, penumbra,
                        {**lesion_volumes(core, penumbra, voxel_ml),
                         **hypoperfusion_intensity_ratio(perfusion.maps["tmax"], core | penumbra, voxel_ml)},
                        timings, options, volume_ranges=ranges)
    if options.lesion_model != "none":
        from StrokeLesionLib.lesion_models.registry import segment
        t0 = time.perf_counter()
        result.lesion, result.lesion_extras, result.lesion_info = segment(
            options.lesion_model, {"series": series, "maps": perfusion.maps, "brain_mask": prepared.brain},
            device=options.device or "auto")
        timings["lesion_model"] = time.perf_counter() - t0
    return result


def uncertainty_ranges(perfusion: PerfusionMaps, voxel_ml: float, thresholds: Thresholds):
    """The volume ranges the posterior SD maps imply (thresholds.decision.volume_ranges: the rule on the maps, not
    on any edited segments), or None for a method without them."""
    if "cbf_sd" not in perfusion.maps:
        return None
    return volume_ranges(perfusion.maps, perfusion.tissue, perfusion.control["cbf_control"], voxel_ml, thresholds)


def input_section(series: CTPSeries, source: str, note: str = "") -> dict:
    """report.json's "input": the source, shape (t, z, y, x), spacing (mm), frame interval and duration (s),
    what the reader knows of the source (DICOM series UID, description, date), and a note when the frames
    were resampled (no empty note)."""
    section = {"source": source, "shape_tzyx": list(series.data.shape),
               "spacing_mm": list(series.geometry.spacing_mm), "frame_interval_s": series.dt_s,
               "duration_s": float(series.times_s[-1] - series.times_s[0]), **series.source_info}
    if note:
        section["note"] = note
    return section


def aif_section(prepared: PreparedSeries, functions: InputFunctions, quality_flags: Dict[str, bool],
                aif_enh_hu: np.ndarray, scale: float) -> dict:
    """report.json's "aif": the selector, bolus arrival (s), baseline frames, the AIF's peak enhancement as
    deconvolved (HU) and its whole partial-volume scale (the selection policy's times the maps'), the quality
    flags, warnings and the selector's details."""
    return {"selector": functions.method, "bolus_arrival_s": prepared.bolus.arrival_s,
            "baseline_frames": prepared.bolus.n_baseline, "aif_peak_enhancement_hu": float(np.max(aif_enh_hu)),
            "vof_partial_volume_scale": float(functions.details.get("aif_partial_volume_scale", 1.0)) * scale,
            "quality_flags": quality_flags,
            "warnings": list(functions.warnings), **{k: v for k, v in functions.details.items()}}


def report_dict(result: CaseResult, source: str = "", note: str = "") -> dict:
    """The content of report.json: volumes (ml), mismatch, AIF quality, thresholds, methods, timings; with a
    lesion model, its volume (volumes_ml.lesion_ml) and its info (lesion_model: version, sha256, timings)."""
    series, f, p = result.series, result.functions, result.perfusion
    report = {
        "strokelesion_version": VERSION,
        "input": input_section(series, source, note),
        "volumes_ml": result.volumes,
        "thresholds": asdict(result.options.thresholds),
        "aif": aif_section(result.prepared, f, p.quality_flags, p.aif_enh_hu, p.aif_scale),
        "maps": {"deconvolution": result.options.method, "denoising_sigma_mm": result.options.smooth_mm,
                 "control_tissue": p.control, "tissue_ml": float(p.tissue.sum() * series.geometry.voxel_volume_ml),
                 "units": {"cbf": "ml/100g/min", "cbv": "ml/100g", "mtt": "s", "tmax": "s", "ttp": "s",
                           "rcbf": "fraction of control", "rcbv": "fraction of control",
                           **({"cbf_sd": "ml/100g/min", "tmax_sd": "s"} if "cbf_sd" in p.maps else {})}},
        "models": dict(f.details.get("models", {})),
        "warnings": list(result.prepared.warnings) + list(f.warnings),
        **({"volume_ranges_ml": result.volume_ranges, "volume_ranges_z": INTERVAL_Z}
           if result.volume_ranges is not None else {}),
        "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
        "threads": thread_report(),
    }
    if result.lesion is not None:
        report["volumes_ml"] = {**result.volumes, "lesion_ml": result.lesion_info["lesion_ml"]}
        report["lesion_model"] = dict(result.lesion_info)
        report["models"][result.options.lesion_model] = {k: v for k, v in result.lesion_info.items()
                                                          if k in ("version", "sha256", "file", "device")}
    return report


def thread_report() -> dict:
    """The CPU threads of this run: the cores it may use, BLAS/OpenMP's setting, and the fixed torch thread
    count of network inference (model_weights.INFERENCE_CPU_THREADS); the maps do not depend on them."""
    import os
    import sys
    report = {"cpu_cores_available": affinity_cores(), "threads_used": usable_cores(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "thread_cap": os.environ.get(THREADS_ENV)}
    if "torch" in sys.modules or "onnxruntime" in sys.modules:
        from AIFSelectorLib.models.device import INFERENCE_CPU_THREADS
        report["network_inference_cpu_threads"] = INFERENCE_CPU_THREADS
    return report


def write_outputs(result: CaseResult, folder: Path, report: dict, figure: bool = True) -> None:
    """Writes the contract's files into ``folder`` (a staging folder: see output_folder); report.json last,
    with the seconds spent writing the images ('write') and drawing report.png ('figure') in its timings. The
    figure is drawn while the images are written: gzip compression, numpy and PNG encoding release the GIL."""
    folder = Path(folder)
    t0 = time.perf_counter()
    g = result.series.geometry
    f = result.functions
    volumes = [(f"{name}.nii.gz", result.perfusion.maps[name]) for name in MAP_FILES + UNCERTAINTY_NAMES
               if name in result.perfusion.maps]
    volumes += [("brain_mask.nii.gz", result.prepared.brain), ("core.nii.gz", result.core),
                ("penumbra.nii.gz", result.penumbra)]
    volumes += [(f"{name}.nii.gz", pvol) for name, pvol in (("aif_pvol", f.aif_pvol), ("vof_pvol", f.vof_pvol))
                if pvol is not None]
    timings = report.setdefault("timings_s", {})

    def draw():
        from StrokeLesionLib.case.report_figure import save_report_figure
        start = time.perf_counter()
        save_report_figure(result, folder / "report.png", report.get("input"))
        return round(time.perf_counter() - start, 3)

    with ThreadPoolExecutor(max_workers=max(1, min(usable_cores(), len(volumes)))) as pool:
        drawn = pool.submit(draw) if figure else None
        list(pool.map(lambda item: write_volume(folder / item[0], item[1], g), volumes))
        aif_csv.write_aif_csv(folder / "aif.csv", f.times_s, f.aif_hu, f.vof_hu)
        if result.lesion is not None:
            write_lesion_outputs(folder, result.lesion, result.lesion_extras, g)
        timings["write"] = round(time.perf_counter() - t0, 3)
        if drawn is not None:
            timings["figure"] = drawn.result()
    write_json(folder / "report.json", report)


def write_lesion_outputs(folder: Path, lesion: np.ndarray, extras: Dict[str, np.ndarray],
                         geometry) -> None:
    """lesion.nii.gz (uint8 0/1) and one <name>.nii.gz per extra image (e.g. pseudo_dwi), on ``geometry``."""
    write_volume(Path(folder) / "lesion.nii.gz", lesion, geometry)
    for name, image in extras.items():
        write_volume(Path(folder) / f"{name}.nii.gz", np.asarray(image, dtype=np.float32), geometry)


def write_json(path, content: dict) -> None:
    """Atomic, readable JSON."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(content, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
