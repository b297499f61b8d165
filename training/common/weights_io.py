"""Writing what training produces: checkpoints and manifest entries (the shipped code only reads them,
through AIFSelectorLib.models.weights)."""
import json
from pathlib import Path
from typing import Dict, Optional

import torch

from AIFSelectorLib.io.volume_io import atomic_path
from AIFSelectorLib.models.weights import MANIFEST, models_dir, sha256_of


def file_fields(path) -> dict:
    """The manifest fields that identify a weights file: {'file': its name, 'sha256', 'size_bytes'}."""
    path = Path(path)
    return {"file": path.name, "sha256": sha256_of(path), "size_bytes": path.stat().st_size}


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
