"""Anatomy of the digital phantom: head, skull, scalp, CSF, grey and white matter, vessels with partial
volume, calcifications and the lesion(s) of :mod:`phantom_lesions` (one MCA-territory lesion by default),
on any (z, y, x) grid.

Geometry: LPS as everywhere in the package (x to the patient's left, y posterior, z superior), identity
direction, the grid centred on the origin. The head is an ellipsoid of random size, in-plane rotation
and position; every structure is placed in head coordinates (xh, yh, zh) and so moves with it. A head
that does not fit the field of view is scaled down as a whole (a miniature head on small test grids);
thin structures (skull, cortex, vessels) keep at least about one voxel. Rotation sign (:class:`Frame`):
a positive angle turns the head's x axis from +x towards +y, so its posterior pole moves towards -x;
in a (y, x) array shown with row 0 at the top that is clockwise.

Tissue label codes (``LABELS``): 0 air, 1 scalp, 2 skull, 3 CSF, 4 grey matter, 5 white matter,
6 artery (>= 50 % vessel), 7 vein (>= 50 % vessel), 8 oligaemic rim (delayed, Tmax < 6 s),
9 penumbra, 10 infarct core, 11 calcification.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from AIFSelectorLib.phantom.lesions import mca_lesion, varied_lesions

LABELS = {0: "air", 1: "scalp", 2: "skull", 3: "csf", 4: "grey_matter", 5: "white_matter", 6: "artery",
          7: "vein", 8: "oligaemia", 9: "penumbra", 10: "core", 11: "calcification"}
AIR, SCALP, SKULL, CSF, GM, WM, ARTERY, VEIN, OLIGAEMIA, PENUMBRA, CORE, CALCIFICATION = range(12)
TISSUE_LABELS = (GM, WM, OLIGAEMIA, PENUMBRA, CORE)
VESSEL_KINDS = ("artery", "artery_late", "vein")
"""artery: carries the true AIF; artery_late: distal branches on the lesion side, filled late through
collaterals (the AIF delayed and dispersed); vein: carries the VOF."""


@dataclass
class Grid:
    shape_zyx: Tuple[int, int, int]
    spacing_xyz: Tuple[float, float, float]

    @property
    def origin_xyz(self) -> Tuple[float, float, float]:
        """Origin putting the grid centre at (0, 0, 0) mm."""
        n_xyz = self.shape_zyx[::-1]
        return tuple(-0.5 * (n - 1) * s for n, s in zip(n_xyz, self.spacing_xyz))

    def axis(self, i: int) -> np.ndarray:
        """Voxel-centre world coordinates [mm] along x (0), y (1) or z (2)."""
        n = self.shape_zyx[2 - i]
        return (self.origin_xyz[i] + self.spacing_xyz[i] * np.arange(n)).astype(np.float64)


@dataclass
class Frame:
    """Head coordinates: a rotation by ``angle`` about z and a shift of the head centre to ``centre``.
    The head axis (1, 0) lies along (cos angle, sin angle) in world (x, y), the head axis (0, 1) (posterior)
    along (-sin angle, cos angle)."""

    angle_rad: float
    centre_xyz: Tuple[float, float, float]

    def to_world(self, p_h: np.ndarray) -> np.ndarray:
        p = np.atleast_2d(np.asarray(p_h, dtype=np.float64))
        c, s = np.cos(self.angle_rad), np.sin(self.angle_rad)
        x = c * p[:, 0] - s * p[:, 1] + self.centre_xyz[0]
        y = s * p[:, 0] + c * p[:, 1] + self.centre_xyz[1]
        return np.stack([x, y, p[:, 2] + self.centre_xyz[2]], axis=1)

    def head_coords(self, grid: Grid):
        """xh, yh (y, x) in-plane arrays and zh (z,) for every voxel centre."""
        x, y, z = grid.axis(0), grid.axis(1), grid.axis(2)
        dx = x[None, :] - self.centre_xyz[0]
        dy = y[:, None] - self.centre_xyz[1]
        c, s = np.cos(self.angle_rad), np.sin(self.angle_rad)
        return ((c * dx + s * dy).astype(np.float32), (-s * dx + c * dy).astype(np.float32),
                (z - self.centre_xyz[2]).astype(np.float32))


def smooth_fields(rng: np.random.Generator, grid: Grid, n: int, corr_mm) -> np.ndarray:
    """``n`` smooth random fields (n, z, y, x) float32, each standardised to mean 0 and SD 1: white noise on
    a coarse lattice (node spacing corr_mm per axis x, y, z) interpolated with Gaussian weights onto a
    reduced grid (about corr/4 steps in-plane) and linearly up-sampled to the voxel grid."""
    corr = np.broadcast_to(np.asarray(corr_mm, dtype=np.float64), (3,))
    nz, ny, nx = grid.shape_zyx
    mats, sizes = [], []
    for i, n_full in enumerate((nx, ny, nz)):
        pos = grid.axis(i)
        extent = pos[-1] - pos[0]
        n_red = n_full if i == 2 else min(n_full, int(np.ceil(extent / max(corr[i] / 4.0, 1e-6))) + 1)
        pos_red = np.linspace(pos[0], pos[-1], n_red) if n_red > 1 else pos[:1]
        nodes = np.arange(pos[0] - 2 * corr[i], pos[-1] + 2 * corr[i] + 1e-9, corr[i])
        mats.append(np.exp(-0.5 * ((pos_red[:, None] - nodes[None, :]) / corr[i]) ** 2).astype(np.float32))
        sizes.append(n_red)
    wx, wy, wz = mats
    coarse = rng.standard_normal((n, wz.shape[1], wy.shape[1], wx.shape[1])).astype(np.float32)
    f = np.einsum("zk,nkji->nzji", wz, coarse)          # tiny arrays: no BLAS threads needed
    f = np.einsum("yj,nzji->nzyi", wy, f)
    f = np.einsum("xi,nzyi->nzyx", wx, f)
    f -= f.mean(axis=(1, 2, 3), keepdims=True)
    f /= f.std(axis=(1, 2, 3), keepdims=True) + 1e-12
    if (sizes[1], sizes[0]) == (ny, nx):
        return f
    return _upsample_linear(_upsample_linear(f, nx, axis=3), ny, axis=2)


def _upsample_linear(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` from len n_in to n_out samples (end points aligned)."""
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(pos.astype(np.intp), n_in - 2)
    w = (pos - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, i0 + 1, axis=axis)
    hi -= lo
    hi *= w
    lo += hi
    return lo


