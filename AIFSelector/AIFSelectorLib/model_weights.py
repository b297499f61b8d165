"""Shipped model weights: one manifest, sha256 checked before anything is unpickled.

Weights live in ``Resources/models`` at the repository root with ``manifest.json``:
``{"format": 1, "models": {NAME: {"file", "sha256", "size_bytes", "version", "config", ...}}}``.
A file is read once; those bytes are hashed and compared with its manifest entry, and only then does
``torch.load(..., weights_only=True)`` read the same bytes (never the file again, which could have changed
in between), so a corrupted or substituted file is refused, never unpickled. The checkpoint's own kind
(``config['kind']``) and version (``meta['version']``) must match the manifest entry's. ``STROKELESION_MODELS_DIR``
overrides the folder. Every model of the project (AIFNet, the lesion models) loads through here.

Missing, corrupted or unreadable weights raise :class:`WeightsError` (an :class:`InputError`).
"""
import contextlib
import hashlib
import io
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from .errors import InputError
from .volume_io import atomic_path

MANIFEST = "manifest.json"


class WeightsError(InputError):
    """Model weights are missing, corrupted or do not match the manifest."""


def models_dir() -> Path:
    """The folder holding the shipped weights: $STROKELESION_MODELS_DIR, else <repo>/Resources/models
    (this file is <repo>/AIFSelector/AIFSelectorLib/model_weights.py; an editable install keeps it there)."""
    env = os.environ.get("STROKELESION_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "Resources" / "models"


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_fields(path) -> dict:
    """The manifest fields that identify a weights file: {'file': its name, 'sha256', 'size_bytes'}."""
    path = Path(path)
    return {"file": path.name, "sha256": sha256_of(path), "size_bytes": path.stat().st_size}


def read_manifest(folder: Optional[Path] = None) -> dict:
    """The manifest ``{"format": 1, "models": {NAME: entry}}``; WeightsError (one line) when it is missing,
    not JSON, or not of that shape."""
    folder = Path(folder) if folder is not None else models_dir()
    path = folder / MANIFEST
    if not path.is_file():
        raise WeightsError(f"model manifest not found: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"model manifest {path} is unreadable: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models", {}), dict) or not all(
            isinstance(e, dict) for e in manifest.get("models", {}).values()):
        raise WeightsError(f"model manifest {path} is malformed: expected an object with a 'models' object of "
                           f"entries")
    return manifest


def update_manifest(entries: Dict[str, dict], folder: Optional[Path] = None,
                    top_level: Optional[dict] = None) -> dict:
    """Merges ``entries`` (name -> entry) into the manifest, keeping every other model's entry, and sets the
    ``top_level`` keys given; written atomically (a temporary file renamed over the old one). Returns the
    manifest as written."""
    folder = Path(folder) if folder is not None else models_dir()
    path = folder / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"format": 1, "models": {}}
    manifest.setdefault("models", {}).update(entries)
    manifest.update(top_level or {})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def write_checkpoint(checkpoint: dict, path) -> Path:
    """Writes a checkpoint dict ({'format', 'config', 'state_dict', 'meta'}, plain types and tensors only, so
    that ``torch.load(weights_only=True)`` reads it) to ``path`` atomically: a temporary file beside it is
    renamed over it, so an interrupted write never leaves half a weights file. Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def resolve_device(device: Optional[str] = "auto") -> torch.device:
    """'auto' (or None): CUDA when present, else CPU; 'cuda' without CUDA is an InputError."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device {device!r} (auto, cpu or cuda)")
    return torch.device(device)


INFERENCE_CPU_THREADS = 1
"""torch threads for network inference on the CPU. A convolution's sums are reduced in an order that
depends on the thread count, so its float results do (by ~1e-5); the AIF taken from them then moves the
maps' thresholded decisions. One thread makes every model output the same on every machine (measured:
AIFNet on 8 x 256 x 256 x 40 frames, 1.26 s on one thread, 0.90 s on two)."""


@contextlib.contextmanager
def thread_invariant(device) -> Iterator[None]:
    """Runs torch on the CPU with INFERENCE_CPU_THREADS threads (restored after), so that the result does
    not depend on the machine's core count; nothing changes on CUDA."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(INFERENCE_CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_checkpoint(name: str, build: Callable[[dict], torch.nn.Module], folder: Optional[Path] = None,
                    label: str = "model") -> Tuple[torch.nn.Module, Dict]:
    """The network of manifest entry ``name`` in eval mode on the CPU, and an info dict (file, sha256,
    version, config). ``build(config_dict)`` makes the untrained network the checkpoint's ``state_dict``
    loads into; the checkpoint is ``{"format", "config", "state_dict", "meta"}``. ``label`` names the
    model in error messages. Cached on the file's identity (path, mtime, size): a changed file is re-hashed."""
    folder = Path(folder) if folder is not None else models_dir()
    entry = read_manifest(folder).get("models", {}).get(name)
    if not entry or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
        raise WeightsError(f"the model manifest in {folder} has no '{name}' entry ({label})")
    path = folder / entry["file"]
    if not path.is_file():
        raise WeightsError(f"{label} weights not found: {path}")
    st = path.stat()
    expected = (str(entry.get("config", {}).get("kind", "")) if isinstance(entry.get("config"), dict) else "",
                str(entry.get("version", "")))
    return _load_checked(str(path.resolve()), entry["sha256"], build, label, st.st_mtime_ns, st.st_size,
                         expected)


@lru_cache(maxsize=8)
def _load_checked(path: str, expected_sha256: str, build, label: str, mtime_ns: int = 0, size: int = 0,
                  expected_kind_version=("", "")):
    p = Path(path)
    try:
        with open(p, "rb") as f:
            content = f.read()
    except OSError as e:
        raise WeightsError(f"{label} weights {p.name} cannot be read: {e.strerror}") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected_sha256:
        raise WeightsError(f"{label} weights {p.name} are corrupted or modified "
                           f"(sha256 {digest[:12]}..., manifest says {expected_sha256[:12]}...)")
    try:
        ckpt = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
        config, meta = ckpt["config"], ckpt.get("meta", {})
    except Exception as e:  # noqa: BLE001 - any failure to read the checkpoint means unusable weights
        raise WeightsError(f"{label} weights {p.name} could not be loaded: {type(e).__name__}: {e}") from None
    kind, version = expected_kind_version
    if kind and str(config.get("kind", "")) != kind:
        raise WeightsError(f"{label} weights {p.name} hold a '{config.get('kind')}' model, the manifest entry "
                           f"says '{kind}'")
    if version and "version" in meta and str(meta["version"]) != version:
        raise WeightsError(f"{label} weights {p.name} are version {meta['version']}, the manifest entry says "
                           f"{version}")
    try:
        model = build(config)
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{label} weights {p.name} could not be loaded: {type(e).__name__}: {e}") from None
    model.eval()
    info = {"file": p.name, "sha256": digest, "format": ckpt.get("format", "?"), "config": dict(ckpt["config"]),
            "version": ckpt.get("meta", {}).get("version", digest[:12])}
    return model, info
