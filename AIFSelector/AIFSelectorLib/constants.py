"""Physical constants and clinical thresholds (documented defaults, every one overridable).

CBF = kH/rho * max(F.R) * 6000   [ml/100 g/min]  (F.R in 1/s from deconvolution)
CBV = kH/rho * int(C_t)/int(AIF) * 100   [ml/100 g]
MTT = CBV / CBF * 60   [s]
"""

TISSUE_DENSITY_G_PER_ML = 1.04
"""Brain tissue density rho [g/ml]."""

HAEMATOCRIT_LARGE_VESSEL = 0.45
HAEMATOCRIT_SMALL_VESSEL = 0.25

K_H = (1.0 - HAEMATOCRIT_LARGE_VESSEL) / (1.0 - HAEMATOCRIT_SMALL_VESSEL)
"""Haematocrit correction kH = (1 - Hct_large) / (1 - Hct_small) = 0.55 / 0.75."""

CORE_RCBF = 0.38
"""Core: rCBF below this fraction of control tissue (AIFNet paper; 0.30 as RAPID is selectable)."""

TMAX_THRESHOLD_S = 6.0
"""Hypoperfused tissue at risk: Tmax above this many seconds."""

DENOISE_SIGMA_MM = 3.0
"""In-plane spatial scale [mm] of the edge-preserving denoising of tissue curves before deconvolution."""

MIN_FRAMES = 10
"""A CTP series needs at least this many time points."""
