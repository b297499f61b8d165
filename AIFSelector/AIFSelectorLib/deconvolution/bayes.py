"""Bayesian deconvolution: posterior flow, Tmax and their uncertainty per voxel, on a grid of residue shapes.

Model (after Mouridsen et al., NeuroImage 2006;33:570, and Boutelier et al., IEEE TMI 2012;31:1381): every
tissue enhancement curve is

    C(t) = F * (AIF (x) R_eff)(t - delay) + noise,      R_eff = h_disp (x) R

with F [1/s] the flow into the residue R of a gamma distribution of capillary transit times (shape ``k``, mean
MTT; k = 1 is the exponential residue), h_disp an optional exponential dispersion kernel of time constant
``beta`` [s], and a delay [s] of either sign. The AIF is a cubic spline between its samples (:func:`smooth_aif`;
held at its last value after the series); the model curves are convolved on a 0.1 s grid (:data:`FINE_DT_S`) and
read at the frames.

The flow of the maps is, as for every method here, the maximum of the impulse response,
max_t F.R_eff(t) = F * max R_eff (CBF = kH/rho * 6000 * that, :mod:`maps.perfusion_maps`), and Tmax the time
of that maximum. With dispersion allowed, the data explain a curve as well by a narrow residue behind a broad
kernel as by a broad residue: F alone is not fixed by the data (docs/research/bayes_deconvolution.md), but
F * max R_eff and its time are fixed far better.

Inference:
- F enters linearly. Given the other parameters g = (MTT, k, beta, delay) it is marginalised analytically under
  the scale-invariant prior p(F) ~ 1/F, F > 0, so each voxel needs one inner product per g
  (:func:`_weights`). A flat prior on F would add -log |model curve|, an Occam factor that prefers the
  shortest MTTs and doubles grey-matter flow (measured: docs/research/bayes_deconvolution.md).
- g lives on a grid (:class:`BayesPrior`). Its prior is empirical Bayes, estimated from the whole brain: the
  mixing weights over the grid that best explain a random sample of the brain's own curves (EM,
  :func:`fit_prior`), mixed with a flat floor so that tissue rarer than the sample (the core) keeps its chance.
  This is the spatial pooling; the edge-preserving denoising the curves pass through before is the other.
- The likelihood is evaluated in the subspace the curves live in (:func:`curve_subspace`): denoised curves are
  the mean curve plus ``prepare.denoising.N_COMPONENTS`` principal components, so their errors are correlated in
  time and only that many numbers per voxel are free. The noise SD per coordinate of that subspace is one number
  per series (empirical Bayes): from the residuals of each sampled curve's best grid fit (:func:`noise_sd`), so
  it covers what the curves still carry, noise and model misfit alike.
- Posterior means and SDs of the flow of the maps and of Tmax (= delay + the time of R_eff's maximum) follow by
  summing over the grid (:func:`posterior`; numpy on every core, or torch on a device). Delay is searched coarse
  to fine (a pass at ``coarse_delay_step_s``, then a window of +-``window_s`` around each voxel's coarse delay at
  ``delay_step_s``).

Priors, stated (:class:`BayesPrior`). The family, gamma transit times and exponential dispersion, is the
literature's (Mouridsen 2006) and also the one the digital phantom draws from (with box residues too, and its own
ranges, phantom.case); the grid's ranges are physiological, not read from the phantom: MTT log-uniform over
1-24 s (grey and white matter 3-6 s, ischaemic tissue up to ~20 s; the grid's ends leave room either side);
transit-time shapes k in {1, 2, 4, 8, 16}, from one well-mixed compartment (exponential) to near plug flow
(k = 16: transit times within +-25 %); dispersion time constants {0, 1, 2.5} s (none, moderate, strong:
collateral routes); delay uniform from -5 to +15 s (a tissue curve may precede an AIF taken downstream;
collateral delays reach ~10 s). All of them are then re-weighted by the brain's own curves.

Shapes: tissue (n_voxels, n_frames), AIF (n_frames,), both enhancement in HU on a uniform grid of dt_s seconds.
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np
from scipy import special

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.prepare.preprocessing import usable_cores

FINE_DT_S = 0.1
"""Time step [s] of the grid on which the model curves are convolved before they are read at the frames: a tenth
of the shortest CT frame intervals (1 s), so that delays and the cell-averaged residues are resolved (the cell
average of R's first 0.1 s is 1.2 % below R(0) = 1 at MTT 4 s, exponential residue)."""
CHUNK_VOXELS = 2048
"""Voxels per chunk of the posterior (a few (chunk, n_grid) float32 arrays)."""
LOG_WEIGHT_FLOOR = -40.0
"""Log weights relative to a curve's best are floored here before the exponential: every weight and product
after it stays a normal float32 (subnormal numbers, from exp(x < -87), make each arithmetic pass ~4x slower), and
the mass this adds, at most G e^-40 ~ 1e-13 of the total, changes no result."""
SEARCH_ROWS = 128
"""Curves per block of the coarse delay search (a (128, n_coarse) float32 array stays in the CPU cache)."""
MIN_CURVE_NORM = 0.01
"""Grid delays whose model curves keep under this fraction of their shape's largest norm (the bolus leaving the
series' end) are left out: such a curve's flow would carry over 100 times the noise of the best delay's (a choice;
without it a curve rising in a 14-frame series' last frames read a flow of 780 /s)."""
EM_CHUNK_VOXELS = 250
"""Sampled curves per chunk of the prior's E-step and the noise estimate (a (250, G) float32 array, ~5-20 MB)."""


@dataclass(frozen=True)
class BayesPrior:
    """The parameter grid and the settings of the empirical prior (every value stated in the module docstring)."""

    mtt_range_s: Tuple[float, float] = (1.0, 24.0)
    mtt_step: float = 0.1
    """Relative step of the log-uniform MTT grid. With 5 % and 0.25 s delay steps (4x the grid) the phantom's
    healthy CBF moved by under 1 point and Tmax by under 0.15 s (seeds 0-1), at about twice the cost."""
    shapes: Tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    dispersions_s: Tuple[float, ...] = (0.0, 1.0, 2.5)
    delay_range_s: Tuple[float, float] = (-5.0, 15.0)
    delay_step_s: float = 0.5
    """Delay step [s] of the fine window (see mtt_step)."""
    coarse_delay_step_s: float = 1.0
    window_s: float = 1.0
    """Half-width [s] of the fine delay window around each voxel's coarse delay."""
    floor: float = 0.05
    """Fraction of the prior kept flat over the grid (the rest is the EM estimate from the brain's curves), so that
    no residue the sample missed is ruled out; a choice, not tuned: 0.5 moved the synthetic populations' median
    flows by under 1 % (Testing/deconvolution/test_bayes.py)."""
    em_iterations: int = 12
    """EM iterations. On the phantom (seed 0), 10 or 20 instead move the median flow by 0.2 % and 0.6 % (90 % of
    voxels within 0.8 % and 2.5 %), Tmax by a median 0.02-0.05 s: EM converges slowly, but the maps hardly follow."""
    sample_voxels: int = 4000
    """Curves sampled from the whole brain to estimate the prior and the noise; 8000 moved the phantom's median
    flow by 0.6 % (90 % of voxels within 2.9 %) and Tmax by a median 0.02 s, at twice the prior's cost."""

    def mtt_grid_s(self) -> np.ndarray:
        lo, hi = self.mtt_range_s
        return np.geomspace(lo, hi, int(round(np.log(hi / lo) / np.log1p(self.mtt_step))) + 1)

    def delays_s(self) -> np.ndarray:
        lo, hi = self.delay_range_s
        return lo + self.delay_step_s * np.arange(int(round((hi - lo) / self.delay_step_s)) + 1)


@dataclass(frozen=True)
class Grid:
    """The parameter grid, flattened: one entry per model curve."""

    mtt_s: np.ndarray
    shape: np.ndarray
    beta_s: np.ndarray
    delay_s: np.ndarray
    tmax_s: np.ndarray
    """Delay plus the time of R_eff's maximum [s]."""
    height: np.ndarray
    """max_t R_eff(t) (1 without dispersion): the flow of the maps is max_t F.R_eff(t) = F * height."""

    def take(self, idx: np.ndarray) -> "Grid":
        return Grid(self.mtt_s[idx], self.shape[idx], self.beta_s[idx], self.delay_s[idx], self.tmax_s[idx],
                    self.height[idx])


@dataclass(frozen=True)
class BayesModel:
    """Model curves of one AIF in the curves' subspace, and the prior over them.

    basis: (n_frames, K) float32 orthonormal columns spanning the tissue curves (:func:`curve_subspace`);
    unit: (K, G) float32 model curves for F = 1 in that basis, divided by their norm; norm: (G,) their norms
    [HU s]; log_prior: (G,) float64 normalised log prior weights; noise_hu: the noise SD per coordinate [HU]
    (None until :func:`fit_prior`)."""

    prior: BayesPrior
    grid: Grid
    basis: np.ndarray
    unit: np.ndarray
    norm: np.ndarray
    log_prior: np.ndarray
    noise_hu: Optional[float] = None

    def columns(self, idx: np.ndarray) -> "BayesModel":
        return replace(self, grid=self.grid.take(idx), unit=np.ascontiguousarray(self.unit[:, idx]),
                       norm=self.norm[idx], log_prior=self.log_prior[idx])


@dataclass
class Posterior:
    """Per-voxel posterior summaries (n,) float32: the flow of the maps max_t F.R_eff(t) [1/s] and Tmax [s],
    means and SDs."""

    flow_per_s: np.ndarray
    flow_sd_per_s: np.ndarray
    tmax_s: np.ndarray
    tmax_sd_s: np.ndarray


def curve_subspace(n_frames: int, spanning: Optional[np.ndarray] = None) -> np.ndarray:
    """Orthonormal basis (n_frames, K) float32 of the space the tissue curves lie in: the span of ``spanning``
    (K', n_frames) rows (the denoising's mean curve and components), or every frame (raw curves)."""
    if spanning is None:
        return np.eye(n_frames, dtype=np.float32)
    q, r = np.linalg.qr(np.asarray(spanning, np.float64).T)
    keep = np.abs(np.diag(r)) > 1e-9 * np.abs(np.diag(r)).max()  # drops only exactly dependent rows
    return q[:, keep].astype(np.float32)


def effective_residues(prior: BayesPrior, n: int) -> Tuple[np.ndarray, Grid]:
    """R_eff = h_disp (x) R for every (MTT, k, beta) of the grid, as cell averages on ``n`` steps of FINE_DT_S.
    Returns (residues (P, n), a Grid of P entries with delay 0); each residue has area MTT."""
    mtt, k, beta = (a.ravel() for a in np.meshgrid(prior.mtt_grid_s(), prior.shapes, prior.dispersions_s,
                                                   indexing="ij"))
    edges = np.arange(n + 1) * FINE_DT_S
    # gamma survival primitive: int_0^x Q(k, k u / m) du = x Q(k, k x / m) + m P(k + 1, k x / m)
    u = edges[None] * k[:, None] / mtt[:, None]
    primitive = edges[None] * special.gammaincc(k[:, None], u) + mtt[:, None] * special.gammainc(k[:, None] + 1, u)
    residue = np.diff(primitive, axis=1) / FINE_DT_S
    dispersed = beta > 0
    if dispersed.any():
        b = beta[dispersed][:, None]
        kernel = np.diff(-np.exp(-edges[None] / b), axis=1)  # cell masses of exp(-t/b)/b, sum 1
        nfft = 1 << int(np.ceil(np.log2(2 * n)))
        residue[dispersed] = np.fft.irfft(np.fft.rfft(residue[dispersed], nfft) * np.fft.rfft(kernel, nfft),
                                          nfft)[:, :n]
    # without dispersion R is largest at t = 0; a dispersed R_eff at the centre of the cell holding its maximum
    peak = np.where(dispersed, (residue.argmax(1) + 0.5) * FINE_DT_S, 0.0)
    height = np.where(dispersed, residue.max(1), 1.0)
    return residue, Grid(mtt, k, beta, np.zeros_like(mtt), peak, height)


def smooth_aif(aif: np.ndarray, t_frames: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    """The AIF [HU] at times ``t_s`` [s] between its samples at ``t_frames``: a cubic spline (not-a-knot), held at
    the last sample after the series. The bolus is smooth; linear interpolation cuts its peak between frames and
    blurs it, which a model fitted to tissue curves (that saw the whole bolus) would answer with residues narrower
    than the truth, i.e. higher flow (measured: docs/research/bayes_deconvolution.md)."""
    from scipy.interpolate import CubicSpline

    return CubicSpline(t_frames, aif)(np.clip(t_s, t_frames[0], t_frames[-1]))


def build_model(aif: np.ndarray, dt_s: float, basis: np.ndarray, prior: BayesPrior = BayesPrior()) -> BayesModel:
    """Model curves of every grid point for the AIF (n_frames,) [HU] sampled every ``dt_s`` seconds, projected on
    ``basis`` (:func:`curve_subspace`), with a flat prior (the prior and the noise come from :func:`fit_prior`)."""
    aif = np.asarray(aif, np.float64).ravel()
    if not (np.isfinite(dt_s) and dt_s > 0):
        raise InputError(f"the frame interval must be a positive number of seconds, got {dt_s}")
    if not np.all(np.isfinite(aif)) or not aif.max(initial=0.0) > 0:
        raise InputError("the AIF is zero, negative or not finite: nothing to deconvolve by")
    n_frames = aif.size
    t_frames = np.arange(n_frames) * dt_s
    n = int(np.ceil((t_frames[-1] - prior.delay_range_s[0]) / FINE_DT_S)) + 4
    residues, shapes = effective_residues(prior, n)
    delays = prior.delays_s()
    aif_fine = smooth_aif(aif, t_frames, np.arange(n) * FINE_DT_S)
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    conv = np.fft.irfft(np.fft.rfft(residues, nfft) * np.fft.rfft(aif_fine, nfft)[None], nfft)[:, :n] * FINE_DT_S
    # conv[:, j + 1]: the convolution at (j + 1/2) fine steps (cell averages); conv[:, 0] = 0 before the bolus
    conv = np.concatenate([np.zeros((len(conv), 1)), conv], axis=1)
    position = (t_frames[None] - delays[:, None]) / FINE_DT_S + 0.5  # (D, T) on conv's columns
    position = np.clip(position, 0.0, n - 1e-6)
    i0 = np.floor(position).astype(int)
    frac = position - i0
    curves = conv[:, i0] * (1 - frac) + conv[:, np.minimum(i0 + 1, n)] * frac  # (P, D, T)
    curves = curves.transpose(1, 0, 2).reshape(-1, n_frames)  # delay-major: entry = d * P + p
    coords = curves @ basis.astype(np.float64)
    norm = np.sqrt((coords ** 2).sum(1))
    # delays so late that some shape's curve has barely entered the series (under MIN_CURVE_NORM of that shape's
    # largest norm) leave the grid: their flow, one over that norm, would be free and its SD without bound
    by_delay = norm.reshape(len(delays), -1)
    kept = int(np.cumprod((by_delay / by_delay.max(0)).min(1) >= MIN_CURVE_NORM).sum())
    if kept == 0:
        raise InputError(f"the series ({t_frames[-1]:g} s) is too short for the Bayesian model's delay range")
    p = by_delay.shape[1]  # the grid's residues per delay
    delays, coords, norm = delays[:kept], coords[:kept * p], norm[:kept * p]
    grid = Grid(np.tile(shapes.mtt_s, len(delays)), np.tile(shapes.shape, len(delays)),
                np.tile(shapes.beta_s, len(delays)), np.repeat(delays, p),
                np.repeat(delays, p) + np.tile(shapes.tmax_s, len(delays)), np.tile(shapes.height, len(delays)))
    g = len(norm)
    return BayesModel(prior, grid, basis.astype(np.float32), (coords / norm[:, None]).T.astype(np.float32), norm,
                      np.full(g, -np.log(g)))


class _NumpyOps:
    """The per-voxel operations of the posterior in numpy (float32, in place where it saves memory)."""

    @staticmethod
    def array(x):
        return np.ascontiguousarray(x, np.float32)

    @staticmethod
    def numpy(x):
        return x

    @staticmethod
    def clamp_min_(x, low):
        return np.maximum(x, np.float32(low), out=x)

    @staticmethod
    def clamp_min(x, low):
        return np.maximum(x, np.float32(low))

    @staticmethod
    def row_max(x):
        return x.max(1, keepdims=True)

    @staticmethod
    def exp_(x):
        return np.exp(x, out=x)

    @staticmethod
    def rows(idx):
        return idx

    @staticmethod
    def row_sums(w, v):
        """w (n, G) @ v (G,) summed in numpy's own loop: BLAS splits long sums by its thread count, which would
        make the maps depend on OMP_NUM_THREADS."""
        return np.einsum("ng,g->n", w, v)


class _TorchOps:
    """The same operations in torch on one device (imported only when a device is asked for)."""

    def __init__(self, device):
        import torch

        from AIFSelectorLib.models.device import resolve_device
        self.torch, self.device = torch, resolve_device(device)

    def array(self, x):
        return self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)

    def numpy(self, x):
        return x.cpu().numpy()

    def clamp_min_(self, x, low):
        return x.clamp_(min=low)

    def clamp_min(self, x, low):
        return x.clamp(min=low)

    def row_max(self, x):
        return x.amax(1, keepdim=True)

    def exp_(self, x):
        return x.exp_()

    def rows(self, idx):
        return self.torch.from_numpy(idx).to(self.device)

    @staticmethod
    def row_sums(w, v):
        return w @ v


@dataclass(frozen=True)
class _Columns:
    """A set of grid columns as the backend's float32 arrays: unit (K, G), log prior (G,), the flow of the maps per
    unit scaled projection (G,) [1/s], and the columns' Tmax, Tmax^2 and flow variance given the column (3, G)."""

    unit: object
    log_prior: object
    flow_per_scaled: object
    moments: object

    @staticmethod
    def of(model: BayesModel, ops) -> "_Columns":
        sigma = model.noise_hu
        per_projection = model.grid.height / model.norm  # flow of the maps per unit projection P [1/s / HU]
        tmax = model.grid.tmax_s
        table = np.stack([tmax, tmax * tmax, (sigma * per_projection) ** 2])
        return _Columns(ops.array(model.unit), ops.array(model.log_prior), ops.array(per_projection * sigma *
                                                                                     np.sqrt(2.0)), ops.array(table))


def _weights(scaled, columns: _Columns, ops=_NumpyOps):
    """(unnormalised posterior weights over the columns (n, G) float32, scaled projections P' (n, G)) of curves
    given as scaled coordinates (n, K): coordinates in the model's basis divided by sigma * sqrt(2).

    With Gaussian noise and p(F) ~ 1/F the flow integrates out to p(c | g) ~ exp(P^2 / (2 sigma^2)) / P, with
    P = c . unit_g clipped at 0, i.e. exp(P'^2) / P' (the large-P, Laplace form of the integral, which diverges
    at F -> 0 under 1/F); P' is floored at 1/sqrt(2) (P at sigma) in the 1/P' (curves that a model shape does
    not explain at all). The row maximum subtracted before the exponential is that of P'^2 + log prior: the 1/P'
    factor is at most sqrt(2), so nothing overflows; see LOG_WEIGHT_FLOOR."""
    p = ops.clamp_min_(scaled @ columns.unit, 0.0)
    w = p * p
    w += columns.log_prior
    w -= ops.row_max(w)
    ops.exp_(ops.clamp_min_(w, LOG_WEIGHT_FLOOR))
    w /= ops.clamp_min(p, float(np.sqrt(0.5)))
    return w, p


def _scaled(coords, noise_hu: float):
    """Coordinates (numpy or torch) divided by sigma * sqrt(2) (:func:`_weights`)."""
    return coords * float(1.0 / (noise_hu * np.sqrt(2.0)))


def noise_sd(coords: np.ndarray, model: BayesModel) -> float:
    """Noise SD per coordinate [HU] from each curve's best grid fit: sqrt(median RSS / (K - p)), p fitted
    parameters (F, MTT, shape, delay, and the dispersion when the grid has several) in K coordinates."""
    c = np.asarray(coords, np.float32)
    best = np.concatenate([np.maximum((c[i:i + EM_CHUNK_VOXELS] @ model.unit).max(1), 0.0)
                           for i in range(0, len(c), EM_CHUNK_VOXELS)]).astype(np.float64)  # chunks: bounded memory
    rss = np.maximum((c.astype(np.float64) ** 2).sum(1) - best ** 2, 0.0)
    dof = max(1, c.shape[1] - 4 - (len(model.prior.dispersions_s) > 1))
    # floored at a millionth of the largest coordinate: noise-free (synthetic) curves still get a finite likelihood
    return float(max(np.sqrt(np.median(rss) / dof), 1e-6 * np.abs(c).max(initial=1e-30)))


def _coarse_grid(model: BayesModel) -> Tuple[np.ndarray, np.ndarray]:
    """(columns of the coarse grid: every ``coarse_delay_step_s`` in delay and every second MTT; the column of
    the coarse grid nearest to each grid point (G,), an index into the first array)."""
    prior, g = model.prior, model.grid
    step = max(1, int(round(prior.coarse_delay_step_s / prior.delay_step_s)))
    delay_index = np.round((g.delay_s - prior.delay_range_s[0]) / prior.delay_step_s).astype(int)
    mtts = prior.mtt_grid_s()
    mtt_index = np.searchsorted(mtts, g.mtt_s - 1e-9)
    columns = np.flatnonzero((delay_index % step == 0) & (mtt_index % 2 == 0))
    last_delay = (delay_index.max() // step) * step
    # ties go up (np.round would send them to the even neighbour: 1, 2 or 3 children per coarse point)
    near_delay = np.minimum(np.floor(delay_index / step + 0.5).astype(int) * step, last_delay)
    near_mtt = np.minimum(np.floor(mtt_index / 2 + 0.5).astype(int) * 2, ((len(mtts) - 1) // 2) * 2)

    def key(d, m, k, b):
        return ((d * len(mtts) + m) * 1000 + np.round(k * 10).astype(int)) * 1000 + np.round(b * 10).astype(int)

    coarse_keys = key(delay_index[columns], mtt_index[columns], g.shape[columns], g.beta_s[columns])
    order = np.argsort(coarse_keys)
    parent = order[np.searchsorted(coarse_keys[order], key(near_delay, near_mtt, g.shape, g.beta_s))]
    return columns, parent


def fit_prior(curves: np.ndarray, model: BayesModel, seed: int = 0) -> BayesModel:
    """The model with the empirical prior and noise of ``curves`` (n, n_frames) [HU], a sample of the brain's
    tissue curves (at most ``prior.sample_voxels`` of them are used, drawn with ``seed``): EM for the weights of
    the coarse grid (:func:`_coarse_grid`), each shared equally by the grid points nearest to it, mixed with
    the flat ``prior.floor``. The E-step runs in fixed chunks on every usable core, summed in chunk order (the
    same result on any number of threads)."""
    curves = np.asarray(curves, np.float32)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(curves), size=min(model.prior.sample_voxels, len(curves)), replace=False))
    coords = curves[pick] @ model.basis
    sigma = noise_sd(coords, model)
    scaled = _scaled(coords, sigma)
    columns, parent = _coarse_grid(model)
    coarse = model.columns(columns)
    children = np.bincount(parent, minlength=len(columns)).astype(np.float64)
    flat = children / children.sum()  # the flat prior over the whole grid, summed onto the coarse columns
    weights = flat
    starts = range(0, len(scaled), EM_CHUNK_VOXELS)

    def responsibilities(start: int, current: _Columns) -> np.ndarray:
        w = _weights(scaled[start:start + EM_CHUNK_VOXELS], current)[0]
        # the sum over voxels of the posteriors, in numpy's own loop (see _NumpyOps.row_sums)
        return np.einsum("n,ng->g", (1.0 / w.sum(1, dtype=np.float64)).astype(np.float32), w)

    with ThreadPoolExecutor(max_workers=max(1, min(usable_cores(), len(starts)))) as pool:
        for _ in range(model.prior.em_iterations):
            current = _Columns.of(replace(coarse, log_prior=np.log(weights), noise_hu=sigma), _NumpyOps)
            total = sum(pool.map(lambda start: responsibilities(start, current).astype(np.float64), starts))
            weights = (1 - model.prior.floor) * total / len(scaled) + model.prior.floor * flat
            weights /= weights.sum()
    full = weights[parent] / children[parent]
    return replace(model, log_prior=np.log(full / full.sum()), noise_hu=sigma)


def fitted_model(sample: np.ndarray, aif: np.ndarray, dt_s: float, spanning: Optional[np.ndarray] = None,
                 prior: BayesPrior = BayesPrior(), seed: int = 0) -> BayesModel:
    """The model of one series: its model curves for the AIF (n_frames,) [HU] every ``dt_s`` s, in the subspace of
    ``spanning`` (:func:`curve_subspace`), with the empirical prior and noise of ``sample`` (n, n_frames) [HU], a
    sample of its tissue curves."""
    model = build_model(aif, dt_s, curve_subspace(len(np.ravel(aif)), spanning), prior)
    return fit_prior(sample, model, seed=seed)


def _summaries(scaled, columns: _Columns, ops=_NumpyOps) -> Tuple[np.ndarray, ...]:
    """Posterior mean and SD of the flow of the maps, max_t F.R_eff(t) [1/s], and of Tmax [s] (four (n,) float32
    numpy arrays) of curves given as scaled coordinates (:func:`_weights`). Given a column, the flow is taken as
    Gaussian, mean P / |model curve| and variance (sigma / |model curve|)^2 (times max R_eff^2)."""
    w, p = _weights(scaled, columns, ops)
    sums = [w.sum(1)] + [ops.row_sums(w, column) for column in columns.moments]
    w *= p
    sums.append(ops.row_sums(w, columns.flow_per_scaled))
    w *= p
    sums.append(ops.row_sums(w, columns.flow_per_scaled * columns.flow_per_scaled))
    total, tmax, tmax2, variance, flow, flow2 = (ops.numpy(x).astype(np.float64) for x in sums)
    mean_f, mean_t = flow / total, tmax / total
    sd_f = np.sqrt(np.maximum((flow2 + variance) / total - mean_f ** 2, 0.0))
    sd_t = np.sqrt(np.maximum(tmax2 / total - mean_t ** 2, 0.0))
    return tuple(x.astype(np.float32) for x in (mean_f, sd_f, mean_t, sd_t))


def posterior(curves: np.ndarray, model: BayesModel, chunk_voxels: int = CHUNK_VOXELS,
              device: Optional[str] = None) -> Posterior:
    """Posterior summaries of every curve (n, n_frames) [HU], chunk by chunk. ``model`` must carry a noise SD
    (:func:`fit_prior`). device None: numpy on every usable core (each chunk's result is the same whichever thread
    computes it); 'cpu', 'cuda' or 'auto': torch on that device, one chunk after another.

    Each curve's delay window is centred on the coarse grid's best delay by P'^2 + log prior (the 1/P' factor
    left out: it moves the choice by under a coarse step). The means and SDs are those of the posterior within
    that window (+-``window_s``): mass at delays further away is left out, so where the data leave the delay open
    (noise-only curves, deep core) the Tmax SD is at most about the window's."""
    if model.noise_hu is None:
        raise ValueError("the model has no noise estimate: run fit_prior first")
    ops = _NumpyOps if device is None else _TorchOps(device)
    prior, g = model.prior, model.grid
    coarse_model = model.columns(_coarse_grid(model)[0])
    coarse = _Columns.of(coarse_model, ops)
    windows = {int(round(d / prior.delay_step_s)): _Columns.of(model.columns(np.flatnonzero(
        np.abs(g.delay_s - d) <= prior.window_s + 1e-9)), ops) for d in np.unique(coarse_model.grid.delay_s)}
    basis = ops.array(model.basis)
    n = len(curves)
    out = [np.empty(n, np.float32) for _ in range(4)]

    def one_chunk(start: int) -> None:
        stop = min(start + chunk_voxels, n)
        scaled = _scaled(ops.array(curves[start:stop]) @ basis, model.noise_hu)
        best = np.empty(stop - start, np.int64)
        for row in range(0, stop - start, SEARCH_ROWS):  # blocks that stay in the CPU cache
            p = ops.clamp_min_(scaled[row:row + SEARCH_ROWS] @ coarse.unit, 0.0)
            p *= p
            p += coarse.log_prior
            best[row:row + SEARCH_ROWS] = ops.numpy(p.argmax(1))
        first = np.round(coarse_model.grid.delay_s[best] / prior.delay_step_s).astype(int)
        for d in np.unique(first):
            rows = np.flatnonzero(first == d)
            for o, v in zip(out, _summaries(scaled[ops.rows(rows)], windows[int(d)], ops)):
                o[start + rows] = v

    starts = range(0, n, chunk_voxels)
    workers = max(1, min(usable_cores(), len(starts))) if device is None else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one_chunk, starts))
    return Posterior(*out)
