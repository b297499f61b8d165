"""Shipped model weights: one manifest, sha256 checked before anything is unpickled.

Weights live in ``Resources/models`` at the repository root with ``manifest.json``:
``{"format": 1, "models": {NAME: {"file", "sha256", "size_bytes", "version", "config", ...}}}``.
A file is read once; those bytes are hashed and compared with its manifest entry, and only then does
``torch.load(..., weights_only=True)`` read the same bytes (never the file again, which could have changed
in between), so a corrupted or substituted file is refused, never unpickled. The checkpoint's own kind
(``config['kind']``) and version (``meta['version']``) must match the manifest entry's. ``STROKELESION_MODELS_DIR``
overrides the folder. Every model of the project (AIFNet, the lesion models) loads through here.

Missing, corrupted or unreadable weights raise :class:`WeightsError` (an :class:`InputError`). torch is
imported only to load a checkpoint, so checking a manifest or a file's sha256 does not load it. Writing
checkpoints and manifest entries is training's business (training/common/weights_io.py).
"""
import hashlib
import io
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from AIFSelectorLib.errors import InputError

MANIFEST = "manifest.json"


class WeightsError(InputError):
    """Model weights are missing, corrupted or do not match the manifest."""


def models_dir() -> Path:
    """The folder holding the shipped weights: $STROKELESION_MODELS_DIR, else <repo>/Resources/models
    (this file is <repo>/AIFSelector/AIFSelectorLib/models/weights.py; an editable install keeps it there)."""
    env = os.environ.get("STROKELESION_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "Resources" / "models"


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def load_checkpoint(name: str, build: Callable[[dict], object], folder: Optional[Path] = None,
                    label: str = "model") -> Tuple[object, Dict]:
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
    import torch
    p = Path(path)
    content, digest = _checked_bytes(p, expected_sha256, f"{label} weights {p.name}", "are")
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


def _checked_bytes(path: Path, expected_sha256: str, what: str, verb: str) -> Tuple[bytes, str]:
    """(the bytes of ``path``, their sha256) once that matches ``expected_sha256``; WeightsError naming ``what``
    (e.g. 'AIFNet weights aifnet_aif.pt', with ``verb`` 'are') when the file cannot be read or differs."""
    try:
        content = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{what} cannot be read: {e.strerror}") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected_sha256:
        raise WeightsError(f"{what} {verb} corrupted or modified "
                           f"(sha256 {digest[:12]}..., manifest says {expected_sha256[:12]}...)")
    return content, digest


def read_exported_graph(name: str, folder: Optional[Path] = None, label: str = "model") -> Tuple[bytes, Dict]:
    """The bytes of manifest entry ``name``'s exported inference graph (an ONNX file), after their sha256 matched
    the entry, and the entry itself. The entry's ``exported_from`` names the checkpoint entry it was exported from
    and that checkpoint's sha256, which must be the one the manifest holds now and the one of the checkpoint
    file beside it (hashed, not loaded): a graph is used only beside the intact weights it was exported from, so
    missing or modified weights are refused whichever runtime runs them. WeightsError (one line) otherwise;
    nothing is unpickled."""
    folder = Path(folder) if folder is not None else models_dir()
    models = read_manifest(folder).get("models", {})
    entry = models.get(name)
    if not entry or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
        raise WeightsError(f"the model manifest in {folder} has no '{name}' entry ({label})")
    source = entry.get("exported_from") if isinstance(entry.get("exported_from"), dict) else {}
    checkpoint = models.get(str(source.get("model")), {})
    if not source or checkpoint.get("sha256") != source.get("sha256"):
        raise WeightsError(f"{label} graph {entry['file']} was exported from other weights than the manifest's "
                           f"'{source.get('model')}' entry: export it again (python -m training.aifnet.export_onnx)")
    missing = [k for k in ("config", "receptive_radius_zyx") if k not in entry]
    if missing:
        raise WeightsError(f"the manifest entry '{name}' lacks {', '.join(missing)}")
    weights_path = folder / str(checkpoint.get("file"))
    if not weights_path.is_file():
        raise WeightsError(f"{label} weights not found: {weights_path}")
    _checked_bytes(weights_path, checkpoint["sha256"], f"{label} weights {weights_path.name}", "are")
    path = folder / entry["file"]
    content, _ = _checked_bytes(path, entry["sha256"], f"{label} graph {path.name}", "is")
    return content, dict(entry)
