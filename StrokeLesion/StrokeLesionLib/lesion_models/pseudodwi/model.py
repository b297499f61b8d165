"""Pseudo-DWI + SLNet (Wang et al., MedIA 2020): the one network definition used by inference and training.

Input: (B, 12, y, x) slices from :func:`pseudo_dwi_preprocessing.network_input`: normalised CBF, CBV, MTT,
Tmax (channels 0-3), F_o (C_e = 6 cropped, resampled perfusion frames, 4-9), F_l (temporal MIP, 10) and
the brain mask (11).

- Phi_e (feature extractor, UNet): F_o -> F_h (``feature_channels``; channel 0 is trained towards the DWI
  by the extractor loss L_e, the high-level features the generator sees);
- Phi_g (generator, UNet): (CBF, CBV, MTT, Tmax, F_l, F_h) -> pseudo DWI (masked to the brain);
  the synthesis-input ablation ``synthesis_inputs``: 'fo' (maps + F_o), 'fo_fl' (maps + F_o + F_l),
  'fo_fl_fh' (maps + F_l + F_h, the paper's network);
- SLNet (UNet with switchable normalisation and squeeze-and-excitation): ``slnet_inputs`` 'pdwi_maps'
  (pseudo DWI + the four maps, the paper's), 'pdwi' or 'maps' (the maps-only baseline of Table 5: no
  extractor or generator) -> two-class logits (background, lesion);
- Phi_c (context encoder, five convolutions + two adaptive pools -> 16-vector): used only by the
  training loss (:mod:`training.pseudodwi.losses`), stored with the network so one checkpoint holds all.

Widths are configurable; the shipped weights are small (see Resources/models/MODEL_CARD_pseudodwi.md).
"""
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from AIFSelectorLib.models.config_json import config_from_dict
from AIFSelectorLib.models.blocks import ContextEncoder, UNet2d, count_parameters
from StrokeLesionLib.lesion_models.pseudodwi.preprocessing import N_CROPPED_FRAMES, N_INPUT_CHANNELS

SYNTHESIS_INPUTS = ("fo", "fo_fl", "fo_fl_fh")
SLNET_INPUTS = ("pdwi_maps", "pdwi", "maps")
MAPS = slice(0, 4)
FO = slice(4, 4 + N_CROPPED_FRAMES)
FL = slice(4 + N_CROPPED_FRAMES, 5 + N_CROPPED_FRAMES)
BRAIN = slice(5 + N_CROPPED_FRAMES, 6 + N_CROPPED_FRAMES)


@dataclass
class PseudoDWIConfig:
    """Everything needed to rebuild the networks (stored in each checkpoint)."""

    synthesis_inputs: str = "fo_fl_fh"
    """Generator input ablation: 'fo', 'fo_fl' or 'fo_fl_fh' (the paper's)."""
    slnet_inputs: str = "pdwi_maps"
    """'pdwi_maps' (paper), 'pdwi', or 'maps' (maps-only baseline: no synthesis networks)."""
    extractor_widths: Tuple[int, ...] = (8, 16, 32)
    feature_channels: int = 2
    generator_widths: Tuple[int, ...] = (8, 16, 32)
    slnet_widths: Tuple[int, ...] = (12, 24, 48, 64)
    slnet_norm: str = "switchable"
    """'switchable' (paper), 'batch' (the 'without SN' ablation), 'instance' or 'none'."""
    slnet_se: bool = True
    """Squeeze-and-excitation in every SLNet block (False: the 'without SE' ablation)."""
    se_reduction: int = 4
    synthesis_norm: str = "batch"
    context_width: int = 8
    context_dim: int = 16

    def __post_init__(self):
        if self.synthesis_inputs not in SYNTHESIS_INPUTS:
            raise ValueError(f"synthesis_inputs must be one of {SYNTHESIS_INPUTS}, got {self.synthesis_inputs!r}")
        if self.slnet_inputs not in SLNET_INPUTS:
            raise ValueError(f"slnet_inputs must be one of {SLNET_INPUTS}, got {self.slnet_inputs!r}")
        for name in ("extractor_widths", "generator_widths", "slnet_widths"):
            setattr(self, name, tuple(int(w) for w in getattr(self, name)))

    @property
    def synthesises(self) -> bool:
        return self.slnet_inputs != "maps"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PseudoDWIConfig":
        return config_from_dict(cls, d)


class PseudoDWINet(nn.Module):
    """Phi_e, Phi_g, SLNet and Phi_c (see module doc). forward(x) returns a dict:
    'logits' (B, 2, y, x); and when the configuration synthesises: 'pseudo_dwi' (B, 1, y, x) and, with
    the extractor, 'features' F_h (B, feature_channels, y, x)."""

    def __init__(self, config: PseudoDWIConfig = PseudoDWIConfig()):
        super().__init__()
        self.config = c = config
        self.extractor: Optional[nn.Module] = None
        self.generator: Optional[nn.Module] = None
        self.context: Optional[nn.Module] = None
        if c.synthesises:
            if c.synthesis_inputs == "fo_fl_fh":
                self.extractor = UNet2d(N_CROPPED_FRAMES, c.feature_channels, c.extractor_widths, c.synthesis_norm)
                n_gen = 4 + 1 + c.feature_channels
            else:
                n_gen = 4 + N_CROPPED_FRAMES + (1 if c.synthesis_inputs == "fo_fl" else 0)
            self.generator = UNet2d(n_gen, 1, c.generator_widths, c.synthesis_norm)
            self.context = ContextEncoder(1, c.context_width, c.context_dim)
        n_seg = {"pdwi_maps": 5, "pdwi": 1, "maps": 4}[c.slnet_inputs]
        self.slnet = UNet2d(n_seg, 2, c.slnet_widths, c.slnet_norm, c.slnet_se, c.se_reduction)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.shape[1] != N_INPUT_CHANNELS:
            raise ValueError(f"the network takes {N_INPUT_CHANNELS} input channels, got {x.shape[1]}")
        c = self.config
        maps, brain = x[:, MAPS], x[:, BRAIN]
        out: Dict[str, torch.Tensor] = {}
        if c.synthesises:
            if c.synthesis_inputs == "fo_fl_fh":
                out["features"] = self.extractor(x[:, FO])
                gen_in = torch.cat([maps, x[:, FL], out["features"]], dim=1)
            elif c.synthesis_inputs == "fo_fl":
                gen_in = torch.cat([maps, x[:, FO], x[:, FL]], dim=1)
            else:
                gen_in = torch.cat([maps, x[:, FO]], dim=1)
            out["pseudo_dwi"] = self.generator(gen_in) * brain
            seg_in = out["pseudo_dwi"] if c.slnet_inputs == "pdwi" else torch.cat([out["pseudo_dwi"], maps], dim=1)
        else:
            seg_in = maps
        out["logits"] = self.slnet(seg_in)
        return out


def build_model(config_dict: dict) -> PseudoDWINet:
    """The untrained network of a checkpoint's config dict (for model_weights.load_checkpoint)."""
    return PseudoDWINet(PseudoDWIConfig.from_dict(config_dict))


def parameter_counts(model: PseudoDWINet) -> Dict[str, int]:
    """Parameters per sub-network and in total ('inference' leaves out Phi_c, used only in training)."""
    parts = {name: count_parameters(m) for name, m in (("extractor", model.extractor), ("generator", model.generator),
                                                      ("slnet", model.slnet), ("context", model.context))
             if m is not None}
    parts["total"] = count_parameters(model)
    parts["inference"] = parts["total"] - parts.get("context", 0)
    return parts
