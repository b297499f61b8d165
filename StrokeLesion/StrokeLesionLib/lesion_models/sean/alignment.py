"""SEAN (Liang et al., MICCAI 2021), part 1: NCCT normalisation and the unsupervised symmetry alignment
network, which turns a head CT so that its mid-sagittal plane becomes the image's vertical midline.

Normalisation (:func:`normalise_ncct`): HU clipped to a brain window, then z-scored with the mean and SD
of the head voxels (HU > -200, holes filled per slice). The window is level 40 HU, width 100 HU, i.e.
[-10, 90] HU: the "[40, 100]" of the method summary read as the usual level/width notation of CT windows.
A literal clip to [40, 100] HU would map white matter (~25-30 HU) and the infarct (a few HU below normal
tissue) to one value and leave nothing to segment; ``hu_window`` of the configs can be set to it anyway.

Geometry. Every image is a stack of axial slices (z, y, x) with in-plane spacing (sx, sy) mm; in-plane
positions are mm from the centre of the image (x along columns, y along rows, as the LPS voxel axes of
an image with identity direction). The alignment of a case is a rigid in-plane transform shared by its
slices, parameters ``(angle_deg, tx_mm, ty_mm)``: the point p (mm) of the *aligned* (symmetric) image is
the point ``R(angle) p + t`` of the input, with ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` acting on
(x, y). This is the head pose of the digital phantom (``AIFSelectorLib.phantom.anatomy.Frame``: world =
R(head_rotation_deg) head + head centre), so a perfect alignment of a phantom case returns
``angle_deg = params['anatomy']['head_rotation_deg']`` (plus any rotation applied to the image afterwards,
positive = the same sense) and ``(tx, ty)`` = the head centre. Symmetry fixes the angle and the shift
across the midline; the shift along the midline is left free by both losses (a small penalty keeps it
near zero). Transforms are applied with ``affine_grid``/``grid_sample`` (bilinear, ``align_corners=False``),
so an output grid can have another size and spacing than the input (the networks see fixed grids).

Losses (unsupervised, no pose labels): symmetry L1 = mean |A - flip_x(A)| of the aligned image A;
restoration L1 = mean |T^-1(A) - X| of the aligned image mapped back onto the input X (keeps the head in
the field of view); both on Gaussian-blurred images (``loss_blur_vox``). The pose used for a case is the
network's, refined by a few Adam steps on the same loss (``refine_steps``; an addition to the paper).
Tensors: images (N, 1, y, x) or (B, Z, y, x) float32, poses (B, 3).
"""
from dataclasses import asdict, dataclass
from typing import Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage
from torch import nn
import torch.nn.functional as F

from AIFSelectorLib.models.config_json import config_from_dict

HEAD_MIN_HU = -200.0
BRAIN_WINDOW_HU = (-10.0, 90.0)
"""Window level 40 HU, width 100 HU (see module doc)."""
ANGLE_SCALE_DEG = 10.0
SHIFT_SCALE_MM = 10.0


# ---------------------------------------------------------------------------------------- normalisation

def head_mask(ncct_hu: np.ndarray) -> np.ndarray:
    """(z, y, x) bool: HU > HEAD_MIN_HU with the holes of every slice filled."""
    inside = np.asarray(ncct_hu) > HEAD_MIN_HU
    return np.stack([ndimage.binary_fill_holes(s) for s in inside])


