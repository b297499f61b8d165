"""What the sampled data can tell apart: healthy grey-matter flow and Tmax on the phantom (a script, not part
of the test suite).

    python Testing/benchmarks/bench_identifiability.py               # seeds 0-5
    python Testing/benchmarks/bench_identifiability.py --seeds 0 2

For each seed: the grey-matter-like tissue curve of the seed's residue family (MTT 4.5 s, CBF 60 ml/100g/min,
no dispersion or delay, the seed's true AIF, the phantom's forward model of :mod:`phantom_curves`), sampled at
the frame times, is compared with every alternative tissue of the same CBV (residue families exponential,
gamma of shape 1.5-4 and box; MTT 2-9 s in 0.05 s steps; delay -0.5 to 1.5 s in 0.05 s steps). Printed:

- the closest alternative whose flow differs by at least 10, 20 and 30 %, as the RMS difference of
  the two sampled curves [HU];
- beside it the noise left on grey-matter curves after the pipeline's denoising at the phantom's default 5 HU
  (RMS of denoised minus noise-free enhancement, median over grey-matter voxels) [HU];
- how long the residue stays within 5 % of its maximum [s]: any time in that plateau is a maximum to within
  5 %, which is what a Tmax read from a band-limited residue has to choose from.

When the closest alternative lies below the residual noise, no estimator can tell those two flows apart from
the data alone: what picks one is a prior on the residue's shape.
"""
import argparse
import time

import numpy as np

from AIFSelectorLib import phantom_curves as pc
from AIFSelectorLib.constants import DENOISE_SIGMA_MM, K_H, TISSUE_DENSITY_G_PER_ML
from AIFSelectorLib.perfusion_pipeline import prepare
from AIFSelectorLib.phantom import make_phantom
from AIFSelectorLib.phantom_anatomy import GM
from AIFSelectorLib.preprocessing import enhancement

REFERENCE = dict(mtt_s=4.5, cbf=60.0)
ALTERNATIVE_FAMILIES = (("exponential", 0.0), ("gamma", 1.5), ("gamma", 2.0), ("gamma", 3.0), ("gamma", 4.0),
                        ("box", 0.25))
MTT_GRID_S = np.arange(2.0, 9.0001, 0.05)
DELAY_GRID_S = np.arange(-0.5, 1.5001, 0.05)
FLOW_LIMITS = (0.10, 0.20, 0.30)
"""Flow differences [relative] for which the closest alternative is reported."""


def true_aif_fine(params: dict, duration_s: float) -> np.ndarray:
    """The seed's true arterial enhancement [HU] on the 0.1 s grid from the first frame."""
    b = params["bolus"]
    t = pc.fine_grid(duration_s)
    aif, _, _, _ = pc.input_functions(t, b["arrival_s"], b["rise_s"], b["alpha"], b["aif_peak_hu"],
                                      b["recirc_fraction"], b["recirc_mean_s"], b["recirc_shape"], b["vof_delay_s"],
                                      b["vof_dispersion_s"], b["late_delay_s"], b["late_dispersion_s"],
                                      b["plateau_fraction"], b["plateau_decay_s"])
    return aif


def sampled_tissue(aif_fine, times_s, family, param, mtts_s, delays_s, cbf):
    """Enhancement [HU] (n_mtt, n_delay, n_frames) of tissue with flow ``cbf`` x MTT / MTT (same CBV)."""
    g, off, _, _ = pc.tissue_tables(aif_fine, mtts_s, np.zeros(len(mtts_s)), family, param)
    scale = TISSUE_DENSITY_G_PER_ML / K_H * cbf / 6000.0
    rel = np.asarray(times_s) - times_s[0]
    out = np.empty((len(mtts_s), len(delays_s), len(rel)))
    for i in range(len(mtts_s)):
        for j, d in enumerate(delays_s):
            out[i, j] = scale * pc.sample(g[i], rel - d, off[i])
    return out


def plateau_s(family: str, param: float, mtt_s: float) -> float:
    """How long [s] the residue stays within 5 % of its maximum (R(0) = 1)."""
    cells = pc.residue_cells(np.array([mtt_s]), int(5 * mtt_s / pc.FINE_DT_S), family, param)[0]
    return float(np.argmax(cells < 0.95 * cells[0]) * pc.FINE_DT_S)


def denoised_noise_hu(noisy, clean) -> float:
    """Median over grey matter of the RMS [HU] of denoised (``noisy``: the 5 HU phantom) minus noise-free
    (``clean``: the same seed without noise) enhancement."""
    prepared = prepare(noisy.series)
    gm = prepared.tissue & noisy.truth["tissue_mask"] & (noisy.truth["labels"] == GM)
    whole = slice(0, gm.shape[0])
    denoised = prepared.denoised(DENOISE_SIGMA_MM).curves(whole, gm)
    truth = enhancement(clean.series.data[:, gm], prepared.baseline_hu[gm]).T
    return float(np.median(np.sqrt(np.mean((denoised - truth) ** 2, axis=1))))


def closest_alternatives(case):
    """(family, shape parameter, {flow limit: (RMS [HU], description)}): the closest alternative at least
    ``FLOW_LIMITS`` off in flow for the phantom ``case``'s AIF and residue family."""
    times = np.asarray(case.params["times_s"])
    aif = true_aif_fine(case.params, times[-1] - times[0] + 20.0)
    family, param = case.params["residue_shape"], case.params["residue_shape_param"]
    ref = sampled_tissue(aif, times, family, param, np.array([REFERENCE["mtt_s"]]), [0.0], REFERENCE["cbf"])[0, 0]
    best = {limit: (np.inf, "") for limit in FLOW_LIMITS}
    for alt_family, alt_param in ALTERNATIVE_FAMILIES:
        curves = sampled_tissue(aif, times, alt_family, alt_param, MTT_GRID_S, DELAY_GRID_S, REFERENCE["cbf"])
        curves *= REFERENCE["mtt_s"] / MTT_GRID_S[:, None, None]  # same area: CBV kept, flow = CBV / MTT
        rms = np.sqrt(np.mean((curves - ref) ** 2, axis=-1))
        flow_error = REFERENCE["mtt_s"] / MTT_GRID_S - 1.0
        for limit in best:
            far = np.abs(flow_error) >= limit - 1e-9
            if far.any():
                i, j = np.unravel_index(np.where(far[:, None], rms, np.inf).argmin(), rms.shape)
                if rms[i, j] < best[limit][0]:
                    best[limit] = (rms[i, j], f"{alt_family} {alt_param:g} MTT {MTT_GRID_S[i]:.2f} s delay "
                                              f"{DELAY_GRID_S[j]:+.2f} s (flow {flow_error[i]:+.0%})")
    return family, param, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(6)))
    args = ap.parse_args()
    start = time.perf_counter()
    for seed in args.seeds:
        clean = make_phantom(seed=seed, noise_hu=0.0)
        family, param, best = closest_alternatives(clean)
        noise = denoised_noise_hu(make_phantom(seed=seed), clean)
        print(f"seed {seed} {family} {param:.2f}: residue within 5 % of its maximum for "
              f"{plateau_s(family, param, REFERENCE['mtt_s']):.1f} s; denoised grey-matter noise {noise:.2f} HU RMS")
        for limit, (rms, what) in best.items():
            verdict = "below the noise: not identifiable" if rms < noise else "above the noise"
            print(f"  closest alternative >= {limit:.0%} off in flow: {rms:.2f} HU RMS, {what}: {verdict}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
