"""Benchmark of pseudo-DWI + SLNet inference (not part of the test suite).

    python Testing/benchmarks/bench_pseudo_dwi.py [--threads 2] [--repeats 3] [--shape 8 128 128] [--frames 40]

Times ``segment_pseudo_dwi`` on one phantom case whose maps and brain mask come from the perfusion
pipeline (the pipeline itself is not timed), for the shipped weights (pseudodwi and slnet_maps), on the
CPU with ``--threads`` threads; the budget is 5 s per case on 2 CPU cores. Also prints the 256 x 256 case
(ISLES-like in-plane size) with ``--shape 8 256 256``.
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
    p.add_argument("--shape", type=int, nargs=3, default=[8, 128, 128])
    p.add_argument("--frames", type=int, default=40)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from AIFSelectorLib.phantom.case import make_phantom
    from StrokeLesionLib.case.pipeline import RunOptions, run_case
    from StrokeLesionLib.lesion_models.pseudodwi.inference import segment_pseudo_dwi
    spacing = 1.8 * 128 / args.shape[2]
    case = make_phantom(30000, shape_zyx=tuple(args.shape), n_frames=args.frames, spacing_mm=(spacing, spacing, 6.0))
    r = run_case(case.series, RunOptions(aif="classic"))
    out = {"shape_zyx": args.shape, "frames": args.frames, "threads": args.threads, "cpu": platform.processor(),
           "cpu_count": os.cpu_count(), "budget_s": BUDGET_S}
    for name in ("pseudodwi", "slnet_maps"):
        segment_pseudo_dwi(case.series, r.perfusion.maps, r.prepared.brain, device="cpu", model_name=name)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _, _, info = segment_pseudo_dwi(case.series, r.perfusion.maps, r.prepared.brain, device="cpu",
                                            model_name=name)
            times.append(time.perf_counter() - t0)
        out[name] = {"seconds_median": float(np.median(times)), "seconds_all": [round(t, 3) for t in times],
                     "stages_s": info["timings_s"], "within_budget": bool(np.median(times) <= BUDGET_S)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
