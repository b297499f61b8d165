"""AIFNet inference: shipped weights -> AIF and VOF with their probability volumes.

Weights: ``Resources/models/aifnet_aif.pt`` and ``aifnet_vof.pt``, loaded through :mod:`model_weights`
(sha256 checked against the manifest before ``torch.load(..., weights_only=True)``); on the CPU, their ONNX
exports ``aifnet_aif.onnx`` and ``aifnet_vof.onnx`` run by onnxruntime when it is installed (``networks.py``:
the same logits within float32 rounding, without importing torch).

Missing, corrupted or unreadable weights raise :class:`WeightsError` (an :class:`InputError`); the
pipeline catches it and falls back to the classic selector with a warning in the report.

VOF recalibration (AIFNet paper): the Pvol-weighted VOF is smoothed by the averaging, so its enhancement
is rescaled so that its peak equals the maximum of the Pvol-weighted peak-to-baseline (PTB) volume,
max_v (Pvol(v) / max Pvol) * PTB(v). Only the enhancement is rescaled. The VOF's absolute level (its
pre-contrast HU) is the pre-contrast HU of the VOF_BASELINE_VOXELS voxels that score highest on that
product (blood, about 40 HU), not the baseline of the weighted sum, which a spread-out Pvol mixes with air,
bone and tissue (the VOF read -461 HU on the demo phantom). The selection policy then puts the AIF on that
blood level too (input_functions.policy.on_blood_level). The maps use only the enhancement.
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from AIFSelectorLib.input_functions.aifnet.config import AIFNetConfig, network_frames
from AIFSelectorLib.input_functions.aifnet.networks import as_network, load_networks
from AIFSelectorLib.ctp_series import CTPSeries
from AIFSelectorLib.input_functions.functions import InputFunctions
from AIFSelectorLib.models.device import release_freed_memory
from AIFSelectorLib.models.weights import WeightsError
from AIFSelectorLib.prepare.preprocessing import block_factors, block_sums, bounding_box, slabs

KINDS = ("aif", "vof")


NETWORK_MEMORY_FRACTION = 0.4
"""The networks' working memory (their input, its normalisation and two layers' activations, float32) is kept
under this fraction of the series' own bytes, by running them on tiles of the network's grid: z-slabs with a
halo of the receptive radius, split into rows with their own halo where a slab alone would exceed it. So the
peak memory of AIFNet scales with the input (the demo phantom's 100 MB float32 series: 40 MB of network memory;
a 4.2 GB whole brain: 1.7 GB). Measured on the demo `run` (six runs each, 2-core machine): 0.5 gave peaks of
3.4-4.0x the input, 0.4 gives 3.2-3.4x for ~0.1 s more in AIFNet (smaller tiles, more halo)."""
MIN_TILE_VOXELS = 1 << 16
"""Network-grid voxels of a tile, at least (tiles much smaller spend most of their work on halos)."""


def network_bytes_per_voxel(config: AIFNetConfig) -> int:
    """float32 bytes per network-grid voxel while a network runs: its input frames, their normalisation, and
    the widest layer's input and output."""
    return 4 * (2 * config.n_frames + 2 * max(config.widths))


TRAINED_SPACING_MM = 0.9
"""The finest in-plane voxel size [mm] of the shipped networks' training data. A finer series (e.g. a
512x512 matrix at 0.45 mm) is block-averaged in-plane by round(0.9 mm / spacing) before the network sees it,
so that vessels have the size in voxels the network learned; Pvol is then spread evenly over each block."""


def pool_factors(spacing_mm) -> Tuple[int, int]:
    """In-plane block-averaging factors (fy, fx) that bring a series' voxels (x, y, z spacing in mm) close to
    :data:`TRAINED_SPACING_MM` (1 when the voxels are already that large or larger)."""
    return block_factors(spacing_mm, TRAINED_SPACING_MM)


