"""Benchmark of X-Net inference (not part of the test suite).

    python Testing/benchmarks/bench_xnet.py [--threads 2] [--repeats 3] [--atlas-like]

Times ``segment_xnet`` with the shipped weights on the CPU with ``--threads`` threads (weights loading
included after a warm-up call; it is cached) on a held-out T1 phantom case of the training geometry
(seed 30000) and on the default phantom grid (8 x 128 x 128, 1.8 x 1.8 x 6 mm); ``--atlas-like`` adds an
ATLAS-sized volume (189 x 233 x 197 at 1 mm, the phantom resampled), whose head slices all go through the
network. The budget is 5 s per case on 2 CPU cores.
"""
import argparse
import json
import os
import platform
import time

import numpy as np

BUDGET_S = 5.0


def _time(segment, t1, spacing, repeats):
    segment(t1, spacing, device="cpu")  # warm-up (weights are cached after the first call)
    times, info = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, _, info = segment(t1, spacing, device="cpu")
        times.append(time.perf_counter() - t0)
    return {"shape_zyx": list(t1.shape), "spacing_xyz_mm": [round(s, 3) for s in spacing],
            "seconds_median": round(float(np.median(times)), 3), "seconds_all": [round(t, 3) for t in times],
            "stages_s": info["timings_s"], "within_budget": bool(np.median(times) <= BUDGET_S)}


def _atlas_like(t1: np.ndarray, spacing) -> np.ndarray:
    """The phantom resampled (trilinear) onto a 189 x 233 x 197 grid of 1 mm (z, y, x), ATLAS MNI-sized."""
    from scipy import ndimage
    target = np.array([189, 233, 197], dtype=np.float64)
    extent = np.array([t1.shape[0] * spacing[2], t1.shape[1] * spacing[1], t1.shape[2] * spacing[0]])
    coords = [np.clip(np.arange(n) - n / 2 + e / 2, 0, e - 1e-3) / s
              for n, e, s in zip(target, extent, (spacing[2], spacing[1], spacing[0]))]
    grid = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(t1, grid, order=1).astype(np.float32)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--atlas-like", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    torch.set_num_threads(args.threads)
    from AIFSelectorLib.phantom.case import make_phantom
    from StrokeLesionLib.lesion_models.xnet.inference import segment_xnet
    from training.xnet.data import phantom_case
    out = {"threads": args.threads, "cpu": platform.processor(), "cpu_count": os.cpu_count(), "budget_s": BUDGET_S}
    case = phantom_case(30000)
    out["held_out_phantom"] = _time(segment_xnet, case["t1"], case["spacing_xyz"], args.repeats)
    default = make_phantom(30000, shape_zyx=(8, 128, 128), n_frames=12, spacing_mm=(1.8, 1.8, 6.0),
                           lesion_variety=True)
    out["default_phantom"] = _time(segment_xnet, default.t1, (1.8, 1.8, 6.0), args.repeats)
    if args.atlas_like:
        out["atlas_like"] = _time(segment_xnet, _atlas_like(case["t1"], case["spacing_xyz"]), (1.0, 1.0, 1.0),
                                  args.repeats)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
