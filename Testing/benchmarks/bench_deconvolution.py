"""Benchmark of :func:`AIFSelectorLib.deconvolution.methods.deconvolve` (a script, not collected by pytest).

Curves: 256 x 256 x 16 voxels x 0.5 (a brain mask's share) = 524288 tissue curves x 48 frames float32 at 1 s,
made from a gamma-variate AIF with recirculation (peak 300 HU) and exponential / gamma residues (CBF 10-70
ml/100g/min, MTT 3-12 s, delay 0-6 s) with 5 HU noise. Reports seconds per method (best of ``--repeat``),
the speed-up over a straightforward per-voxel numpy loop (block-circulant matrix, np.linalg.svd, truncated
pseudo-inverse: timed on a subsample and extrapolated) and the peak memory that deconvolve allocates
(tracemalloc) beside the input curves and the whole 4D CTP array.

    /work/venv/bin/python Testing/benchmarks/bench_deconvolution.py [--voxels N] [--repeat R] [--device cpu]
"""
import argparse
import resource
import time
import tracemalloc

import numpy as np
from scipy.linalg import circulant

from AIFSelectorLib.deconvolution.methods import METHODS, deconvolve

FRAMES, DT_S = 48, 1.0
FULL_VOXELS = 256 * 256 * 16
BUDGET_S = {"csvd": 1.0, "tikhonov": 1.0, "osvd": 4.0}


def make_curves(n_voxels, seed=0):
    """(n_voxels, FRAMES) float32 tissue curves [HU] and the (FRAMES,) AIF [HU]."""
    rng = np.random.default_rng(seed)
    t = np.arange(FRAMES) * DT_S

    def gamma_variate(t0, peak, t_peak, alpha=3.0):
        x = np.clip((t - t0) / t_peak, 0.0, None)
        return peak * x ** alpha * np.exp(alpha * (1.0 - x))

    aif = gamma_variate(8.0, 300.0, 5.0) + gamma_variate(20.0, 40.0, 6.0)  # first pass + recirculation
    # a bank of 64 noise-free curves, then every voxel = one of them + noise
    bank = []
    for _ in range(64):
        cbf, mtt, delay = rng.uniform(10, 70), rng.uniform(3, 12), rng.uniform(0, 6)
        tau = np.arange(4 * FRAMES) * DT_S / 4  # fine grid, 0.25 s
        residue = np.exp(-tau / mtt) if rng.random() < 0.5 else np.exp(-tau / mtt) * (1 + tau / mtt)
        fine_aif = np.interp(tau - delay, t, aif, left=0.0)
        curve = np.convolve(fine_aif, cbf / 6000.0 * residue)[: tau.size] * DT_S / 4
        bank.append(curve[::4])
    bank = np.asarray(bank, np.float32)
    curves = bank[rng.integers(0, len(bank), n_voxels)]
    curves += rng.normal(0.0, 5.0, curves.shape).astype(np.float32)
    return curves, aif


def reference_loop(tissue, aif, threshold=0.1):
    """The straightforward way: per voxel, SVD of the zero-padded block-circulant AIF matrix and a truncated
    pseudo-inverse (np.linalg.pinv-style), max of the residue. Returns seconds per voxel."""
    n_pad = 2 * FRAMES
    start = time.perf_counter()
    for curve in tissue:
        matrix = DT_S * circulant(np.concatenate([aif, np.zeros(n_pad - FRAMES)]))
        u, s, vt = np.linalg.svd(matrix)
        inv_s = np.where(s >= threshold * s.max(), 1.0 / s, 0.0)
        k = vt.T @ (inv_s * (u.T @ np.concatenate([curve, np.zeros(n_pad - FRAMES)])))
        k.max()
    return (time.perf_counter() - start) / len(tissue)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=FULL_VOXELS // 2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference-voxels", type=int, default=2000)
    parser.add_argument("--device", default=None, help="torch device (default: numpy)")
    args = parser.parse_args()

    tissue, aif = make_curves(args.voxels)
    ctp_bytes = FULL_VOXELS * FRAMES * 4
    print(f"{args.voxels} voxels x {FRAMES} frames float32 ({tissue.nbytes / 2**20:.0f} MiB of curves; "
          f"the whole 256x256x16x48 CTP array is {ctp_bytes / 2**20:.0f} MiB as float32), device={args.device}")

    per_voxel = reference_loop(tissue[: args.reference_voxels], aif)
    reference_s = per_voxel * args.voxels
    print(f"reference per-voxel numpy SVD loop: {per_voxel * 1e3:.3f} ms/voxel on {args.reference_voxels} "
          f"voxels, extrapolated to {reference_s:.0f} s for {args.voxels} voxels")

    failed = []
    for method in METHODS:
        deconvolve(tissue[:4096], aif, DT_S, method, device=args.device)  # warm-up (imports, FFT plans)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = deconvolve(tissue, aif, DT_S, method, device=args.device)
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        deconvolve(tissue, aif, DT_S, method, device=args.device)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        best = min(times)
        cbf = 6000.0 * result.flow_per_s
        budget = BUDGET_S[method] * args.voxels / (FULL_VOXELS // 2)
        verdict = "ok" if best <= budget else "OVER BUDGET"
        if best > budget:
            failed.append(method)
        print(f"{method:9s} {best:6.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}; budget {budget:.1f} s: "
              f"{verdict})  x{reference_s / best:,.0f} vs the loop  peak extra memory {peak / 2**20:.0f} MiB "
              f"= {peak / tissue.nbytes:.2f}x the curves, {peak / ctp_bytes:.3f}x the CTP array  "
              f"median CBF {np.median(cbf):.1f} ml/100g/min")
    print(f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    if failed:
        raise SystemExit(f"over budget: {', '.join(failed)}")


if __name__ == "__main__":
    main()