def uniform01(field_: np.ndarray) -> np.ndarray:
    """A standard-normal field mapped to [0, 1] (uniform marginal), float32."""
    from scipy.special import ndtr
    return ndtr(field_).astype(np.float32)


# ----------------------------------------------------------------------------------------------- vessels

@dataclass
class Tube:
    points_h: np.ndarray  # (n, 3) head-frame polyline [mm]
    radius_mm: float
    kind: str             # one of VESSEL_KINDS
    cistern_mm: float = 0.0  # CSF sleeve around the vessel (basal cisterns, Sylvian fissure)


def _subdivide(points: np.ndarray, max_len: float) -> np.ndarray:
    out = [points[0]]
    for p0, p1 in zip(points[:-1], points[1:]):
        k = max(1, int(np.ceil(np.linalg.norm(p1 - p0) / max_len)))
        out.extend(p0 + (p1 - p0) * (j / k) for j in range(1, k + 1))
    return np.asarray(out)


def _segment_dist2(wx, wy, wz, v):
    """Squared distance from points (p - p0 given per axis) to the segment p0 -> p0 + v."""
    vv = float(v @ v)
    t = np.clip((wx * v[0] + wy * v[1] + wz * v[2]) / max(vv, 1e-12), 0.0, 1.0)
    return (wx - t * v[0]) ** 2 + (wy - t * v[1]) ** 2 + (wz - t * v[2]) ** 2


