"""Files a browser uploads to the web app: checked, then written under the server's own upload folder.

An upload is refused with one line before anything is written when it is larger than the limit, has a
name the readers cannot take, or mixes a scene with images. Names are reduced to their last component
(no folders, no hidden files), so an upload can only ever create files inside a new folder of the
server's upload area; a failed load removes that folder (the app wrote it). Nothing else on the server
is read or served because of an upload.
"""
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List

from AIFSelectorLib.errors import InputError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seq.nrrd")
SCENE_SUFFIXES = (".mrb",)
DICOM_SUFFIXES = (".dcm", ".ima", "")
DEFAULT_MAX_UPLOAD_MB = 1024.0
"""Largest upload accepted (all files together), MB: a 512 x 512 x 320 x 25 int16 series is ~4.2 GB
uncompressed, so whole-brain series need a larger --max-upload-mb."""


def _suffix(name: str) -> str:
    lower = name.lower()
    for s in (".seq.nrrd", ".nii.gz") + IMAGE_SUFFIXES + SCENE_SUFFIXES + (".dcm", ".ima"):
        if lower.endswith(s):
            return s
    return "" if "." not in lower else lower[lower.rindex("."):]


def safe_name(name: str) -> str:
    """The last component of a browser's file name, with only letters, digits, '.', '-', '_' kept."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not base:
        raise InputError(f"the uploaded file name {name!r} is not usable")
    return base[:200]


def file_content(item: Dict) -> bytes:
    """The bytes of one trame file-input entry ({'name', 'size', 'content': bytes or a list of chunks})."""
    content = item.get("content")
    if isinstance(content, (bytes, bytearray)):
        return bytes(content)
    if isinstance(content, list):
        return b"".join(bytes(c) for c in content)
    raise InputError(f"the upload of {item.get('name')!r} arrived without content")


def upload_size_message(total_bytes: float, max_mb: float) -> str:
    return (f"the upload is {total_bytes / 1e6:.0f} MB, more than the server's limit of {max_mb:g} MB "
            "(start it with a larger --max-upload-mb)")


def content_size(item: Dict) -> int:
    """Bytes of one trame file-input entry's content (0 when it has none)."""
    content = item.get("content")
    if isinstance(content, (bytes, bytearray)):
        return len(content)
    if isinstance(content, list):
        return sum(len(c) for c in content)
    return 0


def limit_websocket_messages(max_mb: float) -> None:
    """Caps what one websocket message may allocate on the server at ``max_mb`` (plus 64 MB for the message's
    other fields): wslink lets an authenticated client declare messages of up to 4 GB, allocated before their
    bytes arrive, and an upload arrives as one message. A larger one closes that client's connection; the page
    itself refuses a too-large selection before sending it (page.py), with a message."""
    from wslink import chunking
    cap = int(max_mb * 1e6) + 64 * 2 ** 20
    original = getattr(chunking.UnChunker.set_max_message_size, "__wrapped__",
                       chunking.UnChunker.set_max_message_size)

    def capped(self, size):
        original(self, min(int(size), cap))
    capped.__wrapped__ = original
    chunking.UnChunker.set_max_message_size = capped


def check_upload(items: List[Dict], max_mb: float = DEFAULT_MAX_UPLOAD_MB) -> str:
    """'image', 'scene' or 'dicom' for a set of uploaded files, or InputError naming what is wrong."""
    if not items:
        raise InputError("nothing was uploaded")
    total = sum(content_size(i) for i in items)  # the bytes that arrived, not the size a browser declares
    if total > max_mb * 1e6:
        raise InputError(upload_size_message(total, max_mb))
    suffixes = {_suffix(safe_name(i.get("name"))) for i in items}
    if len(items) == 1 and suffixes <= set(IMAGE_SUFFIXES):
        return "image"
    if len(items) == 1 and suffixes <= set(SCENE_SUFFIXES):
        return "scene"
    if suffixes <= set(DICOM_SUFFIXES):
        return "dicom"
    raise InputError("upload one 4D image (.nii, .nii.gz, .nrrd, .seq.nrrd), one scene (.mrb) or the DICOM "
                     f"files of one series; got {len(items)} file(s): {', '.join(sorted(s or 'no suffix' for s in suffixes))}")


def save_upload(items: List[Dict], upload_root: Path, max_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """Writes checked uploads into a new folder under ``upload_root``. Returns (kind, path to load, folder):
    the image or scene file, or the folder of DICOM files."""
    kind = check_upload(items, max_mb)
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=upload_root))
    try:
        names = set()
        for item in items:
            name = safe_name(item.get("name"))
            if name in names:
                raise InputError(f"two uploaded files are named {name}")
            names.add(name)
            (folder / name).write_bytes(file_content(item))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    path = folder if kind == "dicom" else folder / next(iter(names))
    return kind, path, folder
