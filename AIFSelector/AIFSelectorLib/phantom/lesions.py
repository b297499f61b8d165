"""Ischaemic lesions of the digital phantom: the default MCA-territory lesion and, for
``make_phantom(lesion_variety=True)``, 1-3 lesions of random vascular territory, hemisphere, size and shape.

Every lesion is a core inside a penumbra inside an oligaemic rim (nested by construction, so that the CTP
physics and the decision rule stay consistent), confined to grey and white matter of one territory.
Coordinates are head coordinates (xh, yh, zh) in mm as in :mod:`phantom_anatomy` (xh towards the patient's
left, yh posterior, zh superior); ``side`` +1 is the left hemisphere, -1 the right; a_b, b_b are the brain's
in-plane semi-axes [mm]; ``scale`` is the head's scale factor (1 for an adult head).

Territories (:func:`territory`, in-plane regions of one hemisphere, columns along z; in variety mode their
borders are displaced by smooth random fields of TERRITORY_JITTER_MM so that they are not straight lines):
  mca   the lateral convexity, sparing the medial strip (wider anteriorly) and the occipital pole
  aca   the medial strip of the frontal and parietal lobes
  pca   the occipital pole and the medial posterior strip
  deep  the lenticulostriate / thalamic region (basal ganglia, internal capsule, corona radiata):
        lacunes and striatocapsular infarcts
  ica   MCA and ACA together (carotid-T occlusion): the large, "malignant" infarcts of most of a hemisphere
"""
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

SITES = ("mca", "aca", "pca", "deep", "ica")
SITE_PROBABILITY = (0.42, 0.13, 0.2, 0.2, 0.05)
N_LESIONS_PROBABILITY = (0.6, 0.28, 0.12)
"""Probability of 1, 2 and 3 lesions in variety mode."""
CORE_VOLUME_ML = {"mca": (4.0, 600.0), "aca": (3.0, 80.0), "pca": (3.0, 120.0), "deep": (1.5, 15.0),
                  "ica": (150.0, 1000.0)}
"""Nominal core volume [ml] of an adult head, drawn log-uniformly; the core is then cut by its territory,
the tissue and the imaged slab, so the measured volume (``volume_ml``) is smaller for the big ones."""
PENUMBRA_MARGIN_MM = {"mca": (6.0, 28.0), "aca": (5.0, 20.0), "pca": (5.0, 20.0), "deep": (3.0, 10.0),
                      "ica": (6.0, 28.0)}
RIM_MARGIN_MM = (4.0, 10.0)
LOBULATION = ((0.1, 0.35), (0.05, 0.2))
"""Amplitude of the coarse shape field (cortical sites, deep site): the lesion's distance is multiplied by
max(1 + lobulation * f_coarse + ragged_edge * f_fine, 0.5), ragged_edge in 0-0.2 (fields clipped at 2.5 SD)."""
MIN_CORE_ML = 1.0
MAX_TRIES = 5
"""A lesion whose core, cut by its territory, the tissue and the slab, is under MIN_CORE_ML (adult-head ml)
is drawn again, at most MAX_TRIES times in all."""
TERRITORY_JITTER_MM = 6.0
"""Variety mode: territory borders move by up to 2.5 x this [mm, adult head] (smooth random fields)."""
NCCT_DARKENING_HU = (4.0, 10.0)
"""Visible infarct on NCCT within 24 h (AISD-like): a few HU darker than the tissue it replaces."""
T1_CAVITY = (35.0, 50.0)
T1_GLIOSIS = (55.0, 85.0)
"""Chronic T1 look-alike (CSF 40, GM 85, WM 120): a CSF-like cavity inside a gliotic rim of intermediate
intensity; ``t1_rim_fraction`` (0.1-0.7) is the rim's share of the distance from the core edge to its
centre (a thin rim: an ex-vacuo cavity; a thick one: mostly gliosis)."""


