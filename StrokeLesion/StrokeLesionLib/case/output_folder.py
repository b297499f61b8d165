"""Output folders that appear whole or not at all, and never cost a user anything the tool did not write.

One run of a command owns its output name ``OUT`` from :func:`claimed_output` on, before any computing:

1. **Where**: ``OUT`` may not be empty, the current folder or a folder above it, nor be, hold or lie
   inside an input. An existing ``OUT`` is refused unless ``--overwrite``; then it is replaced only when
   it holds the marker ``.strokelesion-output.json`` that this tool writes into every output folder, and
   nothing else than the files that marker lists.
2. **Claim**: the lock file ``.OUT.lock`` beside ``OUT`` is opened and locked (``flock``, released by the
   kernel when the process dies, however it dies), so a second run on the same name refuses with one line.
   Creating the lock also proves the location is writable; free space is checked against an estimate.
3. **Sweep**: staging folders ``.OUT.partial-*`` left by killed runs (each holds the ``.strokelesion-partial``
   marker) are removed; an ``.OUT.old-*`` left by a killed replacement is put back under ``OUT``.
4. **Stage**: files are written into a new ``.OUT.partial-<pid>-*`` folder; every file is checked (not
   empty; an image's header read back) and the marker written.
5. **Install**: the staging folder is renamed onto ``OUT`` without replacing anything (Linux
   ``renameat2(RENAME_NOREPLACE)``), or swapped with the old ``OUT`` in one step (``RENAME_EXCHANGE``), so
   ``OUT`` always names either the old or the new folder. Elsewhere the old folder is first renamed to
   ``.OUT.old-*`` and the next run puts it back if the process died in between. Of the old folder only the
   files its marker lists are then deleted; anything else is kept and reported.

SIGTERM and SIGHUP are turned into :class:`Terminated` by the command line, so the staging folder of an
interrupted run is removed on the way out; SIGKILL's debris is swept by the next run.
"""
import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional

from AIFSelectorLib.errors import InputError

