"""Tracer kinetics of the digital phantom: arterial and venous input functions, residue functions,
dispersion, and tissue enhancement curves on a fine time grid.

Everything is computed on a fine uniform grid (``FINE_DT_S`` = 0.1 s) from the first frame time and
only then sampled at the frame times, so sub-frame delays are real and no frame interval is assumed.

Conventions on the fine grid: the AIF is point-sampled, t_k = k dt. Kernels (dispersion, residue,
venous and recirculation transport) are *cell averages* over [k dt, (k+1) dt], so their discrete areas
are exact; a convolution with m cell kernels is the continuous convolution at t_n = (n + m/2) dt, which
each function below returns as its time offset.

Tissue enhancement (HU), the inverse of :mod:`perfusion_maps`:
    C_t(t) = rho/kH * CBF/6000 * (AIF_enh (x) h_disp (x) R)(t - delay)
so that CBV = kH/rho * int C_t / int AIF * 100 = CBF * MTT / 60 with MTT = int R dt.
"""
from typing import Tuple

import numpy as np
from scipy import special

FINE_DT_S = 0.1
"""Fine time grid [s] on which every curve is computed before it is sampled at the frame times."""

RESIDUE_SHAPES = ("exponential", "gamma", "box")


def fine_grid(duration_s: float, dt_s: float = FINE_DT_S) -> np.ndarray:
    """Fine time points 0, dt, ... covering ``duration_s`` seconds (float64)."""
    return np.arange(int(np.ceil(duration_s / dt_s)) + 1, dtype=np.float64) * dt_s


def _nfft(n: int) -> int:
    """FFT length for a linear (not circular) convolution of two length-n signals."""
    return 1 << int(np.ceil(np.log2(max(2 * n, 2))))


def convolve(a: np.ndarray, kernel_cells: np.ndarray, dt_s: float = FINE_DT_S) -> np.ndarray:
    """dt * (a * kernel) along the last axis, truncated to len(a) (linear convolution through the FFT)."""
    n = a.shape[-1]
    nfft = _nfft(n)
    out = np.fft.irfft(np.fft.rfft(a, nfft) * np.fft.rfft(kernel_cells, nfft), nfft)[..., :n]
    return _clean(out * dt_s)


def _clean(x: np.ndarray) -> np.ndarray:
    """Zeroes FFT round-off (|x| below 1e-10 of each row's maximum): curves are exactly at baseline
    before the bolus arrives."""
    x[np.abs(x) < 1e-10 * np.abs(x).max(axis=-1, keepdims=True)] = 0.0
    return x