def _block_mean(data: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """(..., y, x) -> (..., ceil(y/fy), ceil(x/fx)) float32 means over fy x fx blocks (edge blocks padded by
    replicating the last row/column)."""
    if fy == fx == 1:
        return data
    out = block_sums(data, fy, fx, pad="edge")
    out *= np.float32(1.0 / (fy * fx))
    return out


def z_halo(model) -> int:
    """Slices of context each side that the network's output at one slice depends on (its z receptive
    radius; a torch AIFNet or a network of networks.py)."""
    return as_network(model).radii_zyx[0]


HEAD_HU = -500.0
"""First-frame HU above which a voxel belongs to the head (air reads about -1000 HU, fat, the lightest tissue,
about -100 HU)."""
HEAD_MARGIN = 8
"""Blocks of air kept each side of the head, at least (more when a network's receptive radius is larger; the
shipped ones' is 5): the same window for every network whose radius is within it, so a network run beside
another gives the same logits as run alone."""


def head_window(series: CTPSeries, factors: Tuple[int, int], margin: Tuple[int, int]) -> Tuple[slice, slice]:
    """In-plane rows and columns of the network's grid (the series pooled by ``factors``) that the networks
    run on: every block holding a head voxel (first frame above HEAD_HU, any slice), plus ``margin`` (y, x)
    blocks of air each side (the networks' in-plane receptive radius), so that every head voxel gets the logit
    of a whole-field pass. Air beyond that holds no vessel: its logits are not computed. The whole field when
    no voxel reads as head."""
    fy, fx = factors
    cy, cx = -(-series.shape_zyx[1] // fy), -(-series.shape_zyx[2] // fx)
    box = bounding_box((np.asarray(series.data[0]) > HEAD_HU).any(axis=0))
    if box is None:
        return slice(0, cy), slice(0, cx)
    rows, cols = box
    return (slice(max(0, rows.start // fy - margin[0]), min(cy, (rows.stop - 1) // fy + 1 + margin[0])),
            slice(max(0, cols.start // fx - margin[1]), min(cx, (cols.stop - 1) // fx + 1 + margin[1])))


def network_input(data_tzyx: np.ndarray, times_s: np.ndarray, config: AIFNetConfig,
                  factors: Tuple[int, int]) -> np.ndarray:
    """The frames (n_frames, z, ceil(y/fy), ceil(x/fx)) float32 a network sees: the series block-averaged
    in-plane by ``factors`` (:data:`TRAINED_SPACING_MM`), then on the network's time grid
    (:func:`network_frames`). Averaging first (both steps are linear, so the order does not change the
    result beyond rounding) interpolates 4 times fewer voxels on a 512 matrix."""
    return network_frames(_block_mean(data_tzyx, *factors), times_s, config.n_frames, config.dt_s)


def predict_logits(models: Sequence, series: CTPSeries, device="cpu", max_voxels: Optional[int] = None,
                   factors: Tuple[int, int] = (1, 1)) -> List[np.ndarray]:
    """Each network's voxel logits, (z, ceil(y/fy), ceil(x/fx)) float32 on the series block-averaged in-plane
    by ``factors``: -inf (probability 0) in the air outside :func:`head_window`, and in it computed tile by
    tile (z-slabs, split into rows when needed) with halos of the networks' receptive radii, so the head's
    logits equal one whole-window pass (within float32 rounding) while memory stays bounded: tiles of at most
    ``max_voxels`` network-grid voxels with their halos (default: :data:`NETWORK_MEMORY_FRACTION` of the series'
    bytes). ``models``: torch AIFNets (run on ``device``) or networks of networks.py. Networks that see the same
    frames share each tile's input (the AIF and VOF networks do)."""
    models = [as_network(m, device) for m in models]
    fy, fx = factors
    nz, ny, nx = series.shape_zyx
    ys, xs = head_window(series, factors,
                         tuple(max([HEAD_MARGIN] + [m.radii_zyx[a] for m in models]) for a in (1, 2)))
    cols = slice(xs.start * fx, min(nx, xs.stop * fx))
    if max_voxels is None:
        per_voxel = max(network_bytes_per_voxel(m.config) for m in models)
        max_voxels = max(MIN_TILE_VOXELS, int(NETWORK_MEMORY_FRACTION * series.data.nbytes / per_voxel))
    hz, hy = max(m.radii_zyx[0] for m in models), max(m.radii_zyx[1] for m in models)
    width, height = xs.stop - xs.start, ys.stop - ys.start
    step_z = min(nz, max(1, max_voxels // (height * width)))
    if step_z < nz and step_z < 4 * hz:  # thin slabs would be mostly halo: deeper slabs, split into rows
        step_z = min(nz, 4 * hz)
    depth = min(nz, step_z + 2 * hz)
    step_y = height if depth * height * width <= max_voxels else \
        min(height, max(1, 4 * hy, max_voxels // (depth * width) - 2 * hy))
    out = [np.full((nz, -(-ny // fy), -(-nx // fx)), -np.inf, np.float32) for _ in models]
    groups = {}  # networks that see the same frames share one input
    for i, model in enumerate(models):
        groups.setdefault((model.config.n_frames, model.config.dt_s), []).append(i)
    for z0 in range(0, nz, step_z):
        z1 = min(nz, z0 + step_z)
        a, b = max(0, z0 - hz), min(nz, z1 + hz)
        for y0 in range(ys.start, ys.stop, step_y):  # rows of the window; the halo stays inside it
            y1 = min(ys.stop, y0 + step_y)
            c, d = max(ys.start, y0 - hy), min(ys.stop, y1 + hy)
            rows = slice(c * fy, min(ny, d * fy))
            for members in groups.values():
                frames = network_input(series.data[:, a:b, rows, cols], series.times_s, models[members[0]].config,
                                       factors)
                for i in members:
                    out[i][z0:z1, y0:y1, xs] = models[i].logits_array(frames)[z0 - a: z1 - a, y0 - c: y1 - c]
                del frames
    return out


def pvol_from_logits(logits: np.ndarray, series: CTPSeries, factors: Tuple[int, int]) -> np.ndarray:
    """The probability volume (z, y, x) float32: the softmax over every voxel of the logits (on the pooled
    grid), each block's probability shared evenly by its voxels; sums to 1."""
    fy, fx = factors
    coarse = np.exp(logits.astype(np.float64) - float(np.max(logits)))  # the softmax over every voxel
    coarse /= coarse.sum()
    if fy == fx == 1:
        pvol = coarse
    else:
        ny, nx = series.shape_zyx[1:]
        pvol = np.repeat(np.repeat(coarse, fy, axis=1), fx, axis=2)[:, :ny, :nx]
        pvol = pvol / pvol.sum()  # edge blocks cut by the crop
    pvol = pvol.astype(np.float32)
    if not np.all(np.isfinite(pvol)):
        raise WeightsError("AIFNet produced a non-finite probability volume")
    return pvol


def predict_pvols(models: Sequence, series: CTPSeries, device="cpu",
                  max_voxels: Optional[int] = None) -> List[np.ndarray]:
    """The probability volume (z, y, x) float32 of each network on a whole series (on the series
    block-averaged to the trained voxel size, see :data:`TRAINED_SPACING_MM`)."""
    factors = pool_factors(series.geometry.spacing_mm)
    return [pvol_from_logits(lg, series, factors) for lg in predict_logits(models, series, device, max_voxels, factors)]


def predict_pvol(model, series: CTPSeries, device="cpu", max_voxels: Optional[int] = None) -> np.ndarray:
    """:func:`predict_pvols` of one network."""
    return predict_pvols([model], series, device, max_voxels)[0]


VOF_BASELINE_VOXELS = 16
"""Voxels (the highest Pvol x PTB) whose pre-contrast HU gives the recalibrated VOF its absolute level: a
few sinus voxels, so that 5 HU of noise averages to about 1 HU."""


def recalibrate_vof(vof_hu: np.ndarray, vof_pvol: np.ndarray, ptb_hu: np.ndarray, n_baseline: int,
                    series: Optional[CTPSeries] = None):
    """VOF rescaled to the maximum of the Pvol-weighted peak-to-baseline volume, on the pre-contrast level
    of the best-scoring voxels of ``series`` (see module doc; without a series, the weighted curve's own
    baseline). Returns (vof_hu (t,) HU, factor); factor 1 when the VOF has no positive enhancement."""
    vof_hu = np.asarray(vof_hu, np.float64)
    n0 = max(1, n_baseline)
    base = vof_hu[:n0].mean()
    enh = vof_hu - base
    peak = float(enh.max())
    score = (vof_pvol / max(float(vof_pvol.max()), 1e-30)) * ptb_hu
    target = float(np.max(score))
    if peak <= 0 or target <= 0:
        return vof_hu, 1.0
    if series is not None:
        base = pre_contrast_level(series, score, n0)
    factor = target / peak
    return base + factor * enh, factor


def pre_contrast_level(series: CTPSeries, score: np.ndarray, n_baseline: int) -> float:
    """Mean pre-contrast HU (first ``n_baseline`` frames) of the VOF_BASELINE_VOXELS voxels with the highest
    ``score`` (z, y, x): the absolute level of a Pvol-weighted curve, which a spread-out Pvol would mix
    with air and bone."""
    k = min(VOF_BASELINE_VOXELS, score.size)
    flat = score.ravel()
    # air outside the networks' window scores 0: selecting among its many equal zeros took numpy's partition
    # seconds on a whole brain, so the positive scores are searched when there are enough of them
    candidates = np.flatnonzero(flat > 0)
    if candidates.size < k:
        candidates = np.arange(flat.size)
    best = candidates[np.argpartition(flat[candidates], candidates.size - k)[candidates.size - k:]]
    n0 = max(1, n_baseline)
    return float(np.asarray(series.data[:n0]).reshape(n0, -1)[:, best].astype(np.float64).mean())


def peak_to_baseline(series: CTPSeries, n_baseline: int) -> np.ndarray:
    """(z, y, x) float32: every voxel's maximum minus its pre-contrast mean."""
    out = np.empty(series.shape_zyx, np.float32)
    for zs in slabs(series.shape_zyx):
        block = series.data[:, zs].astype(np.float32)
        out[zs] = block.max(axis=0) - block[:max(1, n_baseline)].mean(axis=0)
    return out


MIN_CONCENTRATION = 0.05
"""A Pvol whose most probable 1 % of voxels hold less than this fraction of the mass (5x a uniform Pvol)
is "diffuse": the network found no vessel it is confident about, and the curve is close to a whole-brain
average. (The VOF network trained with the Pearson loss spreads its Pvol over the sinus and its
surroundings: 9-20 % in the top 1 % is normal for it; a failure sits near 2 %.)"""


def concentration(pvol: np.ndarray, fraction: float = 0.01, min_voxels: int = 100) -> float:
    """Fraction of the probability mass on the most probable ``fraction`` of the voxels (at least
    ``min_voxels``)."""
    flat = pvol.ravel()
    k = min(max(min_voxels, int(fraction * flat.size)), flat.size)
    mass = flat[flat > 0]  # the zeros add nothing (and many equal zeros make numpy's partition slow)
    return float(mass.sum() if mass.size <= k else np.partition(mass, mass.size - k)[mass.size - k:].sum())


def select_aifnet(series: CTPSeries, device: Optional[str] = "auto", folder: Optional[Path] = None,
                  n_baseline: int = 3, peak_enh_hu: Optional[np.ndarray] = None,
                  classic: Optional[Callable[[], InputFunctions]] = None) -> InputFunctions:
    """AIF and VOF of a series by AIFNet. n_baseline: pre-contrast frames (the pipeline's bolus
    detection); peak_enh_hu: the PTB volume when already computed (z, y, x). classic: a callable giving the
    classic selector's functions, used (with a warning) for a function whose Pvol is diffuse
    (:data:`MIN_CONCENTRATION`); without it a diffuse Pvol only gives a warning."""
    networks, (aif_info, vof_info), dev = load_networks(device, folder)
    aif_pvol, vof_pvol = predict_pvols(networks, series, dev)  # one network after the other on each slab
    runtime = networks[0].runtime
    del networks  # their sessions, then the memory the runs freed, go back
    release_freed_memory()
    aif_hu, vof_raw = dense_weighted_curves(series, [aif_pvol, vof_pvol])
    ptb = peak_enh_hu if peak_enh_hu is not None else peak_to_baseline(series, n_baseline)
    vof_hu, factor = recalibrate_vof(vof_raw, vof_pvol, ptb, n_baseline, series)
    warnings = []
    conc = {"aif": concentration(aif_pvol), "vof": concentration(vof_pvol)}
    replaced = []
    for kind in ("aif", "vof"):
        if conc[kind] >= MIN_CONCENTRATION:
            continue
        note = (f"the AIFNet {kind.upper()} probability volume is diffuse (its most probable 1 % of voxels "
                f"hold {100 * conc[kind]:.1f} % of the mass)")
        alt = classic() if classic is not None else None
        alt_curve = None if alt is None else (alt.aif_hu if kind == "aif" else alt.vof_hu)
        if alt_curve is None:
            warnings.append(note + ": check the curve and the Pvol map")
            continue
        warnings.append(note + f": the classic selector's {kind.upper()} is used instead")
        replaced.append(kind)
        if kind == "aif":
            aif_hu, aif_pvol = alt.aif_hu, alt.aif_pvol
        else:
            vof_hu, vof_pvol, factor = alt.vof_hu, alt.vof_pvol, 1.0
    if float(np.max(aif_hu - aif_hu[:max(1, n_baseline)].mean())) < 20.0:
        warnings.append("the AIFNet AIF barely enhances (< 20 HU): check the series and the Pvol map")
    return InputFunctions(
        times_s=series.times_s.copy(), aif_hu=aif_hu, vof_hu=vof_hu, aif_pvol=aif_pvol, vof_pvol=vof_pvol,
        method="aifnet", warnings=warnings,
        details={"device": str(dev), "runtime": runtime, "vof_recalibration_factor": float(factor),
                 "pvol_concentration": conc, "replaced_by_classic": replaced,
                 "aif_pvol_max": float(aif_pvol.max()), "vof_pvol_max": float(vof_pvol.max()),
                 "models": {"aifnet_aif": _short(aif_info), "aifnet_vof": _short(vof_info)}})


def dense_weighted_curves(series: CTPSeries, pvols) -> List[np.ndarray]:
    """sum_v Pvol(v) CTP(t, v) (t,) HU for each Pvol of ``pvols``, as input_functions.weighted_curve, for softmax
    Pvols (no voxel selection), in one pass over the in-plane window where any of them is positive (the head:
    see :func:`predict_logits`). Summed in float64 by numpy's einsum loop (one thread, a fixed order), not by a
    BLAS product whose threads would change the order of the sum (and so the last bits)."""
    positive = np.zeros(series.shape_zyx[1:], bool)
    for p in pvols:
        positive |= (np.asarray(p) > 0).any(axis=0)
    window = bounding_box(positive)
    out = np.zeros((len(pvols), series.n_frames))
    if window is None:
        return list(out)
    for zs in slabs(series.shape_zyx, max_voxels=1 << 18):
        weights = np.stack([np.asarray(p[(zs,) + window], np.float64) for p in pvols])
        out += np.einsum("tzyx,kzyx->kt", series.data[(slice(None), zs) + window], weights)
    return list(out)


def dense_weighted_curve(series: CTPSeries, pvol: np.ndarray) -> np.ndarray:
    """:func:`dense_weighted_curves` of one Pvol."""
    return dense_weighted_curves(series, [pvol])[0]


def _short(info: Dict) -> Dict:
    return {k: info[k] for k in ("version", "file", "sha256", "graph", "graph_sha256") if k in info}