def normalise_ncct(ncct_hu: np.ndarray, hu_window: Sequence[float] = BRAIN_WINDOW_HU) -> Tuple[np.ndarray, float]:
    """NCCT (z, y, x) HU -> (windowed and z-scored image (z, y, x) float32, its background value).

    The mean and SD are those of the head voxels; air becomes the background value (the window's lower
    bound z-scored), which the warps also use outside the field of view."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    w = np.clip(np.asarray(ncct_hu, dtype=np.float32), lo, hi)
    head = head_mask(ncct_hu)
    vals = w[head] if head.any() else w.ravel()
    mean, sd = float(vals.mean()), float(vals.std())
    sd = sd if sd > 1e-3 else 1.0
    return ((w - mean) / sd).astype(np.float32), (lo - mean) / sd


# ------------------------------------------------------------------------------------------- transforms

def half_extent_mm(shape_yx: Sequence[int], spacing_xy: Sequence[float]) -> Tuple[float, float]:
    """(x, y) half field of view in mm: normalised coordinate 1 of affine_grid (align_corners=False)."""
    return 0.5 * shape_yx[1] * float(spacing_xy[0]), 0.5 * shape_yx[0] * float(spacing_xy[1])


def rotation(angle_deg: torch.Tensor) -> torch.Tensor:
    """(B,) degrees -> (B, 2, 2) R acting on (x, y) column vectors."""
    a = torch.deg2rad(angle_deg)
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def sampling_theta(pose: torch.Tensor, out_extent_mm, in_extent_mm, inverse: bool = False) -> torch.Tensor:
    """affine_grid matrices (B, 2, 3) for ``pose`` (B, 3) = (angle_deg, tx_mm, ty_mm).

    Forward: samples the input (half extent ``in_extent_mm``) at the points of the aligned grid
    (``out_extent_mm``): in = R p + t. Inverse: samples the aligned image (then ``in_extent_mm`` is the
    aligned grid's) at the points of the input grid (``out_extent_mm``): p = R^T (q - t)."""
    pose = pose.float()
    r = rotation(pose[:, 0])
    t = pose[:, 1:3]
    s_out = torch.tensor(out_extent_mm, dtype=pose.dtype, device=pose.device)
    s_in = torch.tensor(in_extent_mm, dtype=pose.dtype, device=pose.device)
    if inverse:
        r = r.transpose(1, 2)
        t = -(r @ t[:, :, None])[:, :, 0]
    lin = r * s_out[None, None, :] / s_in[None, :, None]
    return torch.cat([lin, (t / s_in)[:, :, None]], dim=2)


def warp(images: torch.Tensor, pose: torch.Tensor, out_shape_yx: Sequence[int], out_spacing_xy,
         in_spacing_xy, background: float = 0.0, inverse: bool = False, mode: str = "bilinear") -> torch.Tensor:
    """Resamples ``images`` (B, C, y, x), one pose per image (B, 3), onto a grid of ``out_shape_yx`` at
    ``out_spacing_xy`` mm (forward: onto the aligned grid; inverse: back onto the input grid). Points
    outside the source take ``background``."""
    out_ext = half_extent_mm(out_shape_yx, out_spacing_xy)
    in_ext = half_extent_mm(images.shape[-2:], in_spacing_xy)
    theta = sampling_theta(pose, out_ext, in_ext, inverse).to(images.dtype)
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], int(out_shape_yx[0]), int(out_shape_yx[1])],
                         align_corners=False)
    out = F.grid_sample(images - background, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out + background


def warp_volumes(volumes: torch.Tensor, pose: torch.Tensor, out_shape_yx, out_spacing_xy, in_spacing_xy,
                 background: float = 0.0, inverse: bool = False, mode: str = "bilinear") -> torch.Tensor:
    """``warp`` of (B, Z, y, x) volumes, every slice of a volume with its volume's pose (B, 3)."""
    b, z = volumes.shape[:2]
    flat = volumes.reshape(b * z, 1, *volumes.shape[2:])
    out = warp(flat, pose.repeat_interleave(z, dim=0), out_shape_yx, out_spacing_xy, in_spacing_xy, background,
               inverse, mode)
    return out.reshape(b, z, *out.shape[2:])


# ---------------------------------------------------------------------------------------------- network

@dataclass
class AlignmentConfig:
    """Everything needed to rebuild an alignment network (stored in each checkpoint)."""

    grid_size: int = 64
    """The network sees every slice resampled to grid_size x grid_size voxels ..."""
    grid_spacing_mm: float = 3.6
    """... at this in-plane spacing (mm), centred on the image: a 230 mm field of view by default."""
    widths: Tuple[int, ...] = (8, 16, 32, 32)
    """Channels of the convolution levels (each: 3x3 conv, ReLU, 2x2 max-pool)."""
    hidden: int = 64
    """Width of the fully connected layer before the 3 pose outputs."""
    hu_window: Tuple[float, float] = BRAIN_WINDOW_HU
    restoration_weight: float = 1.0
    shift_penalty: float = 1e-4
    """Weight of mean (t / 10 mm)^2: the shift along the midline is free otherwise."""
    refine_steps: int = 30
    """Pose estimation (inference, and the poses the segmenter trains on): Adam steps (lr ``refine_lr``, deg
    and mm) on the same unsupervised loss per case, starting from the network's pose (test-time
    refinement, an addition to the paper; 0 = the network's pose as is)."""
    refine_lr: float = 0.2
    loss_blur_vox: float = 1.5
    """The losses compare images blurred by this Gaussian SD (alignment-grid voxels): without it the
    restoration L1 has a sharp minimum at the identity (interpolation smooths the noise of any other pose)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AlignmentConfig":
        return config_from_dict(cls, d)

    @property
    def spacing_xy(self) -> Tuple[float, float]:
        return self.grid_spacing_mm, self.grid_spacing_mm


class AlignmentNet(nn.Module):
    """(B, Z, s, s) normalised slices on the alignment grid -> pose (B, 3) = (angle_deg, tx_mm, ty_mm).

    A shared 2D CNN encodes every slice (flattened final map, so positions are kept); the slice codes are
    averaged with weights = the slice's head fraction, and two fully connected layers give the pose. The
    last layer starts at zero: an untrained network returns the identity."""

    def __init__(self, config: AlignmentConfig = AlignmentConfig()):
        super().__init__()
        self.config = config
        layers, c = [], 1
        for w in config.widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.encoder = nn.Sequential(*layers)
        side = config.grid_size // 2 ** len(config.widths)
        if side < 1:
            raise ValueError(f"alignment grid {config.grid_size} is too small for {len(config.widths)} poolings")
        self.fc = nn.Sequential(nn.Linear(c * side * side, config.hidden), nn.ReLU(inplace=True))
        self.out = nn.Linear(config.hidden, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("scale", torch.tensor([ANGLE_SCALE_DEG, SHIFT_SCALE_MM, SHIFT_SCALE_MM]))

    def forward(self, slices: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """slices (B, Z, s, s); background (B,) the normalised air value of each case."""
        b, z, h, w = slices.shape
        x = (slices - background[:, None, None, None]).reshape(b * z, 1, h, w)
        codes = self.fc(self.encoder(x).flatten(1)).reshape(b, z, -1)
        weight = (x.reshape(b, z, -1) > 0.5).float().mean(-1) + 1e-3
        pooled = (codes * weight[..., None]).sum(1) / weight.sum(1, keepdim=True)
        return self.out(pooled) * self.scale


def build_alignment(config_dict: dict) -> AlignmentNet:
    return AlignmentNet(AlignmentConfig.from_dict(config_dict))


# ----------------------------------------------------------------------------------------------- losses

def gaussian_blur(images: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable in-plane Gaussian blur of (B, Z, y, x) (zero padding; sigma in voxels, 0: none)."""
    if sigma_vox <= 0:
        return images
    r = int(np.ceil(3 * sigma_vox))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=images.dtype, device=images.device) / sigma_vox) ** 2)
    k = k / k.sum()
    b, z, h, w = images.shape
    x = images.reshape(b * z, 1, h, w)
    x = F.conv2d(x, k.reshape(1, 1, 1, -1), padding=(0, r))
    x = F.conv2d(x, k.reshape(1, 1, -1, 1), padding=(r, 0))
    return x.reshape(b, z, h, w)


