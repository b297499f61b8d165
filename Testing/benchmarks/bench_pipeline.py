"""Benchmark of the whole pipeline (not part of the test suite).

    python Testing/benchmarks/bench_pipeline.py            # 256x256x16x48: seconds per method, whole run, memory
    python Testing/benchmarks/bench_pipeline.py --whole-brain   # also a 512x512x320x25 int16 series (~4.2 GB)

Reports, from one run on this machine: the maps stage per deconvolution method (after the denoising of the
tissue curves, which runs once per series and is reported beside it), the whole `run_case`,
and the peak resident memory above the level before the run, as a multiple of the input array's bytes
(the input is int16, as CT files are). Each measurement runs in a fresh process so peaks do not mix.
"""
import argparse
import json
import multiprocessing as mp
import os
import platform
import time

import numpy as np

BUDGET_S = {"tikhonov": 1.0, "csvd": 1.0, "osvd": 4.0, "whole run": 15.0}


def _status_mb(key):
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak():
    """Linux: restart VmHWM at the current resident size, so the peak measured is the run's own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _case(shape_zyx, n_frames, seed=0):
    """A phantom series of the given size, int16 HU; large sizes tile a 16-slice phantom along z and
    upsample it in-plane (the physics of each voxel stays that of the phantom)."""
    from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry
    from AIFSelectorLib.phantom.case import make_phantom
    nz, ny, nx = shape_zyx
    base_shape = (min(nz, 16), min(ny, 256), min(nx, 256))
    case = make_phantom(seed=seed, shape_zyx=base_shape, n_frames=n_frames)
    small = np.rint(case.series.data).astype(np.int16)
    if base_shape == tuple(shape_zyx):
        return case.series.with_data(small)
    fy, fx = ny // base_shape[1], nx // base_shape[2]
    data = np.empty((n_frames, nz, ny, nx), np.int16)
    for z0 in range(0, nz, base_shape[0]):
        z1 = min(nz, z0 + base_shape[0])
        block = small[:, : z1 - z0]
        data[:, z0:z1] = block.repeat(fy, axis=2).repeat(fx, axis=3)
    g = case.series.geometry
    geometry = VolumeGeometry((g.spacing_mm[0] / fx, g.spacing_mm[1] / fy, g.spacing_mm[2]), g.origin_mm, g.direction)
    return CTPSeries(data, case.series.times_s, geometry)


def _measure(kind, shape_zyx, n_frames, queue):
    from AIFSelectorLib.constants import DENOISE_SIGMA_MM
    from AIFSelectorLib.input_functions.functions import InputFunctions
    from AIFSelectorLib.maps.compute import compute_maps
    from AIFSelectorLib.prepare.prepared import prepare
    from StrokeLesionLib.case.pipeline import RunOptions, run_case
    import torch  # noqa: F401  (imported before the baseline so its libraries don't count as our memory)
    series = _case(shape_zyx, n_frames)
    before = _status_mb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    if kind == "whole run":
        result = run_case(series, RunOptions())  # the defaults of `strokelesion run` (AIFNet)
        extra = {"volumes_ml": result.volumes, "stages_s": result.timings_s}
    else:
        prepared = prepare(series)
        aif = np.zeros(series.n_frames)
        aif[5:20] = np.hanning(15) * 300
        functions = InputFunctions(series.times_s, 40 + aif, method="file")
        t_denoise = time.perf_counter()
        prepared.denoised(DENOISE_SIGMA_MM)  # once per series, reused by every method and AIF
        t0 = time.perf_counter()
        compute_maps(prepared, functions, method=kind)
        extra = {"tissue_voxels": int(prepared.tissue.sum()), "denoise_s": round(t0 - t_denoise, 2)}
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    queue.put({"kind": kind, "seconds": round(seconds, 2), "input_mb": round(series.data.nbytes / 2**20, 1),
               "peak_above_start_mb": round(peak - before, 1),
               "peak_over_input": round((peak - before) / (series.data.nbytes / 2**20), 2), **extra})


def measure(kind, shape_zyx, n_frames):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(kind, shape_zyx, n_frames, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--whole-brain", action="store_true", help="also run a 512x512x320x25 int16 series")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    rows = [measure(k, (16, 256, 256), 48) for k in ("tikhonov", "csvd", "osvd", "whole run")]
    if args.whole_brain:
        rows.append({**measure("whole run", (320, 512, 512), 25), "kind": "whole run, 512x512x320x25"})
    for r in rows:
        budget = BUDGET_S.get(r["kind"])
        verdict = "" if budget is None else (" within" if r["seconds"] <= budget else " OVER") + f" budget {budget:g} s"
        denoise = f" (+ denoising once per series {r['denoise_s']:.2f} s)" if "denoise_s" in r else ""
        print(f"{r['kind']:28s} {r['seconds']:7.2f} s{verdict}{denoise};  peak memory {r['peak_above_start_mb']:.0f} MB "
              f"= {r['peak_over_input']:.2f} x the {r['input_mb']:.0f} MB input")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
