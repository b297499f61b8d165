"""Benchmark of SEAN inference (not part of the test suite).

    python Testing/benchmarks/bench_sean.py [--threads 2] [--repeats 3] [--shape 10 128 128]

Times ``segment_sean`` (normalisation, alignment with its refinement, segmentation, mapping back) on one
held-out phantom NCCT with the shipped weights, on the CPU with ``--threads`` threads; the budget is 5 s
per case on 2 CPU cores. ``--shape 32 512 512`` times a clinical-size NCCT (0.45 mm in-plane: the
networks still run on their own 128 x 128 grid).
"""
import argparse
import json
import os
import platform
import time

import numpy as np

BUDGET_S = 5.0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shape", type=int, nargs=3, default=[10, 128, 128])
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from AIFSelectorLib.phantom.case import make_phantom
    from StrokeLesionLib.lesion_models.sean.inference import segment_sean
    spacing = (1.8 * 128 / args.shape[2], 1.8 * 128 / args.shape[1], 6.0)
    case = make_phantom(30000, shape_zyx=tuple(args.shape), n_frames=12, spacing_mm=spacing, noise_hu=3.0,
                        lesion_variety=True, head_rotation_max_deg=15.0)
    segment_sean(case.ncct, spacing, device="cpu")  # warm-up (weights read and hashed once)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _, _, info = segment_sean(case.ncct, spacing, device="cpu")
        times.append(time.perf_counter() - t0)
    out = {"shape_zyx": args.shape, "spacing_xyz_mm": spacing, "threads": args.threads, "cpu": platform.processor(),
           "cpu_count": os.cpu_count(), "budget_s": BUDGET_S, "seconds_median": float(np.median(times)),
           "seconds_all": [round(t, 3) for t in times], "stages_s": info["timings_s"],
           "within_budget": bool(np.median(times) <= BUDGET_S)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