MARKER = ".strokelesion-output.json"
"""Written into every output folder, last: the tool, its version, the command and the files it wrote."""
PARTIAL_MARKER = ".strokelesion-partial"
"""Written first into every staging folder: what the sweep of a later run may remove."""
TOOL = "strokelesion"


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM, SIGHUP): unwinds like KeyboardInterrupt, so every
    ``finally`` removes what the run staged."""


# ------------------------------------------------------------------------------------------ the checks

def _display(path) -> str:
    return str(path) if str(path) else '""'


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_target(out, inputs: Iterable = (), overwrite: bool = False) -> Path:
    """The resolved output folder, or an InputError (one line) when ``out`` may not be written:
    empty, the current folder or above it, an input or above/inside one, an existing file, an existing
    folder without ``overwrite``, or a folder this tool did not write (or that holds files it did not)."""
    if out is None or str(out).strip() in ("", "."):
        raise InputError(f"--out {_display(out)}: name a new folder for the results, not the current folder")
    if Path(out).expanduser().is_symlink():
        raise InputError(f"--out {out} is a symbolic link: name a real folder")
    target = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, target):
        raise InputError(f"--out {out} is the current folder or lies above it: name a new folder")
    if target.parent == target:
        raise InputError(f"--out {out} is a file system root: name a new folder")
    for source in inputs:
        if source is None:
            continue
        src = Path(source).expanduser().resolve()
        if _is_within(src, target):
            raise InputError(f"--out {out} is or holds the input {source}: results go to a folder of their own")
        if src.is_dir() and _is_within(target, src):
            raise InputError(f"--out {out} lies inside the input folder {source}: results go to a folder of "
                             f"their own")
    if target.exists():
        if not target.is_dir():
            raise InputError(f"output path {out} exists and is not a folder: choose another name")
        if not overwrite:
            raise InputError(f"output folder {out} already exists: choose another or pass --overwrite")
        _owned_files(target, str(out))
    return target


def _owned_files(folder: Path, shown: str) -> list:
    """The files listed in ``folder``'s marker; InputError when there is no valid marker or when the folder
    holds anything the marker does not list."""
    try:
        content = json.loads(_read_small_regular_file(folder / MARKER).decode("utf-8"))
        listed = content["files"] if content.get("tool") == TOOL else None
        if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
            listed = None
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        listed = None
    if listed is None:
        raise InputError(f"--overwrite refused: {shown} was not written by strokelesion (no {MARKER}); "
                         f"only a folder this tool wrote is ever replaced: choose another folder")
    allowed = set(listed) | {MARKER, PARTIAL_MARKER}
    extra = sorted(rel for rel in _relative_files(folder) if rel not in allowed)
    if extra:
        shown_extra = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise InputError(f"--overwrite refused: {shown} holds files strokelesion did not write ({shown_extra}): "
                         f"move them away or choose another folder")
    return listed


MARKER_MAX_BYTES = 1 << 20
"""A marker larger than this (1 MiB) is not one this tool wrote."""


def _read_small_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` when it is a regular file (not a link, FIFO or device) of at most
    MARKER_MAX_BYTES; OSError otherwise (a FIFO would block, /dev/zero would never end)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MARKER_MAX_BYTES:
            raise OSError(errno.EINVAL, "not a marker file", str(path))
        return os.read(fd, MARKER_MAX_BYTES + 1)
    finally:
        os.close(fd)


def _relative_files(folder: Path) -> list:
    """Every non-folder entry under ``folder`` (links included, not followed), as posix paths relative to it."""
    found = []
    for root, dirs, files in os.walk(folder):
        for d in list(dirs):
            if os.path.islink(os.path.join(root, d)):
                files.append(d)
                dirs.remove(d)
        for name in files:
            found.append(Path(os.path.relpath(os.path.join(root, name), folder)).as_posix())
    return found


# ---------------------------------------------------------------------------------------- the lock

def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: a byte-range lock on the first byte
        import msvcrt
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


def _lock(lock_path: Path, shown: str) -> int:
    """An open, locked descriptor of ``lock_path`` (created if needed), whose content names this process."""
    for _ in range(20):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InputError(f"{lock_path} is a symbolic link, not strokelesion's lock file: remove it "
                                 f"or choose another folder") from None
            raise InputError(f"cannot write in {lock_path.parent}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InputError(f"{lock_path} is not a regular file: remove it or choose another folder")
        if not _try_lock(fd):
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").split()[:1]
            except OSError:
                holder = []
            os.close(fd)
            who = f" (pid {holder[0]})" if holder else ""
            raise InputError(f"another strokelesion run is writing {shown}{who}: wait for it or choose "
                             f"another folder")
        try:  # the file may have been unlinked by its previous holder between open and lock: retry
            same = os.path.samestat(os.fstat(fd), os.lstat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            return fd
        os.close(fd)
    raise InputError(f"cannot lock {lock_path}: it keeps changing")


def _unlock(fd: int, lock_path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(lock_path)  # still holding the lock: a waiting opener sees another inode and retries
    os.close(fd)


# ---------------------------------------------------------------------------------- renames

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where the system has none (then the caller falls back), OSError on failure."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):  # old kernel or a file system without it
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _install_new(stage: Path, target: Path) -> None:
    if not _renameat2(stage, target, _RENAME_NOREPLACE):
        if target.exists():
            raise FileExistsError(errno.EEXIST, "appeared while the run was writing", str(target))
        os.rename(stage, target)


def _install_replacing(stage: Path, target: Path) -> Path:
    """Puts ``stage`` under ``target``'s name; returns where the old folder is now."""
    if _renameat2(stage, target, _RENAME_EXCHANGE):
        return stage
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    os.rename(target, old / "previous")
    os.rename(stage, target)
    return old / "previous"


def _remove_listed(folder: Path, listed: Iterable[str]) -> list:
    """Deletes the listed files of an old output folder that are really in it (never through a link to a
    folder elsewhere: a listed path whose parent resolves outside the folder is kept), and the folders
    left empty; returns what was kept."""
    root = folder.resolve()
    present = set(_relative_files(folder))
    # the marker goes last: a removal cut short by a kill leaves a folder the next sweep still recognises
    for rel in sorted((set(listed) | {PARTIAL_MARKER}) & present - {MARKER}) + [MARKER] * (MARKER in present):
        p = folder / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute() or not _is_within(p.parent.resolve(), root):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if p.is_symlink() or p.is_file():
                p.unlink()  # a link itself, never its target
    for root, dirs, _ in sorted(os.walk(folder, topdown=False), key=lambda w: -len(w[0])):
        with contextlib.suppress(OSError):
            os.rmdir(root)
    return _relative_files(folder) if folder.exists() else []


# ------------------------------------------------------------------------------------------- sweep

def _sweep(target: Path) -> None:
    """Removes the debris of killed runs on this name (called while holding its lock, so none is live)."""
    parent, name = target.parent, target.name
    for entry in parent.iterdir():
        if not entry.name.startswith(f".{name}.") or entry.is_symlink() or not entry.is_dir():
            continue
        tail = entry.name[len(name) + 2:]
        if re.fullmatch(r"partial-\d+-[A-Za-z0-9_]+", tail) and (entry / PARTIAL_MARKER).is_file():
            shutil.rmtree(entry, ignore_errors=True)
        elif re.fullmatch(r"partial-\d+-[A-Za-z0-9_]+", tail):  # an old output swapped out by a killed run
            with contextlib.suppress(InputError, OSError):
                _remove_listed(entry, _owned_files(entry, str(entry)))
            with contextlib.suppress(OSError):
                os.rmdir(entry)
        elif re.fullmatch(r"old-\d+-[A-Za-z0-9_]+", tail):
            previous = entry / "previous"
            if previous.is_dir() and not target.exists():
                os.rename(previous, target)  # a replacement killed between its two renames
            if previous.exists():
                with contextlib.suppress(InputError, OSError):
                    _remove_listed(previous, _owned_files(previous, str(previous)))
            with contextlib.suppress(OSError):
                os.rmdir(entry)


