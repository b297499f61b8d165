"""Lesion segmentation of a CTP case with the shipped pseudo-DWI + SLNet weights.

    mask, extras, info = segment_pseudo_dwi(series, maps, brain_mask)

series: CTPSeries (t, z, y, x) HU with frame times in seconds; maps: the perfusion pipeline's (z, y, x)
'cbf' (ml/100g/min), 'cbv' (ml/100g), 'mtt' (s), 'tmax' (s); brain_mask (z, y, x) bool (the pipeline's
parenchyma mask). Returns the lesion mask (z, y, x) bool (inside the brain), extras {'pseudo_dwi': (z, y, x)
float32, the synthesised DWI in units of the healthy-brain DWI median} and info (model version, sha256,
perfusion window Ts/Te in s, device, timings). Slices are processed independently (2D networks).
"""
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from AIFSelectorLib.ctp_series import CTPSeries
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.models.weights import WeightsError, load_checkpoint
from AIFSelectorLib.models.device import resolve_device

from StrokeLesionLib.lesion_models.pseudodwi.model import PseudoDWINet, build_model
from StrokeLesionLib.lesion_models.pseudodwi.preprocessing import network_input

MODEL_NAME = "pseudodwi"
SLICES_PER_BATCH = 8

__all__ = ["segment_pseudo_dwi", "load_model", "predict_slices", "WeightsError"]


def load_model(name: str = MODEL_NAME, folder: Optional[Path] = None) -> Tuple[PseudoDWINet, dict]:
    """The network of manifest entry ``name`` (sha256 checked) and its info dict; WeightsError otherwise."""
    return load_checkpoint(name, build_model, folder=folder, label=f"pseudo-DWI ({name})")


@torch.no_grad()
def predict_slices(model: PseudoDWINet, x_czyx: np.ndarray, device: torch.device = torch.device("cpu"),
                   batch: int = SLICES_PER_BATCH) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Lesion probability (z, y, x) float32 and pseudo DWI (z, y, x) float32 (None for the maps-only
    network) of a case's network input (12, z, y, x), slice by slice."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x_czyx, 1, 0)))
    probs, pdwi = [], []
    for z0 in range(0, x.shape[0], batch):
        out = model(x[z0:z0 + batch].to(device))
        probs.append(torch.softmax(out["logits"].float(), dim=1)[:, 1].cpu())
        if "pseudo_dwi" in out:
            pdwi.append(out["pseudo_dwi"][:, 0].float().cpu())
    prob = torch.cat(probs).numpy().astype(np.float32)
    return prob, (torch.cat(pdwi).numpy().astype(np.float32) if pdwi else None)


def segment_pseudo_dwi(series: CTPSeries, maps: Dict[str, np.ndarray], brain_mask: np.ndarray,
                       device: Optional[str] = "auto", folder: Optional[Path] = None,
                       model_name: str = MODEL_NAME) -> Tuple[np.ndarray, Dict[str, np.ndarray], dict]:
    """(lesion_mask, {'pseudo_dwi': ...}, info) of one case (see module doc). Bad input -> InputError,
    missing or corrupted weights -> WeightsError. ``model_name`` 'slnet_maps' runs the maps-only
    baseline (no pseudo DWI in the extras)."""
    if not isinstance(series, CTPSeries):
        raise InputError(f"pseudo-DWI needs a CTP series (CTPSeries), got {type(series).__name__}")
    t0 = time.perf_counter()
    x, window = network_input(series.data, series.times_s, maps, brain_mask)
    t_pre = time.perf_counter() - t0
    model, info = load_model(model_name, folder)
    dev = resolve_device(device)
    model.to(dev)
    t0 = time.perf_counter()
    prob, pdwi = predict_slices(model, x, dev)
    t_net = time.perf_counter() - t0
    model.to("cpu")
    brain = np.asarray(brain_mask, bool)
    mask = (prob > 0.5) & brain
    extras = {} if pdwi is None else {"pseudo_dwi": pdwi}
    info = {"model": model_name, "version": info["version"], "sha256": info["sha256"], "file": info["file"],
            "device": str(dev), "perfusion_start_s": window.start_s, "perfusion_end_s": window.end_s,
            "lesion_ml": float(mask.sum() * series.geometry.voxel_volume_ml),
            "timings_s": {"preprocessing": round(t_pre, 3), "network": round(t_net, 3)}}
    return mask, extras, info
