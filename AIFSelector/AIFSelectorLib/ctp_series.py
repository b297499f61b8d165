"""Typed containers for a CTP series and for the geometry of a 3D volume.

Geometry follows ITK/SimpleITK (LPS physical space): ``spacing_mm`` and ``origin_mm`` are (x, y, z),
``direction`` is a 3x3 matrix whose columns are the directions of the i, j, k index axes.
Arrays are indexed (z, y, x) for volumes and (t, z, y, x) for series, as numpy arrays from SimpleITK.
The MRML glue converts LPS to Slicer's RAS.
"""
from dataclasses import dataclass, field, replace
from typing import Tuple

import numpy as np

from AIFSelectorLib.constants import MIN_FRAMES
from AIFSelectorLib.errors import InputError


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a (z, y, x) voxel grid lies in physical (LPS) space."""

    spacing_mm: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    """Row-major 3x3 direction cosines, as SimpleITK's ``GetDirection()``."""

    def __post_init__(self):
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(s) for s in self.origin_mm))
        object.__setattr__(self, "direction", tuple(float(d) for d in np.asarray(self.direction).ravel()))
        if len(self.spacing_mm) != 3 or len(self.origin_mm) != 3 or len(self.direction) != 9:
            raise InputError("geometry needs 3 spacings, 3 origin coordinates and a 3x3 direction")
        if not all(np.isfinite(self.spacing_mm)) or min(self.spacing_mm) <= 0:
            raise InputError(f"voxel spacing must be positive, got {self.spacing_mm} mm")

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 ml = 1000 mm^3)."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    def matches(self, other: "VolumeGeometry", tol: float = 1e-3) -> bool:
        """True when both grids put voxel centres at the same places (within ``tol`` mm or cosine)."""
        return (np.allclose(self.spacing_mm, other.spacing_mm, atol=tol)
                and np.allclose(self.origin_mm, other.origin_mm, atol=tol)
                and np.allclose(self.direction, other.direction, atol=tol))


@dataclass
class CTPSeries:
    """A CT perfusion series.

    data: (t, z, y, x) array in HU, any real dtype (int16 files stay int16 until processed in chunks).
    times_s: (t,) acquisition time of each frame in seconds, strictly increasing.
    geometry: the spatial grid of every frame.
    """

    data: np.ndarray
    times_s: np.ndarray
    geometry: VolumeGeometry = field(default_factory=VolumeGeometry)
    source_info: dict = field(default_factory=dict)
    """What the reader knows of the source (DICOM: series_instance_uid, series_description,
    acquisition_date); reported in report.json."""

    def __post_init__(self):
        self.data = np.asarray(self.data)
        if self.data.ndim != 4:
            raise InputError(f"a CTP series must be 4D (time, z, y, x); got a {self.data.ndim}D array "
                             f"of shape {self.data.shape}")
        if not np.issubdtype(self.data.dtype, np.number) or np.iscomplexobj(self.data):
            raise InputError(f"CTP values must be real numbers, got dtype {self.data.dtype}")
        n = self.data.shape[0]
        if n < MIN_FRAMES:
            raise InputError(f"a CTP series needs at least {MIN_FRAMES} time frames; got {n}")
        if self.times_s is None:
            raise InputError("frame times are missing: give the frame interval (--dt SECONDS) or times")
        self.times_s = np.asarray(self.times_s, dtype=np.float64).ravel()
        if self.times_s.shape[0] != n:
            raise InputError(f"{self.times_s.shape[0]} frame times given for {n} frames")
        if not np.all(np.isfinite(self.times_s)):
            raise InputError("frame times contain NaN or infinite values")
        if np.any(np.diff(self.times_s) <= 0):
            raise InputError("frame times must be strictly increasing")
        if np.issubdtype(self.data.dtype, np.floating) and not _all_finite(self.data):
            raise InputError("the CTP series contains NaN or infinite values")

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[1:])

    @property
    def is_uniform(self) -> bool:
        """True when frame intervals differ by less than 1 % of the median interval."""
        d = np.diff(self.times_s)
        return bool(np.all(np.abs(d - np.median(d)) <= 0.01 * np.median(d)))

    @property
    def dt_s(self) -> float:
        """Frame interval in seconds (median interval; exact for uniform series)."""
        return float(np.median(np.diff(self.times_s)))

    def with_data(self, data: np.ndarray, times_s=None) -> "CTPSeries":
        """A copy with new data (and optionally new frame times), same geometry."""
        return replace(self, data=data, times_s=self.times_s if times_s is None else times_s)


def _all_finite(a: np.ndarray, chunk: int = 1 << 24) -> bool:
    """np.isfinite(a).all() without a full-size boolean temporary."""
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i:i + chunk]).all() for i in range(0, flat.size, chunk))


def make_series(data: np.ndarray, times_s, geometry: VolumeGeometry, source: str) -> CTPSeries:
    """CTPSeries(data, times_s, geometry) whose InputErrors name ``source`` (the file or folder)."""
    if data.ndim == 4 and data.shape[0] == 1:
        raise InputError(f"{source} is a 3D volume (one time frame), not a 4D CT perfusion series")
    try:
        return CTPSeries(data, times_s, geometry)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