def sweep_debris(out) -> bool:
    """Removes what killed runs left beside the output folder ``out`` (staging folders, swapped-out old
    outputs) when no run holds its lock now; True when it could look. For a caller that finds ``out``
    complete and so never claims it (a batch rerun)."""
    target = Path(out).absolute()
    lock_path = target.parent / f".{target.name}.lock"
    try:
        fd = _lock(lock_path, str(out))
    except InputError:
        return False
    try:
        _sweep(target)
    finally:
        _unlock(fd, lock_path)
    return True


# -------------------------------------------------------------------------------------- the claim

class Stage:
    """The staging folder of a claimed output (``path``), and the files written into it."""

    def __init__(self, path: Path, target: Path):
        self.path = path
        self.target = target
        self.kept = []
        """Files of a replaced folder that this tool did not write and so did not delete (normally none)."""

    def __truediv__(self, name):
        return self.path / name


def free_bytes(folder) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


@contextlib.contextmanager
def claimed_output(out, overwrite: bool = False, inputs: Iterable = (), command: str = "",
                   needed_bytes: int = 0, version: str = "") -> Iterator[Stage]:
    """Claims ``out`` for this run (see the module doc), yields its :class:`Stage`; when the block ends
    without an exception, checks every staged file, writes the marker and installs the folder; on any
    exception (Terminated included) removes the staging folder and leaves ``out`` as it was."""
    from AIFSelectorLib.io.volume_io import atomic_path, current_umask, verify_file

    target = check_target(out, inputs, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the folder {target.parent}: {e.strerror}") from None
    lock_path = target.parent / f".{target.name}.lock"
    fd = _lock(lock_path, str(out))
    stage_path = None
    try:
        _sweep(target)
        check_target(out, inputs, overwrite)  # again, now that the name is ours
        free = free_bytes(target.parent)
        if free is not None and needed_bytes and free < needed_bytes:
            raise InputError(f"not enough free space for {out}: about {needed_bytes / 1e6:.0f} MB needed, "
                             f"{free / 1e6:.0f} MB free in {target.parent}")
        try:
            stage_path = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-",
                                               dir=target.parent))
            os.chmod(stage_path, 0o777 & ~current_umask())  # mkdtemp makes it 0700: outputs follow the umask
            (stage_path / PARTIAL_MARKER).write_text(f"{os.getpid()}\n", encoding="ascii")
        except OSError as e:
            raise InputError(f"cannot write in {target.parent}: {e.strerror}") from None
        stage = Stage(stage_path, target)
        yield stage
        files = sorted(f for f in _relative_files(stage_path) if f != PARTIAL_MARKER)
        for rel in files:
            verify_file(stage_path / rel)
        with atomic_path(stage_path / MARKER) as tmp:
            tmp.write_text(json.dumps({"tool": TOOL, "version": version, "command": command,
                                       "files": files}, indent=1) + "\n", encoding="utf-8")
        _fsync_dir(stage_path)
        if target.exists() and not overwrite:
            raise InputError(f"output folder {out} appeared while this run was computing: nothing was replaced; "
                             f"choose another folder or pass --overwrite")
        listed = _owned_files(target, str(out)) if target.exists() else None
        installing, stage_path = stage_path, None  # from here a failure leaves it to the next run's sweep
        if listed is not None:
            old = _install_replacing(installing, target)
            try:  # the new folder is in place: what follows only tidies up, and never raises
                (target / PARTIAL_MARKER).unlink()
                if _remove_listed(old, listed):  # a file appeared in it since the check: keep it, visibly
                    kept = target.parent / f"{target.name}.kept-{os.getpid()}"
                    os.rename(old, kept)
                    stage.kept = [str(kept / rel) for rel in _relative_files(kept)]
                if old.name == "previous":
                    os.rmdir(old.parent)
            except OSError:
                pass
        else:
            _install_new(installing, target)
            with contextlib.suppress(OSError):
                (target / PARTIAL_MARKER).unlink()
        _fsync_dir(target.parent)
    finally:
        try:
            if stage_path is not None and stage_path.exists() and (
                    stage_path.name.startswith(f".{target.name}.partial-")):
                shutil.rmtree(stage_path, ignore_errors=True)
        finally:
            _unlock(fd, lock_path)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