def gamma_variate(t_s: np.ndarray, arrival_s: float, rise_s: float, alpha: float) -> np.ndarray:
    """Unit-peak gamma variate starting at ``arrival_s`` and peaking ``rise_s`` seconds later."""
    s = np.clip((np.asarray(t_s, dtype=np.float64) - arrival_s) / rise_s, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(s > 0, np.exp(alpha * (np.log(np.where(s > 0, s, 1.0)) + 1.0 - s)), 0.0)
    return out


def gamma_kernel_cells(n: int, mean_s: float, shape: float, dt_s: float = FINE_DT_S) -> np.ndarray:
    """Cell averages of a gamma probability density with the given mean and shape (unit area)."""
    edges = np.arange(n + 1, dtype=np.float64) * dt_s
    cdf = special.gammainc(shape, edges * shape / mean_s)
    return np.diff(cdf) / dt_s


def delayed_exponential_cells(n: int, delay_s: float, tau_s: float, dt_s: float = FINE_DT_S) -> np.ndarray:
    """Cell averages of exp(-(t - delay)/tau)/tau for t > delay (unit area; tau 0 gives a shifted delta)."""
    edges = np.arange(n + 1, dtype=np.float64) * dt_s
    if tau_s <= 0:
        cdf = (edges > delay_s).astype(np.float64)
    else:
        cdf = 1.0 - np.exp(-np.clip(edges - delay_s, 0.0, None) / tau_s)
    return np.diff(cdf) / dt_s


def input_functions(t_fine_s: np.ndarray, arrival_s: float, rise_s: float, alpha: float, peak_hu: float,
                    recirc_fraction: float, recirc_mean_s: float, recirc_shape: float,
                    vof_delay_s: float, vof_dispersion_s: float, late_delay_s: float, late_dispersion_s: float,
                    plateau_fraction: float = 0.0, plateau_decay_s: float = 60.0
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """True enhancement curves (HU above baseline) on the fine grid.

    AIF: a gamma-variate first pass plus two recirculation passes (the first pass convolved once and
    twice with a gamma transport kernel, weighted recirc_fraction and its square) and a slowly decaying
    steady-state plateau (the first pass convolved with the transport kernel and an exponential of time
    constant ``plateau_decay_s``, peaking at ``plateau_fraction`` of the first pass), scaled so that the
    maximum is ``peak_hu``. VOF: the AIF convolved with a delayed exponential (unit area, so the
    venous curve has the same area as the arterial one: tracer conservation). Late artery: the AIF
    delayed and dispersed the same way (collateral filling distal to the occlusion).

    Returns (aif, vof, late_artery, offset_cells) where the VOF and late-artery samples lie at
    t_k + offset_cells * dt (one cell kernel: half a cell)."""
    n = len(t_fine_s)
    first = gamma_variate(t_fine_s, arrival_s, rise_s, alpha)
    k_rec = gamma_kernel_cells(n, recirc_mean_s, recirc_shape)
    second = convolve(first, k_rec)
    third = convolve(second, k_rec)
    aif = first + recirc_fraction * second + recirc_fraction ** 2 * third
    if plateau_fraction > 0:
        slow = convolve(second, delayed_exponential_cells(n, 0.0, plateau_decay_s))
        aif += plateau_fraction * first.max() / max(slow.max(), 1e-12) * slow
    aif *= peak_hu / aif.max()
    vof = convolve(aif, delayed_exponential_cells(n, vof_delay_s, vof_dispersion_s))
    late = convolve(aif, delayed_exponential_cells(n, late_delay_s, late_dispersion_s))
    return aif, vof, late, 0.5


def bolus_input_functions(t_fine_s: np.ndarray, bolus: dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """:func:`input_functions` with the parameters of a phantom's ``bolus`` draw (``params['bolus']``)."""
    return input_functions(t_fine_s, bolus["arrival_s"], bolus["rise_s"], bolus["alpha"], bolus["aif_peak_hu"],
                           bolus["recirc_fraction"], bolus["recirc_mean_s"], bolus["recirc_shape"],
                           bolus["vof_delay_s"], bolus["vof_dispersion_s"], bolus["late_delay_s"],
                           bolus["late_dispersion_s"], bolus["plateau_fraction"], bolus["plateau_decay_s"])


def residue_cells(mtt_s: np.ndarray, n: int, shape: str, shape_param: float = 3.0,
                  dt_s: float = FINE_DT_S) -> np.ndarray:
    """Cell averages of residue functions R(t) (R(0) = 1, non-increasing) with area exactly ``mtt_s``.

    shape: 'exponential' R = exp(-t/MTT) (well-mixed compartment); 'gamma' R = survival of a gamma
    transit-time distribution of shape ``shape_param`` and mean MTT; 'box' plug flow, R = 1 until
    about MTT, with the edge blurred by a normal transit-time distribution of standard deviation
    ``shape_param`` * MTT (a perfectly sharp box puts the maximum of any dispersed residue at MTT,
    which no real voxel does). Returns (len(mtt_s), n)."""
    m = np.asarray(mtt_s, dtype=np.float64)[:, None]
    x = np.arange(n + 1, dtype=np.float64)[None, :] * dt_s
    if shape == "exponential":
        primitive = m * (1.0 - np.exp(-x / m))
        total = m
    elif shape == "gamma":
        k = float(shape_param)
        u = x * k / m
        primitive = x * special.gammaincc(k, u) + m * special.gammainc(k + 1.0, u)
        total = m
    elif shape == "box":
        sigma = float(shape_param) * m
        def prim(xx):
            z = (xx - m) / sigma
            return xx * special.ndtr(-z) + m * special.ndtr(z) - sigma * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
        f0 = prim(np.zeros_like(m))
        primitive = prim(x) - f0
        total = m - f0  # area of the transit-time survival over [0, inf)
    else:
        raise ValueError(f"unknown residue shape {shape!r}; use one of {RESIDUE_SHAPES}")
    cells = np.diff(primitive, axis=1) / dt_s
    return cells * (m / total)


def dispersion_cells(beta_s: np.ndarray, n: int, dt_s: float = FINE_DT_S) -> np.ndarray:
    """Cell averages of exponential dispersion kernels exp(-t/beta)/beta (beta 0: a delta in the first
    cell). Returns (len(beta_s), n)."""
    return np.stack([delayed_exponential_cells(n, 0.0, float(b), dt_s) for b in np.atleast_1d(beta_s)])


def _refined_argmax(curves: np.ndarray) -> np.ndarray:
    """Sub-sample index of each row's maximum (parabola through the peak and its neighbours)."""
    n = curves.shape[1]
    i = np.argmax(curves, axis=1)
    lo, hi = np.clip(i - 1, 0, n - 1), np.clip(i + 1, 0, n - 1)
    rows = np.arange(curves.shape[0])
    ym, y0, yp = curves[rows, lo], curves[rows, i], curves[rows, hi]
    denom = ym - 2.0 * y0 + yp
    inner = (i > 0) & (i < n - 1) & (denom < 0)
    shift = np.zeros(len(i))
    shift[inner] = np.clip(0.5 * (ym[inner] - yp[inner]) / denom[inner], -0.5, 0.5)
    return i + shift


def tissue_tables(aif_fine: np.ndarray, mtt_s: np.ndarray, beta_s: np.ndarray, residue_shape: str,
                  shape_param: float, dt_s: float = FINE_DT_S):
    """Tissue response tables for unique (MTT, dispersion) pairs.

    Returns (G, offset_s, tmax_offset_s, ttp_offset_s): G (n_pairs, n) = (AIF (x) h_disp (x) R) on the fine
    grid with G[:, k] at time k dt + offset_s (per pair); tmax_offset_s = time of the maximum of the
    effective residue h_disp (x) R (the true Tmax before the tissue delay); ttp_offset_s = time of the
    maximum of G (the true TTP before the delay), both in seconds from the first frame / from zero."""
    n = len(aif_fine)
    mtt_s = np.asarray(mtt_s, dtype=np.float64)
    beta_s = np.asarray(beta_s, dtype=np.float64)
    nfft = _nfft(n)
    u_mtt, i_mtt = np.unique(mtt_s, return_inverse=True)
    u_beta, i_beta = np.unique(beta_s, return_inverse=True)
    r_f = np.fft.rfft(residue_cells(u_mtt, n, residue_shape, shape_param, dt_s), nfft)
    h_f = np.fft.rfft(dispersion_cells(u_beta, n, dt_s), nfft)
    heff_f = h_f[i_beta] * r_f[i_mtt]
    heff = _clean(np.fft.irfft(heff_f, nfft)[:, :n] * dt_s)
    g = _clean(np.fft.irfft(heff_f * np.fft.rfft(aif_fine, nfft)[None, :], nfft)[:, :n] * dt_s * dt_s)
    # cell kernels: residue always, dispersion only when beta > 0 (a delta otherwise)
    offset_s = dt_s * np.where(beta_s > 0, 1.0, 0.5)
    tmax_offset_s = _refined_argmax(heff) * dt_s + offset_s
    ttp_offset_s = _refined_argmax(g) * dt_s + offset_s
    return g, offset_s, tmax_offset_s, ttp_offset_s


def sample(curve_fine: np.ndarray, times_from_start_s: np.ndarray, offset_s: float = 0.0,
           dt_s: float = FINE_DT_S) -> np.ndarray:
    """Linear interpolation of a fine-grid curve (samples at k dt + offset_s, zero before) at given times."""
    n = curve_fine.shape[-1]
    grid = np.arange(n) * dt_s + offset_s
    return np.interp(times_from_start_s, np.concatenate([[offset_s - dt_s], grid]),
                     np.concatenate([[0.0], curve_fine]), right=curve_fine[-1])