@dataclass
class Lesions:
    lesion_class: np.ndarray     # (z, y, x) uint8: 0 none, 1 oligaemic rim, 2 penumbra, 3 core
    lesion_depth: np.ndarray     # (z, y, x) float32: 0 at the penumbra's edge, 1 deep in it
    core_index: np.ndarray       # (z, y, x) uint8: 1 + index of the lesion whose core holds the voxel, else 0
    core_depth: np.ndarray       # (z, y, x) float32: 0 at a core's edge, 1 at its centre
    lesions: List[dict] = field(default_factory=list)  # one dict per lesion (JSON-serialisable)


def territory(site: str, side: int, xh: np.ndarray, yh: np.ndarray, a_b: float, b_b: float) -> np.ndarray:
    """Bool mask of the region of ``site`` in the hemisphere ``side``, the shape of xh, yh (head mm; (y, x)
    in-plane, or (z, y, x) where the borders are jittered per slice)."""
    lateral = side * xh
    if site == "mca":
        return (lateral > 0.2 * a_b * (1.0 + 0.6 * np.clip(-yh / b_b, 0, 1))) & (yh < 0.55 * b_b)
    if site == "ica":
        return territory("mca", side, xh, yh, a_b, b_b) | territory("aca", side, xh, yh, a_b, b_b)
    medial = (lateral > 0) & (lateral <= 0.2 * a_b * (1.0 + 0.6 * np.clip(-yh / b_b, 0, 1)))
    if site == "aca":
        return medial & (yh < 0.3 * b_b)
    if site == "pca":
        return (lateral > 0) & ((yh > 0.5 * b_b) | ((yh > 0.2 * b_b) & (lateral < 0.3 * a_b)))
    if site == "deep":
        return ((lateral - 0.28 * a_b) / (0.22 * a_b)) ** 2 + (yh / (0.38 * b_b)) ** 2 < 1.0
    raise ValueError(f"unknown lesion site {site!r}")


def mca_lesion(rng: np.random.Generator, xh, yh, zh, tissue, f_lesion, a_b, b_b, scale, side,
               voxel_ml: float) -> Lesions:
    """The default lesion: one MCA-territory core / penumbra / rim on the side ``side``. tissue (z, y, x)
    bool grey or white matter; f_lesion (z, y, x) a standard-normal smooth field (shape irregularity)."""
    U = rng.uniform
    z3 = zh[:, None, None]
    z_lo, z_hi = float(zh.min()), float(zh.max())
    H = max(z_hi - z_lo, 1e-3)
    r_core = (7.0 + 23.0 * U(0, 1) ** 1.5) * scale
    margin_pen, margin_rim = U(8, 28) * scale, U(4, 10) * scale
    cen = np.array([side * U(0.42, 0.6) * a_b, U(-0.2, 0.15) * b_b, 0.5 * (z_lo + z_hi) + U(-0.2, 0.2) * H])
    core_cen = cen + [-side * U(0, 4) * scale, U(-3, 3) * scale, U(-3, 3) * scale]
    elong = U(0.8, 1.3, size=3)

    def rho(centre, r):
        u = (xh[None] - centre[0]) / (r * elong[0])
        w = (yh[None] - centre[1]) / (r * elong[1])
        q = (z3 - centre[2]) / (r * elong[2])
        return np.sqrt(u * u + w * w + q * q) * (1.0 + 0.3 * np.clip(f_lesion, -2.5, 2.5))
    rho_c, rho_p = rho(core_cen, r_core), rho(cen, r_core + margin_pen)
    rho_r = rho(cen, r_core + margin_pen + margin_rim)
    inside = tissue & territory("mca", side, xh, yh, a_b, b_b)[None]
    lesion_class = np.zeros(tissue.shape, np.uint8)
    lesion_class[inside & (rho_r < 1)] = 1
    lesion_class[inside & (rho_p < 1)] = 2
    lesion_class[inside & (rho_c < 1)] = 3
    core = lesion_class == 3
    info = dict(site="mca", side="left" if side > 0 else "right", centre_head_mm=cen.tolist(),
                core_radius_mm=r_core, penumbra_margin_mm=margin_pen, rim_margin_mm=margin_rim,
                volume_ml=float(core.sum()) * voxel_ml)
    return Lesions(lesion_class=lesion_class, lesion_depth=np.clip(1.0 - rho_p, 0.0, 1.0).astype(np.float32),
                   core_index=core.astype(np.uint8), core_depth=np.clip(1.0 - rho_c, 0.0, 1.0).astype(np.float32),
                   lesions=[info])


