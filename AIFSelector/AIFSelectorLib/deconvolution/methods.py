"""Deconvolution of tissue enhancement curves by the arterial input function (AIF).

Model (indicator dilution): C_t(t) = dt * sum_tau AIF(t - tau) k(tau), with k(t) = F.R(t) [1/s] on a uniform
grid of dt seconds. CBF is max_t k(t) (scaled by kH/rho outside, in :mod:`perfusion_maps`), Tmax the time of
that maximum.

All methods work in the block-circulant frame of Wu et al. (MRM 2003;50:164): both curves are zero-padded to
L >= 2N samples so that the convolution becomes circular, and a tissue curve that arrives before or after the
AIF is a circular shift of the same problem: the flow estimate does not depend on the delay. A circulant
matrix is diagonalised by the DFT; its singular values are |lambda_f|, the moduli of the DFT of its first
column, so a regularised inverse is one multiplication per frequency, vectorised over voxels:
K_f = C_f * phi_f * conj(lambda_f) / |lambda_f|^2, with filter factors 0 <= phi_f <= 1.

- ``csvd``: truncated SVD, phi_f = 1 where |lambda_f| >= threshold * max|lambda|, else 0 (Wu 2003).
- ``osvd``: csvd with a per-voxel threshold: the smallest of a ladder of thresholds whose residue has an
  oscillation index OI = sum_j |k_j - 2 k_(j-1) + k_(j-2)| / (L * max k) below a target (Wu 2003).
- ``tikhonov``: phi_f = s_f^2 / (s_f^2 + mu^2), s_f = |lambda_f| under the Volterra (linear-interpolation)
  discretisation (Sourbron et al., MRM 2007;57:1 and Phys Med Biol 2007;52:429), mu chosen per voxel by the
  L-curve criterion (or GCV), both evaluated for a ladder of mu at once in the Fourier domain (Parseval).

Flow and Tmax are read from the band-limited k(t) that the filtered spectrum defines (trigonometric
interpolation on a grid UPSAMPLE times finer, then a parabola through the maximum): reading them from the L
samples alone would make them depend on where the bolus falls between two frames.

The per-AIF part (spectra, filter factors) is computed once in float64 numpy; the per-voxel part runs in
float32 chunks (on every usable core with numpy: each chunk's result is the same whichever thread computes
it) on a tiny backend: numpy/scipy.fft (``device=None``) or torch (``device='cpu'|'cuda'|'auto'``,
imported lazily: the Slicer module works without torch). Both run the same numerics.
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.fft

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.time_grid import interpolation_weights
from AIFSelectorLib.prepare.preprocessing import usable_cores

METHODS = ("osvd", "csvd", "tikhonov")

DEFAULTS = {
    "csvd": {"threshold": 0.1, "discretisation": "rectangle"},
    "osvd": {"oi_target": 0.04, "thresholds": tuple(np.geomspace(0.005, 0.5, 10)), "discretisation": "rectangle",
             "search": "bisection"},
    "tikhonov": {"mus": tuple(np.geomspace(0.05, 1.0, 16)), "criterion": "lcurve", "discretisation": "volterra"},
}
"""Options of each method, all overridable through ``deconvolve(..., **options)``. The values were tuned on
synthetic CTP curves (Testing/deconvolution/test_deconvolution.py) and checked on the OSIPI DSC reference curves, one setting
per method for every case:

- csvd ``threshold``: relative singular-value cut-off; 0.1 is the customary cSVD value. Lower values recover
  short-MTT flow better at low noise but let noise through (0.05 more than doubles the flow overestimate of
  low-flow voxels at 3 HU noise); 0.15-0.2 are more robust but pass 13 instead of 14 OSIPI cases.