def tube_fractions(grid: Grid, frame: Frame, tubes: List[Tube]):
    """Per-voxel vessel volume fraction for each kind (supersampled: about 0.3 mm in-plane, <= 0.8 mm in
    z) and a boolean cistern mask (voxel centres within radius + cistern_mm of a vessel axis)."""
    shape = grid.shape_zyx
    frac = {k: np.zeros(shape, np.float32) for k in VESSEL_KINDS}
    cistern = np.zeros(shape, bool)
    sp = np.asarray(grid.spacing_xyz)
    org = np.asarray(grid.origin_xyz)
    n_sub = np.clip(np.ceil(sp / np.array([0.3, 0.3, 0.8])), 2, 8).astype(int)
    axes = [grid.axis(i) for i in range(3)]
    sub = [((np.arange(n_sub[i]) + 0.5) / n_sub[i] - 0.5) * sp[i] for i in range(3)]
    n_xyz = np.array(shape[::-1])
    for tube in tubes:
        pts = frame.to_world(_subdivide(tube.points_h, 4.0 * max(sp[0], sp[1])))
        reach = tube.radius_mm + tube.cistern_mm
        for p0, p1 in zip(pts[:-1], pts[1:]):
            lo = np.floor((np.minimum(p0, p1) - reach - org) / sp - 0.5).astype(int)
            hi = np.ceil((np.maximum(p0, p1) + reach - org) / sp + 0.5).astype(int) + 1
            lo, hi = np.clip(lo, 0, n_xyz), np.clip(hi, 0, n_xyz)
            if np.any(hi <= lo):
                continue
            v = p1 - p0
            box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
            c = [axes[i][lo[i]:hi[i]] - p0[i] for i in range(3)]
            if tube.cistern_mm > 0:
                d2c = _segment_dist2(c[0][None, None, :], c[1][None, :, None], c[2][:, None, None], v)
                cistern[box] |= d2c < reach ** 2
            f = [(c[i][:, None] + sub[i][None, :]).ravel() for i in range(3)]
            d2 = _segment_dist2(f[0][None, None, :], f[1][None, :, None], f[2][:, None, None], v)
            inside = (d2 < tube.radius_mm ** 2).reshape(len(c[2]), n_sub[2], len(c[1]), n_sub[1],
                                                          len(c[0]), n_sub[0])
            fr = inside.mean(axis=(1, 3, 5), dtype=np.float32)
            np.maximum(frac[tube.kind][box], fr, out=frac[tube.kind][box])
    return frac, cistern


# ----------------------------------------------------------------------------------------------- anatomy

@dataclass
class Anatomy:
    grid: Grid
    labels: np.ndarray          # uint8 final codes (vessels >= 50 % over the tissue beneath)
    base_labels: np.ndarray     # uint8 codes before the vessel overlay (what lies beneath a vessel)
    is_grey: np.ndarray         # bool: the tissue beneath is grey matter (cortex, deep nuclei)
    lesion_class: np.ndarray    # uint8: 0 none, 1 oligaemic rim, 2 penumbra, 3 core
    lesion_depth: np.ndarray    # float32 0 at the edge of the penumbra, 1 deep in it (delay gradient)
    vessel: Dict[str, np.ndarray]  # kind -> vessel volume fraction
    brain_mask: np.ndarray      # bool: intracranial
    static_hu: np.ndarray       # float32 pre-contrast HU (partial volume, scanner blur)
    fields: np.ndarray          # spare smooth fields (n, z, y, x) standard normal, for the physiology
    params: dict = field(default_factory=dict)
    core_index: Optional[np.ndarray] = None  # uint8: 1 + index of the lesion whose core holds the voxel, else 0
    core_depth: Optional[np.ndarray] = None  # float32: 0 at a core's edge, 1 at its centre
    lesions: List[dict] = field(default_factory=list)  # one dict per lesion (site, side, volume_ml, ...)

    @property
    def vessel_total(self) -> np.ndarray:
        return np.minimum(1.0, sum(self.vessel.values()))


