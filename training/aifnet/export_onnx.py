"""Export the shipped AIFNet checkpoints to ONNX, for inference on the CPU through onnxruntime without torch.

    python -m training.aifnet.export_onnx [--models Resources/models]

For each of ``aif`` and ``vof``: the checkpoint is loaded as inference loads it (sha256 checked against the
manifest), its ``AIFNet.logits`` (raw HU frames (1, n_frames, z, y, x) -> voxel logits (1, 1, z, y, x); z, y and
x free) is exported with torch's ONNX exporter, onnxruntime runs the graph on a phantom slab and its logits are
compared with torch's (refused beyond :data:`LOGIT_TOLERANCE`), and only then are ``aifnet_<kind>.onnx``
(written atomically) and its manifest entry ``<kind>_onnx`` written. The entry records the checkpoint's
sha256 (``exported_from``), so inference refuses a graph that is not the export of the shipped weights, and
the networks' receptive radii, which inference needs for its slab halos. Needs ``onnx`` (pip install
'.[deep]').
"""
import argparse
import io
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from AIFSelectorLib.input_functions.aifnet.config import network_frames
from AIFSelectorLib.input_functions.aifnet.networks import OnnxNetwork, load_model, receptive_radius
from AIFSelectorLib.io.volume_io import atomic_path
from AIFSelectorLib.models.weights import models_dir
from training.common.weights_io import file_fields, update_manifest

OPSET = 17
LOGIT_TOLERANCE = 1e-3
"""Largest |onnxruntime - torch| logit accepted on the check slab (float32 rounding gives ~2e-5 on logits of
~30: convolutions summed in another order)."""


class _Logits(torch.nn.Module):
    """The graph exported: ``AIFNet.logits`` of the wrapped network."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, frames):
        return self.model.logits(frames)


def check_slab(n_frames: int, dt_s: float) -> np.ndarray:
    """(n_frames, 4, 96, 96) float32 frames of the seed-0 phantom (arteries, veins, tissue and air)."""
    from AIFSelectorLib.phantom.case import make_phantom
    case = make_phantom(seed=0, shape_zyx=(4, 96, 96))
    return network_frames(case.series.data, case.series.times_s, n_frames, dt_s)


def export(kind: str, folder: Optional[Path] = None) -> dict:
    """Exports checkpoint ``kind`` of ``folder`` (default: the shipped models); returns its manifest entry."""
    folder = Path(folder) if folder is not None else models_dir()
    model, info = load_model(kind, folder)
    frames = check_slab(model.config.n_frames, model.config.dt_s)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own deprecations
        torch.onnx.export(_Logits(model).eval(), (torch.from_numpy(frames)[None],), buffer, opset_version=OPSET,
                          input_names=["frames"], output_names=["logits"], dynamo=False,
                          dynamic_axes={"frames": {2: "z", 3: "y", 4: "x"}, "logits": {2: "z", 3: "y", 4: "x"}})
    graph = buffer.getvalue()
    radii = [receptive_radius(model, axis) for axis in range(3)]
    entry = {"config": model.config.to_dict(), "exported_from": {"model": kind, "sha256": info["sha256"]},
             "receptive_radius_zyx": radii}
    with torch.inference_mode():
        expected = model.logits(torch.from_numpy(frames)[None])[0, 0].numpy()
    difference = float(np.max(np.abs(OnnxNetwork(graph, entry).logits_array(frames) - expected)))
    if not difference <= LOGIT_TOLERANCE:
        raise RuntimeError(f"the ONNX export of {kind} differs from torch by {difference:g} (tolerance "
                           f"{LOGIT_TOLERANCE:g}): not written")
    path = folder / f"aifnet_{kind}.onnx"
    with atomic_path(path) as tmp:
        tmp.write_bytes(graph)
    entry = {**file_fields(path), **entry, "runtime": "onnxruntime (CPU)", "opset": OPSET,
             "exported_with": f"torch {torch.__version__}", "check_max_abs_logit_difference": difference,
             "command": "python -m training.aifnet.export_onnx"}
    update_manifest({f"{kind}_onnx": entry}, folder)
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.aifnet.export_onnx", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, help="folder of the weights and manifest (default: the shipped ones)")
    args = p.parse_args(argv)
    for kind in ("aif", "vof"):
        entry = export(kind, args.models)
        print(f"{entry['file']}: {entry['size_bytes']} bytes, max |onnxruntime - torch| logit "
              f"{entry['check_max_abs_logit_difference']:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
