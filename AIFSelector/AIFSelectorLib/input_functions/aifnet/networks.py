"""The AIF and VOF networks as inference needs them: frames in, voxel logits out, as numpy arrays.

Two runtimes carry the one network definition (``aifnet/model.py``, whose ``AIFNet.logits`` maps raw HU frames
to voxel logits):

- :class:`TorchNetwork`: the torch module itself, from the shipped checkpoint (sha256-checked,
  ``torch.load(weights_only=True)``), on the CPU or CUDA;
- :class:`OnnxNetwork`: the same ``AIFNet.logits`` exported to ONNX from that checkpoint
  (``python -m training.aifnet.export_onnx``; manifest entries ``aif_onnx`` and ``vof_onnx``, whose
  ``exported_from`` holds the checkpoint's sha256), run by onnxruntime on the CPU. It gives the torch module's
  logits within float32 rounding (at most 7.6e-6 on logits of ~30, checked at export) without importing torch,
  which takes 1-1.5 s and holds 220 MB on the 2-core machine; its convolutions are also a little faster.

:func:`load_networks` picks onnxruntime on the CPU when it is installed and the graphs are shipped, torch
otherwise (CUDA, or ``STROKELESION_AIFNET_RUNTIME=torch``). Both run on a fixed number of CPU threads
(models.device.INFERENCE_CPU_THREADS), so that their results do not depend on the machine.
"""
import importlib.util
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.input_functions.aifnet.config import AIFNetConfig
from AIFSelectorLib.models.device import INFERENCE_CPU_THREADS, cuda_if_present
from AIFSelectorLib.models.weights import WeightsError, load_checkpoint, read_exported_graph, read_manifest

RUNTIME_ENV = "STROKELESION_AIFNET_RUNTIME"
"""'torch' or 'onnxruntime' forces a runtime on the CPU; unset or 'auto': onnxruntime when installed."""


def _build_aifnet(config: dict):
    from AIFSelectorLib.input_functions.aifnet.model import AIFNet
    return AIFNet(AIFNetConfig.from_dict(config))


def load_model(kind: str, folder: Optional[Path] = None, device="cpu"):
    """The AIF or VOF torch network (model.AIFNet) and its manifest entry; WeightsError when the file is
    missing, its sha256 differs from the manifest, or it does not load as an AIFNet checkpoint."""
    model, info = load_checkpoint(kind, _build_aifnet, folder, label="AIFNet")
    info = dict(info)
    info["config"] = AIFNetConfig.from_dict(info["config"]).to_dict()
    return model.to(device), info


class TorchNetwork:
    """A torch AIFNet on ``device``: ``logits_array(frames)``, its ``config`` and receptive radii."""

    runtime = "torch"

    def __init__(self, model, device="cpu"):
        self.model, self.device, self.config = model, device, model.config
        self.radii_zyx = tuple(receptive_radius(model, axis) for axis in range(3))

    def logits_array(self, frames: np.ndarray) -> np.ndarray:
        """(n_frames, z, y, x) float32 raw HU -> (z, y, x) float32 logits."""
        import torch
        from AIFSelectorLib.models.device import thread_invariant
        with torch.inference_mode(), thread_invariant(self.device):
            x = torch.from_numpy(np.ascontiguousarray(frames, np.float32))[None].to(self.device)
            return self.model.logits(x)[0, 0].float().cpu().numpy()


class OnnxNetwork:
    """An exported AIFNet (``AIFNet.logits``) in an onnxruntime session on the CPU."""

    runtime = "onnxruntime"

    def __init__(self, graph: bytes, entry: Dict):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = INFERENCE_CPU_THREADS
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # no memory arena and no per-shape memory plan: buffers go back when a tile is done (the demo run's peak
        # memory 5.1x -> 3.8x the input, with the tiles of inference.predict_logits)
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.config = AIFNetConfig.from_dict(entry["config"])
        self.radii_zyx = tuple(int(r) for r in entry["receptive_radius_zyx"])

    def logits_array(self, frames: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(frames, np.float32)[None]
        return self.session.run(None, {"frames": x})[0][0, 0]


def receptive_radius(model, axis: int = 0) -> int:
    """Voxels along ``axis`` (0 = z) that a torch network's output depends on, each side of a voxel."""
    import torch
    return int(sum(m.kernel_size[axis] // 2 for m in model.modules() if isinstance(m, torch.nn.Conv3d)))


def as_network(model, device="cpu"):
    """A network object for a torch AIFNet module (a network object is returned as it is)."""
    return model if hasattr(model, "logits_array") else TorchNetwork(model, device)


def onnx_runtime_wanted() -> bool:
    choice = os.environ.get(RUNTIME_ENV, "auto").strip().lower()
    if choice not in ("auto", "torch", "onnxruntime"):
        raise InputError(f"{RUNTIME_ENV}={choice!r}: use auto, torch or onnxruntime")
    if choice == "torch":
        return False
    available = importlib.util.find_spec("onnxruntime") is not None
    if choice == "onnxruntime" and not available:
        raise InputError(f"{RUNTIME_ENV}=onnxruntime, but onnxruntime is not installed")
    return available


def inference_device(device: Optional[str]) -> str:
    """'cuda' or 'cpu' for 'auto'/None (CUDA when present, found without importing torch), 'cpu' or 'cuda'
    (without CUDA: InputError, from torch)."""
    if device in (None, "auto"):
        return cuda_if_present() or "cpu"
    if device == "cpu":
        return "cpu"
    from AIFSelectorLib.models.device import resolve_device
    return resolve_device(device).type


def load_networks(device: Optional[str] = "auto", folder: Optional[Path] = None) -> Tuple[List, List[Dict], str]:
    """([AIF network, VOF network], [their manifest infos], device). On the CPU through onnxruntime when it
    is installed and the manifest holds the exported graphs, else through torch. WeightsError when weights or
    graphs are missing, modified, or were exported from other weights."""
    dev = inference_device(device)
    shipped = read_manifest(folder).get("models", {})
    if dev == "cpu" and onnx_runtime_wanted() and all(f"{k}_onnx" in shipped for k in ("aif", "vof")):
        networks, infos = [], []
        for kind in ("aif", "vof"):
            graph, entry = read_exported_graph(f"{kind}_onnx", folder, label="AIFNet")
            try:
                networks.append(OnnxNetwork(graph, entry))
            except Exception as e:  # noqa: BLE001 - a graph or an onnxruntime that cannot run it: unusable
                raise WeightsError(f"AIFNet graph {entry['file']} cannot run in onnxruntime: "
                                   f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
            infos.append({"file": shipped[kind]["file"], "sha256": shipped[kind]["sha256"],
                          "version": shipped[kind].get("version", shipped[kind]["sha256"][:12]),
                          "graph": entry["file"], "graph_sha256": entry["sha256"]})
        return networks, infos, dev
    try:
        loaded = [load_model(kind, folder, dev) for kind in ("aif", "vof")]
    except ImportError as e:  # neither runtime: the selection policy falls back to the classic selector
        raise WeightsError(f"AIFNet needs onnxruntime (CPU) or torch: {e}") from None
    return [TorchNetwork(m, dev) for m, _ in loaded], [info for _, info in loaded], dev
