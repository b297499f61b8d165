"""AIFNet's configuration and the frames it sees, without torch (inference through onnxruntime needs no torch):
the network itself is in ``model.py``."""
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np

from AIFSelectorLib.io.time_grid import interpolate_frames
from AIFSelectorLib.models.config_json import config_from_dict


@dataclass
class AIFNetConfig:
    """Everything needed to rebuild a network (stored in each checkpoint)."""

    n_frames: int = 40
    """Frames the network sees (time points as input channels)."""
    n_layers: int = 5
    """K: number of 3D convolution layers (5 for the AIF, 2 for the VOF in the paper)."""
    base_width: int = 8
    """Filters of the first layer; layer k has base_width * 2**(k-1) (the paper: 16)."""
    max_width: Optional[int] = 32
    """Cap on the filters of a layer (None: no cap, the paper's growth)."""
    dt_s: float = 1.0
    """Frame interval the network was trained on (s)."""
    n_baseline: int = 2
    """Frames averaged for the per-voxel pre-contrast level removed from the network input."""
    scale_hu: float = 100.0
    """Enhancement is divided by this before entering the network."""
    kind: str = "aif"
    """'aif' or 'vof' (documentation only: both use the same network)."""

    @property
    def widths(self) -> Tuple[int, ...]:
        w = [self.base_width * 2 ** k for k in range(self.n_layers)]
        if self.max_width is not None:
            w = [min(x, self.max_width) for x in w]
        return tuple(w)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AIFNetConfig":
        return config_from_dict(cls, d)


# ----------------------------------------------------------------------------------------------------
# Frames the network sees


def network_frames(data_tzyx: np.ndarray, times_s: np.ndarray, n_frames: int, dt_s: float) -> np.ndarray:
    """The series on the network's time grid: ``n_frames`` frames every ``dt_s`` seconds from the first
    frame, linearly interpolated, the last frame replicated past the end of the series.
    data_tzyx: (t, z, y, x); returns float32 (n_frames, z, y, x)."""
    times = np.asarray(times_s, dtype=np.float64) - float(times_s[0])
    grid = dt_s * np.arange(n_frames)
    if len(times) == n_frames and np.allclose(times, grid, atol=1e-3 * dt_s):
        return np.asarray(data_tzyx, dtype=np.float32)
    return interpolate_frames(data_tzyx, times, grid, np.float32)