def alignment_losses(slices: torch.Tensor, pose: torch.Tensor, background: torch.Tensor,
                     config: AlignmentConfig) -> dict:
    """Symmetry and restoration L1 of (B, Z, s, s) slices on the alignment grid under ``pose`` (B, 3);
    returns {'symmetry', 'restoration', 'shift', 'total'} scalar tensors."""
    sp = config.spacing_xy
    size = slices.shape[-2:]
    bg = background[:, None, None, None]
    x = gaussian_blur(slices - bg, config.loss_blur_vox)
    aligned = warp_volumes(x, pose, size, sp, sp)
    symmetry = (aligned - aligned.flip(-1)).abs().mean()
    restored = warp_volumes(aligned, pose, size, sp, sp, inverse=True)
    restoration = (restored - x).abs().mean()
    shift = ((pose[:, 1:3] / SHIFT_SCALE_MM) ** 2).mean()
    total = symmetry + config.restoration_weight * restoration + config.shift_penalty * shift
    return {"symmetry": symmetry, "restoration": restoration, "shift": shift, "total": total}


def alignment_grid_slices(normalised: torch.Tensor, background: torch.Tensor, spacing_xy,
                          config: AlignmentConfig) -> torch.Tensor:
    """(B, Z, y, x) normalised volumes at ``spacing_xy`` mm -> (B, Z, s, s) on the alignment grid
    (identity pose: resampling only)."""
    b = normalised.shape[0]
    pose = torch.zeros(b, 3, dtype=normalised.dtype, device=normalised.device)
    size = (config.grid_size, config.grid_size)
    out = warp_volumes(normalised - background[:, None, None, None], pose, size, config.spacing_xy, spacing_xy)
    return out + background[:, None, None, None]


def refine_pose(slices: torch.Tensor, background: torch.Tensor, pose: torch.Tensor, config: AlignmentConfig,
                steps: int) -> torch.Tensor:
    """The pose (B, 3) after ``steps`` Adam steps on :func:`alignment_losses` of (B, Z, s, s) slices,
    starting from ``pose`` (test-time refinement; no labels)."""
    p = pose.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=config.refine_lr)
    with torch.enable_grad():
        for _ in range(int(steps)):
            loss = alignment_losses(slices, p, background, config)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    return p.detach()
