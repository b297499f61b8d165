"""An output folder that appears whole or not at all.

Files are written into a hidden sibling folder; on success it is renamed onto the destination. An
existing destination is an error unless ``overwrite`` is set, in which case it is replaced in one rename
(the old folder is removed only after the new one is in place).
"""
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from AIFSelectorLib.errors import InputError


def check_free(out_dir, overwrite: bool = False) -> Path:
    """Fails early (before any work) when out_dir exists and may not be replaced."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(f"output folder {out_dir} already exists: choose another or pass --overwrite")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} exists and is not a folder")
    return out_dir


@contextlib.contextmanager
def staged_folder(out_dir, overwrite: bool = False) -> Iterator[Path]:
    """Yields a staging folder; on success it becomes ``out_dir``; on error it is removed."""
    out_dir = check_free(out_dir, overwrite).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield stage
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "previous")
        stage.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