def _ellipsoid(xh, yh, zh, centre, axes, yaw_deg=0.0):
    """Boolean (z, y, x) mask of an ellipsoid in head coordinates, rotated by ``yaw_deg`` about z."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    dx, dy = xh - centre[0], yh - centre[1]
    u = (c * dx + s * dy) / axes[0]
    w = (-s * dx + c * dy) / axes[1]
    q2 = u * u + w * w
    qz = ((zh - centre[2]) / axes[2]) ** 2
    return (q2[None, :, :] + qz[:, None, None]) < 1.0


HEAD_SHIFT_VARIETY_MM = 20.0
"""Largest in-plane head shift [mm, adult head] in variety mode (less where the field of view is tight)."""
SLAB_CENTRE_VARIETY_MM = (0.0, 32.0)
"""Variety mode: the slab centre lies this far above the head centre [mm, adult head] (default 8-26)."""


def _head_pose(variety_rng, grid: Grid, semi_axes_xy, angle_deg: float, scale: float, shift, slab_centre: float):
    """Head scale, in-plane shift (x, y) [mm] and slab centre [mm above the head centre] so that the rotated
    head (unscaled in-plane semi-axes ``semi_axes_xy`` mm) lies inside the field of view.

    Default (``variety_rng`` None): the drawn pose, shrunk only where the rotated, shifted head would reach
    past the field of view (never for rotations up to 8 deg). Variety: the scale allows for the rotated
    extent, the shift is redrawn up to HEAD_SHIFT_VARIETY_MM within the room left, the slab centre is
    redrawn in SLAB_CENTRE_VARIETY_MM."""
    a, b = semi_axes_xy
    c, s = abs(np.cos(np.radians(angle_deg))), abs(np.sin(np.radians(angle_deg)))
    extent = np.array([np.hypot(a * c, b * s), np.hypot(a * s, b * c)])      # rotated half-extent x, y [mm]
    _, ny, nx = grid.shape_zyx
    half_fov = 0.5 * np.array([nx * grid.spacing_xyz[0], ny * grid.spacing_xyz[1]])
    limit = half_fov - 0.5 * np.array(grid.spacing_xyz[:2])
    if variety_rng is None:
        over = float(np.max((np.abs(shift) + extent * scale) / limit))
        if over > 1.0:
            scale, shift = scale / over, shift / over
        return scale, shift, slab_centre
    scale = float(min(scale, 0.82 * np.min(half_fov / extent)))
    room = np.maximum(limit - 0.5 * np.array(grid.spacing_xyz[:2]) - extent * scale, 0.0)
    shift = variety_rng.uniform(-1.0, 1.0, size=2) * np.minimum(HEAD_SHIFT_VARIETY_MM * scale, room)
    return scale, shift, variety_rng.uniform(*SLAB_CENTRE_VARIETY_MM) * scale


def make_anatomy(rng: np.random.Generator, shape_zyx, spacing_xyz, n_spare_fields: int = 5,
                 head_rotation_max_deg: float = 8.0, variety_rng: Optional[np.random.Generator] = None) -> Anatomy:
    """The phantom's anatomy on a (z, y, x) grid of ``spacing_xyz`` mm, drawn from ``rng``.

    head_rotation_max_deg: the in-plane head rotation is uniform in +/- this [deg] (see :class:`Frame` for
    the sign). variety_rng: None for the default case (one MCA lesion, head shift +/- 6 mm); a separate
    generator for the variety mode (1-3 lesions of :mod:`phantom_lesions`, a head shift up to 20 mm as far
    as the field of view allows, a wider slab position), whose draws leave ``rng``'s stream untouched."""
    grid = Grid(tuple(int(n) for n in shape_zyx), tuple(float(s) for s in spacing_xyz))
    nz, ny, nx = grid.shape_zyx
    sx, sy, sz = grid.spacing_xyz
    vox = min(sx, sy)
    U = rng.uniform
    p = {}

    # ---- head: size, pose, and the slab it is imaged in
    a_h, b_h, c_h = U(70, 78), U(88, 98), U(78, 86)
    half_fov = 0.5 * min(nx * sx / a_h, ny * sy / b_h)
    scale = float(min(1.0, 0.82 * half_fov))
    angle = U(-head_rotation_max_deg, head_rotation_max_deg)
    shift = U(-6, 6, size=2) * scale
    slab_centre = U(8, 26) * scale
    scale, shift, slab_centre = _head_pose(variety_rng, grid, (a_h, b_h), angle, scale, shift, slab_centre)
    a_h, b_h, c_h = a_h * scale, b_h * scale, c_h * scale
    frame = Frame(np.radians(angle), (float(shift[0]), float(shift[1]), -slab_centre))
    xh, yh, zh = frame.head_coords(grid)
    thin = lambda mm, n_vox: max(mm * scale, n_vox * vox)  # noqa: E731
    t_scalp, t_skull = thin(U(3, 6), 1.5), thin(U(3.5, 6), 2.0)
    t_csf, t_cortex = thin(U(1.2, 2.5), 1.0), thin(U(2.5, 4.0), 1.5)
    sulcal_depth = U(12, 22) * scale
    ventricle_scale = U(0.8, 1.5)
    p.update(head_semi_axes_mm=[a_h, b_h, c_h], head_scale=scale, head_rotation_deg=angle,
             head_shift_mm=shift.tolist(), slab_centre_above_head_centre_mm=slab_centre,
             scalp_mm=t_scalp, skull_mm=t_skull, cortex_mm=t_cortex, sulcal_depth_mm=sulcal_depth,
             ventricle_scale=ventricle_scale)

    n_anat = 3
    f_fine = smooth_fields(rng, grid, 2, (4.0 * scale + vox, 4.0 * scale + vox, max(12.0 * scale, sz)))
    f = smooth_fields(rng, grid, n_anat + n_spare_fields, (18.0 * scale + 2 * vox, 18.0 * scale + 2 * vox,
                                                          max(20.0 * scale, 1.5 * sz)))
    f_sulci, f_bound = f_fine[0], f_fine[1]
    # disjoint regions share fields: one texture for every tissue's HU, one for skull and cortex thickness
    f_texture, f_thick, f_lesion = f[:n_anat]
    f_skull_t = f_cortex = f_thick
    f_skull_hu = f_texture

    # ---- depth below the head surface along rays from the head centre (~ normal depth)
    z3 = zh[:, None, None]
    rad = np.sqrt(xh[None] ** 2 + yh[None] ** 2 + z3 ** 2)
    rn = np.sqrt((xh[None] / a_h) ** 2 + (yh[None] / b_h) ** 2 + (z3 / c_h) ** 2)
    depth = np.where(rn > 1e-6, rad / np.maximum(rn, 1e-6) - rad, 1e9).astype(np.float32)
    depth += 0.6 * scale * f_bound
    skull_t = t_skull * (1.0 + 0.2 * np.clip(f_skull_t, -2, 2))
    d_brain = depth - t_scalp - skull_t   # depth below the inner table of the skull
    T = t_scalp + t_skull
    a_b, b_b, c_b = a_h - T, b_h - T, c_h - T

    labels = np.zeros(grid.shape_zyx, np.uint8)
    labels[depth > 0] = SCALP
    labels[(depth >= t_scalp) & (d_brain < 0)] = SKULL
    intracranial = d_brain >= 0
    labels[intracranial] = WM
    is_grey = np.zeros(grid.shape_zyx, bool)
    csf = np.zeros(grid.shape_zyx, bool)

    # cortex: a ribbon of varying thickness under the surface CSF, folded by sulci
    t_cx = t_cortex * (1.0 + 0.3 * np.clip(f_cortex, -2, 2))
    is_grey |= intracranial & (d_brain < t_csf + t_cx)
    csf |= intracranial & (d_brain < t_csf)
    # sulci: zero-crossings of a smooth field, |f|/|grad f| ~ distance to them in mm, so the CSF lines and
    # the grey matter lining both of their banks have a constant width (gyri)
    gy, gx = np.gradient(f_sulci, sy, sx, axis=(1, 2))
    dist_sulcus = np.abs(f_sulci) / (np.sqrt(gx * gx + gy * gy) + 1e-6)
    w_sulcus = thin(0.6, 0.4)
    zone = intracranial & (d_brain < sulcal_depth)
    csf |= zone & (dist_sulcus < w_sulcus)
    is_grey |= intracranial & (d_brain < sulcal_depth + t_cx) & (dist_sulcus < w_sulcus + t_cx)

    # interhemispheric fissure, down to the corpus callosum in the middle third
    w_f = thin(1.0, 0.6)
    z_cc = 0.28 * c_b
    fiss_region = ~((np.abs(yh)[None] < 0.36 * b_b) & (z3 < z_cc))
    ax = np.abs(xh)[None]
    csf |= intracranial & fiss_region & (ax < w_f)
    is_grey |= intracranial & fiss_region & (ax < w_f + t_cx)

    # Sylvian fissures and insulae; deep grey nuclei; ventricles (shared by both hemispheres)
    x_ins = 0.55 * a_b
    z_syl = U(-12, 0) * scale
    y_syl = U(-0.12, 0.0) * b_b
    w_s = thin(1.4, 1.0)
    in_z = (np.abs(z3 - z_syl) < 0.3 * c_b)
    for side in (-1, 1):
        xs = side * xh[None]
        dy = np.abs(yh[None] - y_syl + 2.0 * scale * f_bound)
        stem = (dy < w_s) & (xs > x_ins)                                   # cleft to the lateral surface
        cistern_ins = (np.abs(xs - x_ins) < w_s) & (dy < 0.22 * b_b)       # insular cistern
        csf |= intracranial & in_z & (stem | cistern_ins)
        is_grey |= intracranial & in_z & (((dy < w_s + t_cx) & (xs > x_ins - w_s))            # opercula
                                          | ((np.abs(xs - x_ins) < w_s + t_cx) & (dy < 0.22 * b_b + t_cx)))
    vs, s = ventricle_scale, scale
    for side in (-1, 1):
        is_grey |= _ellipsoid(xh, yh, zh, (side * 15 * s, -18 * s, 8 * s), (5 * s, 9 * s, 9 * s))    # caudate
        is_grey |= _ellipsoid(xh, yh, zh, (side * 23 * s, -3 * s, -6 * s), (7 * s, 15 * s, 10 * s), side * 10)
        is_grey |= _ellipsoid(xh, yh, zh, (side * 10 * s, 13 * s, -4 * s), (8 * s, 12 * s, 9 * s))   # thalamus
    for side in (-1, 1):
        csf |= _ellipsoid(xh, yh, zh, (side * 9 * s * vs ** 0.5, -2 * s, 16 * s), (4.5 * s * vs, 26 * s, 7 * s * vs),
                          side * 6)                                                            # body
        csf |= _ellipsoid(xh, yh, zh, (side * 11 * s, -24 * s, 8 * s), (5 * s * vs, 10 * s, 8 * s * vs),
                          -side * 20)                                                          # frontal horn
        csf |= _ellipsoid(xh, yh, zh, (side * 18 * s, 24 * s, 8 * s), (6.5 * s * vs, 10 * s, 9 * s * vs))  # trigone
        csf |= _ellipsoid(xh, yh, zh, (side * 14 * s, 38 * s, 5 * s), (3.5 * s * vs, 9 * s, 5 * s * vs))   # occipital
    csf |= _ellipsoid(xh, yh, zh, (0, 2 * s, -10 * s), (max(1.5 * s * vs, 0.6 * vox), 12 * s, 10 * s))  # third
    csf &= intracranial
    is_grey &= intracranial & ~csf

    # ---- vessels (arteries in and around the slab, the superior sagittal sinus, an internal vein)
    z_lo, z_hi = float(zh.min()), float(zh.max())
    H = max(z_hi - z_lo, 1e-3)
    side = 1 if rng.random() < 0.5 else -1
    jit = lambda: rng.normal(0, 2.0 * scale, size=3)  # noqa: E731
    rad = lambda lo, hi: max(U(lo, hi) * min(1.0, 0.5 + 0.5 * scale), 1.25 * vox)  # noqa: E731
    zb = z_lo - 0.5 * sz
    tubes: List[Tube] = []
    for sd in (-1, 1):
        late = "artery_late" if sd == side else "artery"
        ica_top = np.array([sd * 0.16 * a_b, -0.12 * b_b, zb + 0.15 * H]) + jit()
        m1_end = np.array([sd * 0.45 * a_b, -0.08 * b_b, zb + 0.25 * H]) + jit()
        tubes.append(Tube(np.array([ica_top - [0, 0, 0.3 * H + 8], ica_top]), rad(1.8, 2.0), "artery", 1.5 * scale))
        tubes.append(Tube(np.array([ica_top, m1_end]), rad(1.4, 1.7), "artery", 1.5 * scale))
        m2a = np.array([m1_end, [sd * 0.53 * a_b, -0.2 * b_b, zb + 0.6 * H], [sd * 0.55 * a_b, -0.26 * b_b, z_hi + 8]])
        m2b = np.array([m1_end, [sd * 0.54 * a_b, 0.05 * b_b, zb + 0.55 * H], [sd * 0.56 * a_b, 0.12 * b_b, z_hi + 8]])
        for m2 in (m2a, m2b):
            m2[1:] += rng.normal(0, 2.0 * scale, size=(2, 3))
            tubes.append(Tube(m2, rad(1.0, 1.3), late, 1.0 * scale))
            tip = m2[1] + [sd * 0.22 * a_b, rng.normal(0, 0.05) * b_b, 0.15 * H]
            tubes.append(Tube(np.array([m2[1], tip]), rad(0.9, 1.1), late))
        aca = np.array([[sd * 1.2 * scale, -0.35 * b_b, zb], [sd * 1.4 * scale, -0.42 * b_b, zb + 0.5 * H],
                        [sd * 1.2 * scale, -0.38 * b_b, z_hi + 8]])
        aca[:, 1] += rng.normal(0, 1.5 * scale)
        tubes.append(Tube(np.array([ica_top, aca[0]]), rad(1.0, 1.2), "artery"))
        tubes.append(Tube(aca, rad(1.0, 1.2), "artery"))
        pca = np.array([[sd * 0.06 * a_b, 0.02 * b_b, zb], [sd * 0.22 * a_b, 0.22 * b_b, zb + 0.1 * H],
                        [sd * 0.26 * a_b, 0.52 * b_b, zb + 0.2 * H]]) + jit()
        tubes.append(Tube(pca, rad(1.0, 1.2), "artery"))
    r_sss, r_sss_a = max(U(3.5, 5.0) * scale, 1.5 * vox), max(U(2.0, 2.6) * scale, 1.25 * vox)
    zz = np.linspace(z_lo - 1.5 * sz - 5, z_hi + 1.5 * sz + 5, 9)
    sss_p, sss_a = [], []
    for z in zz:
        for sign, r, dst in ((1, r_sss, sss_p), (-1, r_sss_a, sss_a)):
            phi = np.arctan2(z, sign * b_h)
            R_out = 1.0 / np.sqrt((np.cos(phi) / b_h) ** 2 + (np.sin(phi) / c_h) ** 2)
            d = R_out - T - r - 0.2 * scale
            dst.append([0.0, d * np.cos(phi), d * np.sin(phi)])
    tubes.append(Tube(np.array(sss_p), r_sss, "vein"))
    tubes.append(Tube(np.array(sss_a), r_sss_a, "vein"))
    tubes.append(Tube(np.array([[0, 0.05 * b_b, zb + 0.3 * H], [0, 0.3 * b_b, zb + 0.38 * H],
                                [0, 0.42 * b_b, zb + 0.5 * H]]), rad(1.1, 1.4), "vein"))
    vessel, cistern = tube_fractions(grid, frame, tubes)
    csf |= cistern & intracranial
    is_grey &= ~csf
    p.update(sss_radius_mm=r_sss, vessels=[{"kind": t.kind, "radius_mm": round(t.radius_mm, 3)} for t in tubes])

    labels[intracranial & is_grey] = GM
    labels[intracranial & csf] = CSF

    # ---- calcifications: choroid plexus glomera, pineal, a falx plaque, sometimes an arterial wall plaque
    calc = np.zeros(grid.shape_zyx, bool)
    r_c = lambda lo, hi: max(U(lo, hi) * scale, 0.8 * vox)  # noqa: E731
    for sd in (-1, 1):
        calc |= _ellipsoid(xh, yh, zh, (sd * 18 * s, 25 * s, U(z_lo, z_hi)), (r_c(1.5, 2.5),) * 2 + (r_c(2, 3),))
    calc |= _ellipsoid(xh, yh, zh, (0, 0.27 * b_b, U(z_lo, z_hi)), (r_c(1.5, 2.5),) * 3)
    y0 = U(-0.8, 0.5) * b_b
    falx = ((np.abs(xh) < thin(0.5, 0.55)) & (yh > y0) & (yh < y0 + U(8, 18) * scale))[None] & \
        (np.abs(z3 - U(z_lo, z_hi)) < U(6, 15) * scale) & intracranial & (d_brain > 2 * scale)
    calc |= falx
    if rng.random() < 0.5:
        sd = -side
        pos = (sd * (0.16 * a_b + 2.3 * scale), -0.12 * b_b, zb + 0.1 * H)
        calc |= _ellipsoid(xh, yh, zh, pos, (r_c(1.0, 1.5),) * 3)
    calc &= intracranial
    labels[calc] = CALCIFICATION
    is_grey &= ~calc

    # ---- the lesion(s): core inside penumbra inside an oligaemic rim, grey and white matter only
    tissue = np.isin(labels, (GM, WM))
    voxel_ml = sx * sy * sz / 1000.0
    if variety_rng is None:
        les = mca_lesion(rng, xh, yh, zh, tissue, f_lesion, a_b, b_b, scale, side, voxel_ml)
        first = les.lesions[0]
        p.update(lesion_side=first["side"], lesion_centre_head_mm=first["centre_head_mm"],
                 core_radius_mm=first["core_radius_mm"], penumbra_margin_mm=first["penumbra_margin_mm"],
                 rim_margin_mm=first["rim_margin_mm"])
    else:
        coarse = smooth_fields(variety_rng, grid, 3, (16.0 * scale + 2 * vox,) * 2 + (max(16.0 * scale, 1.5 * sz),))
        fine = smooth_fields(variety_rng, grid, 1, (5.0 * scale + vox,) * 2 + (max(8.0 * scale, sz),))
        les = varied_lesions(variety_rng, xh, yh, zh, tissue, (coarse[0], fine[0], coarse[1], coarse[2]), a_b, b_b,
                             scale, side, voxel_ml)
    lesion_class, lesion_depth = les.lesion_class, les.lesion_depth

    base_labels = labels.copy()
    base_labels[lesion_class == 1] = OLIGAEMIA
    base_labels[lesion_class == 2] = PENUMBRA
    base_labels[lesion_class == 3] = CORE
    final = base_labels.copy()
    final[vessel["vein"] >= 0.5] = VEIN
    final[(vessel["artery"] + vessel["artery_late"]) >= 0.5] = ARTERY

    # ---- pre-contrast HU (tissue beneath, partial volume with blood; blood baseline added by the caller)
    hu = np.full(grid.shape_zyx, -1000.0, np.float32)
    sk = labels == SKULL
    frac_in_skull = np.clip((depth - t_scalp) / np.maximum(skull_t, 1e-3), 0, 1)
    diploe = 1.0 - 0.35 * (1.0 - np.abs(2.0 * frac_in_skull - 1.0))
    skull_lo, skull_hi = U(700, 900), U(1200, 1500)
    hu[sk] = skull_lo + (skull_hi - skull_lo) * (uniform01(f_skull_hu[sk]) * diploe[sk])
    u_tex = uniform01(f_texture)
    for lab, lo, hi in ((SCALP, 10, 45), (CSF, 0, 15), (GM, 35, 40), (WM, 25, 30)):
        m = labels == lab
        hu[m] = lo + (hi - lo) * u_tex[m]
    hu[labels == CALCIFICATION] = U(150, 800)
    p.update(skull_hu_range=[skull_lo, skull_hi])
    return Anatomy(grid=grid, labels=final, base_labels=base_labels, is_grey=is_grey & np.isin(labels, (GM,)),
                   lesion_class=lesion_class, lesion_depth=lesion_depth, vessel=vessel,
                   brain_mask=intracranial, static_hu=hu, fields=f[n_anat:], params=p,
                   core_index=les.core_index, core_depth=les.core_depth, lesions=les.lesions)


def blur_inplane(volume: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Gaussian blur within each slice (the scanner's in-plane point spread)."""
    if sigma_vox <= 0:
        return volume
    return ndimage.gaussian_filter(volume, sigma=(0, sigma_vox, sigma_vox), mode="nearest")