def _blob_distance(xh, yh, zh, centre, axes, yaw_rad: float) -> np.ndarray:
    """(z, y, x) distance [mm] in the metric of an ellipsoid with relative semi-axes ``axes`` (x, y, z),
    rotated by ``yaw_rad`` about z."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    dx, dy = xh - centre[0], yh - centre[1]
    u = (c * dx + s * dy) / axes[0]
    w = (-s * dx + c * dy) / axes[1]
    q = (zh - centre[2]) / axes[2]
    return np.sqrt((u * u + w * w)[None] + (q * q)[:, None, None]).astype(np.float32)


def _draw_lesion(rng, xh, yh, zh, tissue, fields, a_b, b_b, scale, side):
    """One lesion of random site on ``side``: (inside (z, y, x) bool: tissue of its territory, rho_core,
    rho_penumbra, rho_rim (z, y, x): < 1 inside each, nested, info dict), or None if no territory of that
    side holds tissue in the slab. fields: (coarse, fine, jitter x, jitter y) (z, y, x) clipped fields."""
    shape = tissue.shape
    f_coarse, f_fine, jitter_x, jitter_y = fields
    xj = xh[None] + TERRITORY_JITTER_MM * scale * jitter_x
    yj = yh[None] + TERRITORY_JITTER_MM * scale * jitter_y
    hemisphere = tissue & (side * xh > 0)[None]          # the jittered borders never cross the midline
    for _ in range(2 * len(SITES)):
        site = SITES[int(rng.choice(len(SITES), p=SITE_PROBABILITY))]
        inside = hemisphere & territory(site, side, xj, yj, a_b, b_b)
        candidates = np.flatnonzero(inside)
        if candidates.size:
            break
    else:
        return None
    k, j, m = np.unravel_index(candidates[int(rng.integers(candidates.size))], shape)
    centre = np.array([xh[j, m], yh[j, m], zh[k]], dtype=np.float64)
    lo, hi = CORE_VOLUME_ML[site]
    nominal_ml = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    r_core = (3.0 * nominal_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0) * scale
    margin_pen = rng.uniform(*PENUMBRA_MARGIN_MM[site]) * scale
    margin_rim = rng.uniform(*RIM_MARGIN_MM) * scale
    n_blobs = 1 if site == "deep" else 1 + int(rng.integers(3))
    lobulation, ragged = rng.uniform(*LOBULATION[site == "deep"]), rng.uniform(0.0, 0.2)
    irregular = np.maximum(1.0 + lobulation * f_coarse + ragged * f_fine, 0.5)
    rho, blobs = None, []
    for b in range(n_blobs):
        off = np.zeros(3)
        r_b = r_core
        if b > 0:
            phi = rng.uniform(0, 2 * np.pi)
            off = r_core * rng.uniform(0.4, 0.9) * np.array([np.cos(phi), np.sin(phi), rng.uniform(-0.5, 0.5)])
            r_b = r_core * rng.uniform(0.45, 0.8)
        axes, yaw = rng.uniform(0.75, 1.35, size=3), rng.uniform(0, np.pi)
        d = _blob_distance(xh, yh, zh, centre + off, axes, yaw) * irregular
        parts = (d / r_b, d / (r_b + margin_pen), d / (r_b + margin_pen + margin_rim))
        rho = parts if rho is None else tuple(np.minimum(a, q) for a, q in zip(rho, parts))
        blobs.append(dict(offset_mm=off.tolist(), core_radius_mm=r_b, relative_axes=axes.tolist(),
                          yaw_deg=float(np.degrees(yaw))))
    info = dict(site=site, side="left" if side > 0 else "right", centre_head_mm=centre.tolist(),
                nominal_core_volume_ml=nominal_ml, core_radius_mm=r_core, n_blobs=n_blobs, blobs=blobs,
                lobulation=lobulation, ragged_edge=ragged, penumbra_margin_mm=margin_pen, rim_margin_mm=margin_rim)
    return (inside,) + rho + (info,)


def varied_lesions(rng: np.random.Generator, xh, yh, zh, tissue, fields, a_b, b_b, scale, first_side,
                   voxel_ml: float, n_lesions: Optional[int] = None) -> Lesions:
    """1-3 lesions (``n_lesions`` if given) of random site (:data:`SITES`), hemisphere (the first on
    ``first_side``, the hemisphere of the late-filling arteries), size and shape.

    Each lesion is centred on a random grey/white matter voxel of its territory inside the slab, so its core
    is never empty; a core under MIN_CORE_ML (adult-head ml, cut by the slab or the ventricles) is drawn
    again, up to MAX_TRIES times. The shape is the union of 1-3 ellipsoids of random elongation and yaw, the
    distance modulated by two smooth fields (coarse lobulation and a finer ragged edge); territory borders
    are displaced by two more. fields: (4, z, y, x) standard-normal smooth fields (coarse, fine, jitter x,
    jitter y). Later lesions overwrite earlier ones where cores overlap (core_index)."""
    shape = tissue.shape
    lesion_class = np.zeros(shape, np.uint8)
    lesion_depth = np.zeros(shape, np.float32)
    core_index = np.zeros(shape, np.uint8)
    core_depth = np.zeros(shape, np.float32)
    if n_lesions is None:
        n_lesions = 1 + int(rng.choice(len(N_LESIONS_PROBABILITY), p=N_LESIONS_PROBABILITY))
    fields = tuple(np.clip(f, -2.5, 2.5) for f in fields[:4])
    infos = []
    for i in range(n_lesions):
        side = first_side if i == 0 else int(rng.choice((-1, 1)))
        drawn = None
        for _ in range(MAX_TRIES):
            drawn = _draw_lesion(rng, xh, yh, zh, tissue, fields, a_b, b_b, scale, side)
            if drawn is None or np.sum(drawn[0] & (drawn[1] < 1)) * voxel_ml >= MIN_CORE_ML * scale ** 3:
                break
        if drawn is None:
            continue
        inside, rho_c, rho_p, rho_r, info = drawn
        core, pen, rim = (inside & (r < 1) for r in (rho_c, rho_p, rho_r))
        lesion_class[rim] = np.maximum(lesion_class[rim], 1)
        lesion_class[pen] = np.maximum(lesion_class[pen], 2)
        lesion_class[core] = 3
        np.maximum(lesion_depth, np.where(inside, np.clip(1.0 - rho_p, 0.0, 1.0), 0.0), out=lesion_depth)
        core_index[core] = i + 1
        core_depth[core] = np.clip(1.0 - rho_c[core], 0.0, 1.0)
        info.update(volume_ml=float(core.sum()) * voxel_ml, penumbra_volume_ml=float((pen & ~core).sum()) * voxel_ml,
                    ncct_darkening_hu=rng.uniform(*NCCT_DARKENING_HU), t1_cavity=rng.uniform(*T1_CAVITY),
                    t1_gliosis=rng.uniform(*T1_GLIOSIS), t1_rim_fraction=rng.uniform(0.1, 0.7))
        infos.append(info)
    return Lesions(lesion_class=lesion_class, lesion_depth=lesion_depth, core_index=core_index,
                   core_depth=core_depth, lesions=infos)
