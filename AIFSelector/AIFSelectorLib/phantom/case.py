"""The digital CT perfusion phantom: a head with known perfusion maps, vessels, an MCA-territory
lesion (or, with ``lesion_variety=True``, 1-3 lesions of random territory, side, size and shape), and
DWI / NCCT / T1 look-alikes of the same lesion.

    case = make_phantom(seed=3)          # ISLES-like: 8 x 256 x 256, 48 frames at 1 s, noise 5 HU
    write_phantom(case, "phantom_003")   # the phantom folder (see write_phantom)

Physiology (the tissue table below): per-voxel CBF, MTT, dispersion and delay vary smoothly
within the tissue table (grey/white matter, penumbra, core); tissue enhancement in HU is
C_t(t) = rho/kH * CBF/6000 * (AIF_enh (x) h_disp (x) R)(t - delay), computed on a 0.1 s grid
(:mod:`phantom_curves`) so that CBV = kH/rho * int C_t / int AIF * 100 holds and sub-frame delays are
real. The truth maps are defined on ``tissue_mask`` (parenchyma untouched by vessels; zero elsewhere);
the true core and penumbra are the decision rule of :mod:`perfusion_maps` applied to the true maps, and
the lesion is built so that the rule and the tissue classes agree with a margin: core rCBF <= 0.28,
penumbra rCBF >= 0.5, both true Tmax >= 7 s, other tissue true Tmax <= 5 s.

Ranges drawn (per case, then per voxel through smooth random fields): grey matter CBF in a 12-wide
window inside 50-70, white matter a 3-wide window inside 20-25 (CBV and MTT inside the table, MTT a
multiple of 0.1 s); dispersion 0-1 s (per-case maximum 0.3-1) and delay 0-1 s in healthy tissue;
oligaemic rim CBF x0.8-0.95, MTT x1-1.15, delay 1-3 s (Tmax <= 5 s); penumbra CBF max(15, 0.5 x control
CBF)-35, CBV 3-5, MTT 8-14, dispersion 1-3 s, delay 2-8 s rising towards the core; core CBF 2.5-min(9,
0.28 x control), CBV 0.3-1.9, MTT 6-16, dispersion 1-3 s, delay 4-10 s. Residue shape per case:
exponential, gamma (shape 1.5-4) or box (edge blurred, SD 0.2-0.35 MTT). AIF: baseline 36-44 HU, peak
200-500 HU above it, arrival 5-12 s, gamma variate (alpha 2.5-4.5, rise 3.5-7 s), recirculation 15-35 %
(transport 12-18 s), steady-state plateau 5-12 % of the peak decaying over 40-80 s; VOF: the AIF delayed
4-7 s and dispersed 1.5-3 s (equal area). All draws are in ``params``.

Label codes: see :data:`phantom_anatomy.LABELS` (0 air, 1 scalp, 2 skull, 3 CSF, 4 grey matter,
5 white matter, 6 artery, 7 vein, 8 oligaemic rim, 9 penumbra, 10 core, 11 calcification).
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from scipy import ndimage

from AIFSelectorLib.phantom import curves as pc
from AIFSelectorLib.constants import K_H, TISSUE_DENSITY_G_PER_ML
from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.thresholds.decision import core_penumbra
from AIFSelectorLib.maps.perfusion_maps import relative_maps
from AIFSelectorLib.phantom.anatomy import (CALCIFICATION, CORE, CSF, GM, LABELS, OLIGAEMIA, PENUMBRA, SCALP, SKULL,
                              TISSUE_LABELS, WM, blur_inplane, make_anatomy, uniform01)
from AIFSelectorLib.io.volume_io import atomic_path, write_series_nifti, write_volume

TRUTH_FILES = ("cbf", "cbv", "mtt", "tmax", "ttp", "rcbf", "rcbv", "core", "penumbra", "brain_mask",
               "artery_mask", "vein_mask", "lesion")
"""truth/<name>.nii.gz of the phantom folder; labels and tissue_mask are written beside them."""

MTT_STEP_S = 0.1
"""True MTTs are multiples of this, so that curves are computed once per unique (MTT, dispersion)."""
DISPERSION_STEP_S = 0.25
TMAX_MARGIN_S = (5.0, 7.0)
"""Non-lesion tissue has true Tmax <= 5 s, penumbra and core >= 7 s (the rule's threshold is 6 s)."""
RCBF_MARGIN = (0.28, 0.5)
"""Core rCBF <= 0.28 and penumbra rCBF >= 0.5 (the rule's threshold is 0.38)."""

# tissue table: CBF ml/100g/min, CBV ml/100g, MTT s
GREY = dict(cbf=(50.0, 70.0), cbv=(4.0, 5.0), mtt=(4.0, 5.0))
WHITE = dict(cbf=(20.0, 25.0), cbv=(1.8, 2.5), mtt=(5.0, 6.0))
PENUMBRA_TABLE = dict(cbf=(15.0, 35.0), cbv=(3.0, 5.0), mtt=(8.0, 14.0), delay=(2.0, 8.0))
CORE_TABLE = dict(cbf=(2.5, 9.0), cbv=(0.3, 1.9), mtt=(6.0, 16.0), delay=(2.0, 10.0))


@dataclass
class PhantomCase:
    series: CTPSeries            # (t, z, y, x) float32 HU incl. baseline, noise, partial volume; times_s
    truth: Dict[str, np.ndarray]  # (z, y, x) maps and masks, see make_phantom
    aif_hu: np.ndarray           # (t,) true arterial curve, absolute HU (full-volume artery)
    vof_hu: np.ndarray           # (t,) true venous curve, absolute HU
    dwi: np.ndarray
    ncct: np.ndarray
    t1: np.ndarray
    params: dict                 # the random draws, JSON-serialisable


def _cbf_mtt(u_cbf, u_mtt, cbf_range, mtt_range, cbv_range):
    """CBF and MTT from uniform fields so that CBF, MTT and CBV = CBF*MTT/60 are all in range; MTT is
    quantised to MTT_STEP_S inside the feasible interval."""
    cbf = cbf_range[0] + (cbf_range[1] - cbf_range[0]) * u_cbf
    lo = np.maximum(mtt_range[0], 60.0 * cbv_range[0] / cbf)
    hi = np.maximum(np.minimum(mtt_range[1], 60.0 * cbv_range[1] / cbf), lo)
    mtt = lo + (hi - lo) * u_mtt
    q_lo, q_hi = np.ceil(lo / MTT_STEP_S - 1e-6), np.floor(hi / MTT_STEP_S + 1e-6)
    q = np.round(mtt / MTT_STEP_S)
    q = np.where(q_lo <= q_hi, np.clip(q, q_lo, q_hi), q)
    return cbf.astype(np.float64), q * MTT_STEP_S


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return round(float(x), 6)
    return x


def make_phantom(seed: int = 0, shape_zyx=(8, 256, 256), n_frames: int = 48, dt_s: float = 1.0,
                 spacing_mm=(0.9, 0.9, 6.0), noise_hu: float = 5.0, motion: bool = False,
                 frame_times_s: Optional[np.ndarray] = None, lesion_variety: bool = False,
                 head_rotation_max_deg: float = 8.0) -> PhantomCase:
    """A phantom case, deterministic per seed.

    shape_zyx: voxels (z, y, x); spacing_mm: (x, y, z) mm; frames at 0, dt_s, ... (n_frames of them), or
    at ``frame_times_s`` (irregular sampling allowed; n_frames and dt_s are then ignored). noise_hu: SD of
    the Gaussian CT noise per voxel and frame. motion: small random in-plane rigid motion per frame
    (the truth stays in the position of the first frame).

    head_rotation_max_deg: the in-plane head rotation params['anatomy']['head_rotation_deg'] is uniform in
    +/- this [deg]. Sign: a positive angle turns the head's left-right axis from +x towards +y, i.e. the head
    axis (x, y) = (1, 0) points along (cos a, sin a) in world mm; in a (y, x) array shown with row 0 at the
    top (y, posterior, downwards) that is clockwise.
    lesion_variety: False (default) gives the historical case, bit-identical for every seed: one
    MCA-territory lesion, head shift +/- 6 mm. True: 1-3 lesions of random vascular territory (MCA, ACA,
    PCA, deep/lacunar, now and then ICA = MCA + ACA), hemisphere, size (a few ml to most of a hemisphere) and irregular shape
    (:mod:`phantom_lesions`), a head shift up to 20 mm and a wider slab position, a chronic T1 look
    (CSF-like cavity in a gliotic rim) and NCCT darkening of 4-10 HU per lesion. Its draws come from a
    second generator ``default_rng([seed, 1])``; they are listed in params['lesions'] (one dict per lesion:
    site, side, volume_ml (core, on this grid), penumbra_volume_ml, centre_head_mm, nominal_core_volume_ml,
    core_radius_mm, n_blobs, blobs (offset_mm from the centre, core_radius_mm, relative_axes, yaw_deg of each
    ellipsoid of the union), lobulation, ragged_edge, penumbra_margin_mm, rim_margin_mm, ncct_darkening_hu,
    t1_cavity, t1_gliosis, t1_rim_fraction); the default case lists its one lesion there too (site, side,
    centre_head_mm, core_radius_mm, penumbra_margin_mm, rim_margin_mm, volume_ml) and keeps them in
    params['anatomy'] (lesion_side, lesion_centre_head_mm, core_radius_mm, penumbra_margin_mm,
    rim_margin_mm) and its params['ncct_lesion_darkening_hu'] (None in variety mode).

    truth: 'cbf' (ml/100g/min), 'cbv' (ml/100g), 'mtt' (s), 'tmax' (s), 'ttp' (s from the first frame),
    'rcbf', 'rcbv' (float32, zero outside tissue_mask); 'core', 'penumbra' (the decision rule on the true
    maps), 'brain_mask' (intracranial), 'artery_mask', 'vein_mask' (>= 50 % vessel), 'lesion' (the
    infarct core class, as DWI shows it), 'tissue_mask' (parenchyma with no vessel in the voxel, CSF
    out), all bool; 'labels' (uint8, codes in phantom_anatomy.LABELS)."""
    if frame_times_s is not None:
        times = np.asarray(frame_times_s, dtype=np.float64).ravel()
    else:
        if not dt_s > 0:
            raise InputError(f"the frame interval must be positive, got {dt_s} s")
        times = np.arange(int(n_frames), dtype=np.float64) * float(dt_s)
    if len(times) < 2 or np.any(np.diff(times) <= 0) or not np.all(np.isfinite(times)):
        raise InputError("phantom frame times must be finite and strictly increasing")
    shape_zyx = tuple(int(n) for n in shape_zyx)
    if len(shape_zyx) != 3 or min(shape_zyx) < 1 or min(shape_zyx[1:]) < 16:
        raise InputError(f"phantom shape must be (z, y, x) with at least 16 voxels in-plane, got {shape_zyx}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(f"phantom spacing must be three positive (x, y, z) mm, got {spacing_mm}")
    head_rotation_max_deg = float(head_rotation_max_deg)
    if not 0.0 <= head_rotation_max_deg <= 180.0:
        raise InputError(f"head_rotation_max_deg must be within 0-180 deg, got {head_rotation_max_deg}")
    rng = np.random.default_rng(seed)
    U = rng.uniform
    variety_rng = np.random.default_rng([int(seed), 1]) if lesion_variety else None

    anat = make_anatomy(rng, shape_zyx, spacing, head_rotation_max_deg=head_rotation_max_deg,
                        variety_rng=variety_rng)
    grid = anat.grid
    u_cbf, u_mtt, u_delay, u_beta, u_look = (uniform01(f) for f in anat.fields[:5])

    # ---- bolus: AIF, VOF, late-filling arteries
    bolus = dict(blood_baseline_hu=U(36, 44), aif_peak_hu=U(200, 500), arrival_s=U(5, 12),
                 rise_s=U(3.5, 7.0), alpha=U(2.5, 4.5), recirc_fraction=U(0.15, 0.35),
                 recirc_mean_s=U(12, 18), recirc_shape=U(6, 12), vof_delay_s=U(4, 7),
                 vof_dispersion_s=U(1.5, 3.0), late_delay_s=U(1.5, 3.5), late_dispersion_s=U(1.0, 2.5),
                 plateau_fraction=U(0.05, 0.12), plateau_decay_s=U(40, 80))
    t0 = float(times[0])
    rel = times - t0
    t_fine = pc.fine_grid(rel[-1] + 40.0)
    n_fine = len(t_fine)
    aif_f, vof_f, late_f, kernel_off = pc.bolus_input_functions(t_fine, bolus)
    bolus["aif_area_hu_s"] = float(aif_f.sum() * pc.FINE_DT_S)
    bolus["dose_factor"] = bolus["aif_area_hu_s"] / 3000.0
    blood0 = bolus["blood_baseline_hu"]
    aif_hu = (blood0 + pc.sample(aif_f, rel)).astype(np.float64)
    off_v = kernel_off * pc.FINE_DT_S
    vof_enh = pc.sample(vof_f, rel, off_v)
    late_enh = pc.sample(late_f, rel, off_v)
    vof_hu = blood0 + vof_enh

    # ---- physiology per tissue voxel (the tissue beneath partial-volume vessels included)
    residue = ["exponential", "gamma", "box"][int(rng.integers(3))]
    shape_param = {"exponential": 0.0, "gamma": U(1.5, 4.0), "box": U(0.2, 0.35)}[residue]
    grey_lo, white_lo = U(0, 8), U(0, 2)
    grey_cbf = (GREY["cbf"][0] + grey_lo, GREY["cbf"][0] + grey_lo + 12.0)
    white_cbf = (WHITE["cbf"][0] + white_lo, WHITE["cbf"][0] + white_lo + 3.0)
    beta_healthy_max, delay_healthy_max = U(0.3, 1.0), U(0.3, 1.0)
    rim_cbf_factor, rim_mtt_factor = U(0.8, 0.95), U(1.0, 1.15)
    base = anat.base_labels
    vessel_tot = anat.vessel_total
    tissue_any = np.isin(base, TISSUE_LABELS)
    tissue_mask = tissue_any & (vessel_tot <= 0)
    idx = np.flatnonzero(tissue_any)
    cls = anat.lesion_class.ravel()[idx]
    grey = anat.is_grey.ravel()[idx]
    uc, um, ud, ub = (f.ravel()[idx].astype(np.float64) for f in (u_cbf, u_mtt, u_delay, u_beta))
    depth = anat.lesion_depth.ravel()[idx].astype(np.float64)
    cbf = np.zeros(len(idx))
    mtt = np.zeros(len(idx))
    for is_g, table, cbf_rng in ((True, GREY, grey_cbf), (False, WHITE, white_cbf)):
        m = grey == is_g
        cbf[m], mtt[m] = _cbf_mtt(uc[m], um[m], cbf_rng, table["mtt"], table["cbv"])
    beta = np.round(beta_healthy_max * ub / DISPERSION_STEP_S) * DISPERSION_STEP_S
    delay = delay_healthy_max * ud
    rim = cls == 1
    cbf[rim] *= rim_cbf_factor
    mtt[rim] = np.round(mtt[rim] * rim_mtt_factor / MTT_STEP_S) * MTT_STEP_S
    delay[rim] = 1.0 + 2.0 * ud[rim]
    control = tissue_mask.ravel()[idx] & (cls <= 1)
    ref_cbf = float(cbf[control].mean()) if control.any() else float(np.mean(grey_cbf))
    pen_cbf = (max(PENUMBRA_TABLE["cbf"][0], RCBF_MARGIN[1] * ref_cbf), PENUMBRA_TABLE["cbf"][1])
    core_cbf = (CORE_TABLE["cbf"][0], min(CORE_TABLE["cbf"][1], RCBF_MARGIN[0] * ref_cbf))
    pen, core = cls == 2, cls == 3
    cbf[pen], mtt[pen] = _cbf_mtt(uc[pen], um[pen], pen_cbf, PENUMBRA_TABLE["mtt"], PENUMBRA_TABLE["cbv"])
    cbf[core], mtt[core] = _cbf_mtt(uc[core], um[core], core_cbf, CORE_TABLE["mtt"], CORE_TABLE["cbv"])
    lesion = pen | core
    beta[lesion] = np.round((1.0 + 2.0 * ub[lesion]) / DISPERSION_STEP_S) * DISPERSION_STEP_S
    delay[pen] = 2.0 + 6.0 * np.clip(0.6 * depth[pen] / max(depth[pen].max(initial=0), 1e-6) + 0.4 * ud[pen], 0, 1)
    delay[core] = 4.0 + 6.0 * ud[core]

    # ---- response tables per unique (MTT, dispersion); delays then set the true Tmax with a margin
    scalp_row = (10.0, 1.0)  # scalp and muscle: one slow, weakly perfused curve
    for _ in range(4):
        pairs = np.concatenate([np.stack([mtt, beta], 1), [scalp_row]])
        key = np.round(pairs / [MTT_STEP_S, DISPERSION_STEP_S]).astype(np.int64)
        u_key, first, combo = np.unique(key[:, 0] * 1000 + key[:, 1], return_index=True, return_inverse=True)
        G, off, tmax_off, ttp_off = pc.tissue_tables(aif_f, pairs[first, 0], pairs[first, 1], residue, shape_param)
        c = combo[:-1]
        bad = ~lesion & (tmax_off[c] > TMAX_MARGIN_S[0])
        if not bad.any():
            break
        beta[bad] = np.maximum(beta[bad] - 2 * DISPERSION_STEP_S, 0.0)  # a residue too flat for its place
    delay[~lesion] = np.clip(np.minimum(delay[~lesion], TMAX_MARGIN_S[0] - tmax_off[c[~lesion]]), 0.0, None)
    delay[lesion] = np.maximum(delay[lesion], TMAX_MARGIN_S[1] - tmax_off[c[lesion]])
    tmax = delay + tmax_off[c]
    ttp = delay + ttp_off[c]
    cbv = cbf * mtt / 60.0

    # ---- truth maps (defined on tissue_mask) and the decision rule
    def volume(values, mask=tissue_mask):
        out = np.zeros(grid.shape_zyx, np.float32)
        out.ravel()[idx] = values
        out[~mask] = 0
        return out
    truth = {"cbf": volume(cbf), "cbv": volume(cbv), "mtt": volume(mtt), "tmax": volume(tmax), "ttp": volume(ttp)}
    refs = relative_maps(truth, tissue_mask)
    truth["core"], truth["penumbra"] = core_penumbra(truth["rcbf"], truth["tmax"], tissue_mask)
    labels = anat.labels
    truth.update(brain_mask=anat.brain_mask.copy(),
                 artery_mask=(anat.vessel["artery"] + anat.vessel["artery_late"]) >= 0.5,
                 vein_mask=anat.vessel["vein"] >= 0.5, lesion=labels == CORE, tissue_mask=tissue_mask, labels=labels)

    # ---- look-alike images (before any frame-count dependent draw, so they do not depend on the times)
    ncct_dark = U(2, 6)
    dwi_ratio = U(1.8, 3.0)
    static = anat.static_hu.copy()
    static = (1.0 - vessel_tot) * static + vessel_tot * blood0
    static = blur_inplane(static, 0.5).astype(np.float32)
    if lesion_variety:
        dwi, ncct, t1 = _look_alikes(rng, anat, static, u_look, _per_lesion(anat, "ncct_darkening_hu"), dwi_ratio,
                                     noise_hu, _chronic_t1(anat))
    else:
        dwi, ncct, t1 = _look_alikes(rng, anat, static, u_look, ncct_dark, dwi_ratio, noise_hu)

    # ---- the dynamic series
    scale_v = (TISSUE_DENSITY_G_PER_ML / K_H) * cbf / 6000.0
    row = c.astype(np.int64) * (n_fine + 1)
    base_pos = 1.0 - (off[c] + delay) / pc.FINE_DT_S
    gp = np.concatenate([np.zeros((len(G), 1)), G], axis=1).astype(np.float32).ravel()
    weight_t = (scale_v * (1.0 - vessel_tot.ravel()[idx])).astype(np.float32)
    scalp_idx = np.flatnonzero(base == SCALP)
    scalp_curve = (TISSUE_DENSITY_G_PER_ML / K_H) * 4.0 / 6000.0 * pc.sample(G[combo[-1]], rel, off[combo[-1]])
    vidx = np.flatnonzero(vessel_tot > 0)
    fa, fl, fv = (anat.vessel[k].ravel()[vidx] for k in ("artery", "artery_late", "vein"))
    aif_enh = aif_hu - blood0
    data = np.empty((len(times),) + grid.shape_zyx, np.float32)
    for i, tau in enumerate(rel):
        frame = data[i]
        frame[...] = static
        flat = frame.reshape(-1)
        pos = np.clip(base_pos + tau / pc.FINE_DT_S, 0.0, n_fine - 1e-3)
        i0 = pos.astype(np.int64)
        w = (pos - i0).astype(np.float32)
        lo = gp[row + i0]
        val = lo + w * (gp[row + i0 + 1] - lo)
        flat[idx] += weight_t * val
        flat[scalp_idx] += np.float32(scalp_curve[i])
        flat[vidx] += fa * np.float32(aif_enh[i]) + fl * np.float32(late_enh[i]) + fv * np.float32(vof_enh[i])
    motion_params = _apply_motion(rng, data) if motion else []
    if noise_hu > 0:
        for i in range(len(times)):
            data[i] += rng.standard_normal(grid.shape_zyx, dtype=np.float32) * np.float32(noise_hu)

    geometry = VolumeGeometry(spacing_mm=spacing, origin_mm=grid.origin_xyz)
    series = CTPSeries(data, times, geometry)
    params = dict(
        seed=seed, shape_zyx=list(shape_zyx), spacing_mm_xyz=list(spacing), n_frames=len(times),
        times_s=times.tolist(), uniform=bool(series.is_uniform), noise_hu=float(noise_hu), motion=bool(motion),
        motion_per_frame=motion_params, fine_dt_s=pc.FINE_DT_S, k_h=K_H, density_g_per_ml=TISSUE_DENSITY_G_PER_ML,
        bolus=bolus, residue_shape=residue, residue_shape_param=shape_param,
        dispersion_healthy_max_s=beta_healthy_max, delay_healthy_max_s=delay_healthy_max,
        dispersion_lesion_s=[1.0, 3.0], grey_cbf_range=list(grey_cbf), white_cbf_range=list(white_cbf),
        penumbra_cbf_range=list(pen_cbf), core_cbf_range=list(core_cbf), rim_cbf_factor=rim_cbf_factor,
        rim_mtt_factor=rim_mtt_factor, control_cbf=refs["cbf_control"], control_cbv=refs["cbv_control"],
        ncct_lesion_darkening_hu=None if lesion_variety else ncct_dark, dwi_lesion_ratio=dwi_ratio, labels=LABELS,
        tissue_ranges=dict(grey=GREY, white=WHITE, penumbra=PENUMBRA_TABLE, core=CORE_TABLE),
        volumes_ml={k: float(truth[k].sum()) * geometry.voxel_volume_ml for k in ("core", "penumbra", "lesion")},
        anatomy=anat.params, lesion_variety=bool(lesion_variety), head_rotation_max_deg=head_rotation_max_deg,
        lesions=anat.lesions)
    return PhantomCase(series=series, truth=truth, aif_hu=aif_hu, vof_hu=vof_hu, dwi=dwi, ncct=ncct, t1=t1,
                       params=_jsonable(params))


def _per_lesion(anat, key: str) -> np.ndarray:
    """(z, y, x) float32: the lesion's params value ``key`` in each core voxel, 0 elsewhere."""
    lut = np.zeros(len(anat.lesions) + 1, np.float32)
    lut[1:] = [les[key] for les in anat.lesions]
    return lut[anat.core_index]


def _chronic_t1(anat) -> np.ndarray:
    """(z, y, x) float32 T1 look-alike intensity of chronic infarcts (variety mode): the lesion's CSF-like
    cavity value deep in the core, rising through a gliotic rim (t1_rim_fraction of the way in from the
    core's edge) to its gliosis value at the edge; extended just beyond the cores (normalised in-plane
    blur), where the look-alike's blurred lesion weight still reaches."""
    cavity, gliosis = _per_lesion(anat, "t1_cavity"), _per_lesion(anat, "t1_gliosis")
    rim = np.maximum(_per_lesion(anat, "t1_rim_fraction"), 1e-3)
    inner = np.clip(anat.core_depth / rim, 0.0, 1.0)
    core = (anat.core_index > 0).astype(np.float32)
    value = core * (gliosis + (cavity - gliosis) * inner)
    return (blur_inplane(value, 0.8) / np.maximum(blur_inplane(core, 0.8), 1e-6)).astype(np.float32)


def _look_alikes(rng, anat, static_hu, u_look, ncct_dark, dwi_ratio, noise_hu, t1_lesion=None):
    """DWI (acute infarct bright), NCCT (infarct a few HU darker), T1 (chronic-looking dark lesion) on the
    phantom grid: label intensities, partial volume with vessels, blur, noise (Rician for the MR ones).
    ncct_dark: one darkening [HU] for every core, or a (z, y, x) map of it per core voxel; t1_lesion: None
    (every core at 50) or a (z, y, x) map of the chronic T1 lesion intensity."""
    base = anat.base_labels
    core = (base == CORE).astype(np.float32)
    look = 0.75 + 0.5 * u_look
    w_les = blur_inplane(core, 0.8) * look
    tissue_of = np.where(anat.is_grey, GM, WM)
    under = np.where(np.isin(base, (OLIGAEMIA, PENUMBRA, CORE)), tissue_of, base)
    vt = anat.vessel_total

    def mr(values: dict, vessel_value, lesion_value, sigma_vox, noise_sd):
        lut = np.zeros(len(LABELS), np.float32)
        for k, v in values.items():
            lut[k] = v
        img = lut[under]
        img = (1 - w_les) * img + w_les * lesion_value(img)
        img = (1 - vt) * img + vt * vessel_value
        img = blur_inplane(img.astype(np.float32), sigma_vox)
        n1 = rng.standard_normal(img.shape, dtype=np.float32) * noise_sd
        n2 = rng.standard_normal(img.shape, dtype=np.float32) * noise_sd
        return np.sqrt((img + n1) ** 2 + n2 ** 2).astype(np.float32)

    dwi = mr({SCALP: 60, SKULL: 10, CSF: 25, GM: 130, WM: 110, CALCIFICATION: 15}, 30.0,
             lambda img: img * dwi_ratio, 1.0, 4.0)
    t1 = mr({SCALP: 150, SKULL: 25, CSF: 40, GM: 85, WM: 120, CALCIFICATION: 30}, 70.0,
            (lambda img: np.full_like(img, 50.0)) if t1_lesion is None else (lambda img: t1_lesion), 0.7, 3.0)
    if np.ndim(ncct_dark) == 0:
        ncct = static_hu - ncct_dark * w_les
    else:
        ncct = static_hu - blur_inplane(ncct_dark, 0.8) * look
    if noise_hu > 0:
        ncct = ncct + rng.standard_normal(ncct.shape, dtype=np.float32) * np.float32(0.8 * noise_hu)
    return dwi, ncct.astype(np.float32), t1


def _apply_motion(rng, data: np.ndarray) -> list:
    """Random in-plane rigid motion per frame (a drifting random walk with occasional jerks, up to about
    2 voxels and 1.5 degrees; the first frame stays in place). Returns [dx_vox, dy_vox, angle_deg] per frame."""
    n, nz, ny, nx = data.shape
    steps = rng.normal(0, 0.15, size=(n, 3)) * [1, 1, 0.4]
    jerks = (rng.random(n) < 0.06)[:, None] * rng.normal(0, 0.8, size=(n, 3)) * [1, 1, 0.6]
    walk = np.cumsum(steps + jerks, axis=0)
    walk -= walk[0]
    walk[:, :2] = np.clip(walk[:, :2], -2.0, 2.0)
    walk[:, 2] = np.clip(walk[:, 2], -1.5, 1.5)
    centre = np.array([(ny - 1) / 2.0, (nx - 1) / 2.0])
    for i in range(1, n):
        dx, dy, ang = walk[i]
        c, s = np.cos(np.radians(ang)), np.sin(np.radians(ang))
        rot = np.array([[c, -s], [s, c]])           # (y, x) output -> input
        offset = centre - rot @ centre - np.array([dy, dx])
        for k in range(nz):
            data[i, k] = ndimage.affine_transform(data[i, k], rot, offset=offset, order=1, mode="nearest")
    return [[round(float(v), 4) for v in w] for w in walk]


def write_phantom(case: PhantomCase, out_dir) -> Path:
    """Writes the phantom folder: ctp.nii.gz (4D HU; irregular frame times are resampled to a
    uniform grid, see params.json 'ctp_file'), dwi/ncct/t1.nii.gz, truth/<map or mask>.nii.gz (plus
    labels and tissue_mask), truth/aif.csv (time_s,aif_hu,vof_hu at the case's frame times) and
    truth/params.json. Every file is written atomically."""
    from AIFSelectorLib.io.aif_csv import write_aif_csv
    from AIFSelectorLib.io.time_grid import resample_uniform

    out = Path(out_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    geometry = case.series.geometry
    series = case.series
    params = dict(case.params)
    if not series.is_uniform:
        series = resample_uniform(series)
        params["ctp_file"] = dict(note="frame times were irregular: ctp.nii.gz is linearly resampled in time",
                                  t0_s=float(series.times_s[0]), dt_s=float(series.dt_s), n_frames=series.n_frames)
    write_series_nifti(out / "ctp.nii.gz", series)
    for name in ("dwi", "ncct", "t1"):
        write_volume(out / f"{name}.nii.gz", getattr(case, name), geometry)
    for name in TRUTH_FILES + ("labels", "tissue_mask"):
        write_volume(out / "truth" / f"{name}.nii.gz", case.truth[name], geometry)
    write_aif_csv(out / "truth" / "aif.csv", case.series.times_s, case.aif_hu, case.vof_hu)
    with atomic_path(out / "truth" / "params.json") as tmp:
        tmp.write_text(json.dumps(_jsonable(params), indent=1))
    return out