- osvd ``oi_target``: oscillation-index target at dt = 1 s. The OI of a given continuous-time oscillation
  scales with dt^2 (a second difference is dt^2 k''), so the target is applied as oi_target * (dt / 1 s)^2 and
  the choice is the same at every frame interval (a fixed target such as 0.095 lets noise through at dt = 0.5 s
  and over-smooths at dt = 2 s). 0.04 balances low-noise accuracy against noise robustness on synthetic
  curves; OSIPI passes 14/14 for any target in 0.02-0.1. ``thresholds``: the ladder, 10 geometric steps from
  0.005 to 0.5 (14 steps give the same results and cost 40 % more). ``search``: how the smallest passing
  threshold is found: 'ladder' tries all 9 lower steps (9 inverse FFTs per voxel), 'bisection' halves the
  ladder (4), assuming that the oscillation grows as the threshold falls. On the 256x256x16x48 phantom the two
  choose differently in 0.015 % of the tissue voxels (where the oscillation index is not monotonic), and the
  maps' medians agree to 5 digits; bisection takes 40 % less time.
- tikhonov ``mus``: the ladder of mu / max s; its floor 0.05 keeps the per-voxel choice stable on noisy curves
  (from 0.001, some noisy voxels take a nearly unregularised solution and a flow several times too high).
  ``criterion``: 'lcurve' (Hansen's corner: largest curvature of log residual norm vs log solution norm) or
  'gcv'; the L-curve is the more stable here: GCV over-smooths low-SNR voxels (flow down to -80 %) and
  under-smooths others.
- ``discretisation``: 'rectangle' (Wu 2003, lambda = dt * DFT(aif)) or 'volterra' (Sourbron 2007: kernel
  dt * (a[m-1] + 4 a[m] + a[m+1]) / 6, i.e. lambda * (2 + cos w) / 3).
"""

MAX_STEP_S = 1.0
"""For ``osvd``, curves sampled more coarsely than this [s] are linearly interpolated onto a grid of
dt / ceil(dt / MAX_STEP_S) before deconvolution (the piecewise-linear model of the data that the Volterra
discretisation already assumes; no new information). On 1.5-2 s frames a sub-frame tissue delay otherwise moves
oSVD's per-voxel threshold, and the flow, by up to 10 %; on the finer grid by under 2 %. csvd and tikhonov stay
on the frame grid: their flow moves by under 1 % there (Testing/deconvolution/test_deconvolution.py)."""

UPSAMPLE = 2
"""Flow and Tmax are read from k(t) interpolated on a grid this many times finer than dt."""

CHUNK_VOXELS = 4096
"""Voxels per chunk: the working set (a few (chunk, 2L) float32 arrays, ~1.5 MB each for L = 96) stays in the
CPU cache, which measured faster than larger chunks; on a GPU pass a larger chunk_voxels."""


@dataclass
class DeconvolutionResult:
    """Per-voxel results of :func:`deconvolve`.

    flow_per_s: (n_voxels,) float32, max_t k(t) = F.R(t) [1/s].
    tmax_s: (n_voxels,) float32, time of that maximum [s]; negative where the tissue curve precedes the AIF
        (maximum in the wrapped second half of the circulant period).
    residue: (n_voxels, L) float32 k(t) [1/s] on the zero-padded grid of L samples, ``step_s`` apart (the frame
        interval, or a fraction of it, see MAX_STEP_S), only when asked for.
    """

    flow_per_s: np.ndarray
    tmax_s: np.ndarray
    residue: Optional[np.ndarray] = None
    step_s: Optional[float] = None


class _Numpy:
    """The per-voxel operations in numpy / scipy.fft (float32 and complex64 arrays, last axis). Each transform
    runs on one thread: the chunks already run on every core (transforms with threads of their own inside them
    measured 20 % slower on 2 cores)."""

    where = staticmethod(np.where)
    log = staticmethod(np.log)

    def array(self, x):
        return np.asarray(x)

    def numpy(self, x):
        return x

    def rfft(self, x, n):
        return scipy.fft.rfft(x, n=n, axis=-1, workers=1)

    def irfft(self, x, n):
        return scipy.fft.irfft(x, n=n, axis=-1, workers=1)

    def max(self, x):
        return x.max(-1)

    def take(self, x, idx):
        """x[i, idx[i]] for every row i."""
        return np.take_along_axis(x, idx[:, None], axis=-1)[:, 0]

    def index_zeros(self, n):
        return np.zeros(n, np.int64)


class _Torch:
    """The same operations in torch on one device."""

    def __init__(self, device):
        import torch

        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.where = torch.where
        self.log = torch.log

    def array(self, x):
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def numpy(self, x):
        return x.cpu().numpy()

    def rfft(self, x, n):
        return self.torch.fft.rfft(x, n=n, dim=-1)

    def irfft(self, x, n):
        return self.torch.fft.irfft(x, n=n, dim=-1)

    def max(self, x):
        return x.amax(-1)

    def take(self, x, idx):
        return self.torch.gather(x, -1, idx[:, None])[:, 0]

    def index_zeros(self, n):
        return self.torch.zeros(n, dtype=self.torch.long, device=self.device)


def refinement(dt_s: float) -> int:
    """Samples per frame interval on the grid oSVD deconvolves (1 for frames of MAX_STEP_S or less)."""
    return max(1, int(np.ceil(dt_s / MAX_STEP_S - 1e-6)))


def linear_upsampling(n_frames: int, factor: int) -> np.ndarray:
    """(n_frames, (n_frames - 1) * factor + 1) float64 matrix W: curves @ W interpolates (n, n_frames) curves
    linearly onto a grid ``factor`` times finer (the original samples kept)."""
    fine = np.arange((n_frames - 1) * factor + 1) / factor
    w = np.zeros((n_frames, fine.size))
    if n_frames < 2:
        w[0, :] = 1.0
        return w
    lo, weight = interpolation_weights(np.arange(n_frames, dtype=np.float64), fine)
    cols = np.arange(fine.size)
    np.add.at(w, (lo, cols), 1.0 - weight)
    np.add.at(w, (lo + 1, cols), weight)
    return w


def _spectrum(aif, dt_s, n_pad, discretisation):
    """Eigenvalues lambda_f (rfft bins, complex128) of the circulant convolution matrix of the zero-padded AIF.

    'rectangle': C_i = dt sum_j a_(i-j) k_j (Wu 2003). 'volterra': both curves linear between samples
    (Sourbron 2007), kernel dt (a_(m-1) + 4 a_m + a_(m+1)) / 6, i.e. lambda_f times (2 + cos w_f) / 3."""
    lam = np.fft.rfft(aif, n=n_pad) * dt_s
    if discretisation == "volterra":
        lam = lam * (2.0 + np.cos(2.0 * np.pi * np.arange(lam.size) / n_pad)) / 3.0
    elif discretisation != "rectangle":
        raise ValueError(f"unknown discretisation {discretisation!r}: use 'rectangle' or 'volterra'")
    return lam


def _inverse(lam, phi):
    """Filtered inverse phi * conj(lambda) / |lambda|^2 (0 where phi is 0) for each row of phi, complex64."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(phi > 0, phi * np.conj(lam) / np.abs(lam) ** 2, 0.0)
    return inv.astype(np.complex64)


def _lcurve_corner(be, rho, eta):
    """Index of the L-curve corner (Hansen): largest curvature of (log rho, log eta) along the log-spaced mu
    ladder, by central differences at the interior points (up to a constant factor, which leaves the argmax).
    rho, eta: (n_vox, n_mu) squared residual and solution norms."""
    x, y = be.log(rho + 1e-30), be.log(eta + 1e-30)
    dx, dy = x[:, 2:] - x[:, :-2], y[:, 2:] - y[:, :-2]
    ddx, ddy = x[:, 2:] - 2.0 * x[:, 1:-1] + x[:, :-2], y[:, 2:] - 2.0 * y[:, 1:-1] + y[:, :-2]
    curvature = (dx * ddy - ddx * dy) / (dx * dx + dy * dy + 1e-12) ** 1.5
    return curvature.argmax(-1) + 1


def _peak(be, k, dt_s):
    """Flow = max_t k(t) (never max |k|) and its time [s] from samples k (n_vox, n) dt_s apart: a parabola
    through the largest sample and its circular neighbours. Samples past n/2 are the wrapped (negative-delay)
    half of the circulant period."""
    n = k.shape[-1]
    i = k.argmax(-1)
    y0, ym, yp = be.take(k, i), be.take(k, (i - 1) % n), be.take(k, (i + 1) % n)
    curv = ym - 2.0 * y0 + yp
    peaked = curv < 0
    shift = be.where(peaked, 0.5 * (ym - yp) / be.where(peaked, curv, -1.0), 0.0).clip(-0.5, 0.5)
    flow = y0 + shift * (0.5 * (yp - ym) + 0.5 * curv * shift)
    m = i + shift
    return flow, be.where(m > n / 2, m - n, m) * dt_s


def deconvolve(tissue, aif, dt_s, method="osvd", *, device=None, chunk_voxels=CHUNK_VOXELS,
               return_residue=False, **options) -> DeconvolutionResult:
    """k(t) = F.R(t) [1/s] for every tissue curve, its maximum (flow) and the time of that maximum (Tmax).

    tissue: (n_voxels, n_frames) enhancement [HU or any concentration unit], baseline removed, any real dtype;
        read chunk by chunk and converted to float32 there, so a memory-mapped array is fine.
    aif: (n_frames,) arterial enhancement in the same unit. dt_s: frame interval [s].
    method: 'osvd', 'csvd' or 'tikhonov'. device: None for numpy, or a torch device ('cpu', 'cuda', 'auto').
    chunk_voxels: voxels per chunk (bounds the working memory). return_residue: also return k on the padded grid.
    options: per-method settings, see ``DEFAULTS``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown deconvolution method {method!r}: valid methods are {', '.join(METHODS)}")
    unknown = set(options) - set(DEFAULTS[method])
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {method}: valid are {sorted(DEFAULTS[method])}")
    opts = {**DEFAULTS[method], **options}
    aif = np.asarray(aif, dtype=np.float64).ravel()
    tissue = np.asarray(tissue)
    if tissue.ndim != 2 or tissue.shape[1] != aif.size:
        raise InputError(f"tissue curves must be (n_voxels, {aif.size}) to match the AIF; got {tissue.shape}")
    if not (np.isfinite(dt_s) and dt_s > 0):
        raise InputError(f"the frame interval must be a positive number of seconds, got {dt_s}")
    if not np.all(np.isfinite(aif)) or not np.any(aif):
        raise InputError("the AIF is zero or not finite: nothing to deconvolve by")

    n_vox, n_frames = tissue.shape
    factor = refinement(dt_s) if method == "osvd" else 1
    upsampling = None
    if factor > 1:  # coarse frames: deconvolve on a finer grid (see MAX_STEP_S)
        upsampling = linear_upsampling(n_frames, factor)
        aif = aif @ upsampling
        upsampling = upsampling.astype(np.float32)
        dt_s, n_frames = dt_s / factor, upsampling.shape[1]
    n_pad = scipy.fft.next_fast_len(2 * n_frames, real=True)
    lam = _spectrum(aif, dt_s, n_pad, opts["discretisation"])
    s = np.abs(lam)
    be = _Numpy() if device is None else _Torch(device)

    if method == "csvd":
        phi = (s >= opts["threshold"] * s.max()).astype(np.float64)[None]
    elif method == "osvd":
        thresholds = np.sort(np.asarray(opts["thresholds"], np.float64))[::-1]  # largest (smoothest) first
        phi = (s[None] >= thresholds[:, None] * s.max()).astype(np.float64)
        if opts["search"] not in ("bisection", "ladder"):
            raise ValueError(f"unknown search {opts['search']!r}: use 'bisection' or 'ladder'")
        if opts["search"] == "ladder":  # the frequencies each lower threshold adds, and their unfiltered inverse
            added = [None] + [be.array(np.flatnonzero(phi[j] > phi[j - 1])) for j in range(1, len(phi))]
            unfiltered_inverse = be.array(_inverse(lam, (s > 0).astype(np.float64)))
        # OI < target * (dt / 1 s)^2, written without a division (max k <= 0 never passes)
        oi_bound = opts["oi_target"] * dt_s ** 2 * n_pad
    else:
        phi = s[None] ** 2 / (s[None] ** 2 + (np.asarray(opts["mus"], np.float64)[:, None] * s.max()) ** 2)
        # residual ||A k_mu - c||^2 = sum_f w_f (1 - phi_f)^2 P_f and solution ||k_mu||^2 = sum_f w_f phi_f^2
        # P_f / s_f^2 (Parseval, P_f = |C_f|^2, w_f: each rfft bin counts twice but DC and Nyquist once), so the
        # norms of every voxel for every mu are one matrix product
        weight = np.where((np.arange(s.size) == 0) | (2 * np.arange(s.size) == n_pad), 1.0, 2.0)
        with np.errstate(divide="ignore"):
            solution = phi ** 2 * weight * np.where(s > 0, 1.0 / s ** 2, 0.0)
        norms = np.concatenate([((1.0 - phi) ** 2 * weight).T, solution.T], axis=1)  # (n_freq, 2 n_mu)
        norms = be.array(norms.astype(np.float32))
        if opts["criterion"] == "gcv":
            # GCV(mu) = ||A k_mu - c||^2 / trace(I - A A_mu^+)^2
            gcv_trace2 = be.array((((1.0 - phi) * weight).sum(1) ** 2).astype(np.float32))
        elif opts["criterion"] != "lcurve":
            raise ValueError(f"unknown criterion {opts['criterion']!r}: use 'lcurve' or 'gcv'")
    inverse = _inverse(lam, phi)  # (n_rows, n_freq): one row per threshold (osvd) or mu (tikhonov)
    inverses = be.array(inverse)
    # synthesis on the fine grid: the Nyquist bin halved so that the fine grid passes through the L samples
    nyquist_half = np.where(2 * np.arange(s.size) == n_pad, 0.5, 1.0)
    fine = be.array((inverse * nyquist_half * UPSAMPLE).astype(np.complex64))

    flow = np.empty(n_vox, np.float32)
    tmax = np.empty(n_vox, np.float32)
    residue = np.empty((n_vox, n_pad), np.float32) if return_residue else None
    n_rows = len(phi)
    chunk = max(1, int(chunk_voxels))

    def passes_oi(trial):
        """OI < target, for residues (n, L) on the padded grid."""
        slope = trial[:, 1:] - trial[:, :-1]
        return abs(slope[:, 1:] - slope[:, :-1]).sum(-1) < oi_bound * be.max(trial)

    def one_chunk(start: int) -> None:
        stop = min(start + chunk, n_vox)
        block = np.asarray(tissue[start:stop], dtype=np.float32)
        if upsampling is not None:
            block = block @ upsampling
        spec = be.rfft(be.array(block), n_pad)
        choice = 0
        if method == "osvd":
            # choice: the smallest threshold whose residue passes the OI test (0, the largest, if none does)
            if opts["search"] == "bisection":
                lo = be.index_zeros(stop - start)
                hi = lo + (n_rows - 1)
                while True:
                    active = lo < hi
                    if not active.any():
                        break
                    mid = (lo + hi + 1) // 2
                    passes = passes_oi(be.irfft(spec * inverses[mid], n_pad))
                    lo = be.where(active & passes, mid, lo)
                    hi = be.where(active & ~passes, mid - 1, hi)
                choice = lo
            else:  # down the ladder, adding the frequencies that each lower threshold lets through
                unfiltered = spec * unfiltered_inverse
                trial_spec = spec * inverses[0]
                for j in range(1, n_rows):
                    trial_spec[:, added[j]] = unfiltered[:, added[j]]
                    choice = be.where(passes_oi(be.irfft(trial_spec, n_pad)), j, choice)
        elif method == "tikhonov":
            norm = (spec.real ** 2 + spec.imag ** 2) @ norms
            if opts["criterion"] == "gcv":
                choice = (norm[:, :n_rows] / gcv_trace2).argmin(-1)
            else:
                choice = _lcurve_corner(be, norm[:, :n_rows], norm[:, n_rows:])
        f, t = _peak(be, be.irfft(spec * fine[choice], UPSAMPLE * n_pad), dt_s / UPSAMPLE)
        flow[start:stop] = be.numpy(f)
        tmax[start:stop] = be.numpy(t)
        if return_residue:
            residue[start:stop] = be.numpy(be.irfft(spec * inverses[choice], n_pad))

    starts = range(0, n_vox, chunk)
    workers = min(usable_cores(), len(starts)) if device is None else 1
    if workers > 1:  # numpy and pocketfft release the GIL: chunks (disjoint outputs) on every core
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one_chunk, starts))
    else:  # torch runs its own threads
        for start in starts:
            one_chunk(start)
    return DeconvolutionResult(flow_per_s=flow, tmax_s=tmax, residue=residue, step_s=dt_s)
