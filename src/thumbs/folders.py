"""Output folders owned by one process at a time, and outputs replaced whole or not at all.

``owned(folder)`` holds an OS lock (``flock``) on a small file beside the folder
(``.<name>.lock`` in its parent, so the lock survives the folder being swapped for a new one).
The kernel releases it when the process exits in any way, ``kill -9`` included, so a lock file
left behind by a dead process is not a lock: the next command takes it over and says so.

``staging(target)`` is a fresh hidden folder beside ``target`` to write into; ``swap_in`` renames
it into place, so a reader sees the old complete folder or the new complete one.
``write_text`` replaces one file the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from thumbs.errors import ThumbsError

_HELD: dict[Path, int] = {}  # folders this process owns -> depth (owned() is re-entrant)


def _lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


def make_dir(folder: Path) -> Path:
    """``mkdir -p`` with a user-facing error (a file in the way, no permission, a full disk)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ThumbsError("a file stands where the output folder should be", file=str(folder),
                          hint="remove it or choose another output folder")  # fmt: skip
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ThumbsError(
            f"cannot create the folder: {err.strerror or err}",
            file=str(err.filename or folder),
            hint="choose a folder you can write to",
        ) from None
    return folder


@contextlib.contextmanager
def owned(folder: str | Path, command: str = "thumbs") -> Iterator[Path]:
    """Own ``folder`` for the duration: another process asking for it gets a clear error at once."""
    folder = Path(os.path.abspath(folder))
    if folder in _HELD:
        _HELD[folder] += 1
        try:
            yield folder
        finally:
            _HELD[folder] -= 1
        return
    make_dir(folder.parent)
    path = _lock_path(folder)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ThumbsError(
            f"cannot write beside the output folder: {err.strerror or err}",
            file=str(path),
            hint="choose an output folder whose parent you can write to",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "another process"
            raise ThumbsError(
                f"the folder is in use by another thumbs command ({holder})",
                file=str(folder),
                hint="wait for it to finish, or write to another folder",
            ) from None
        stale = _holder(fd)
        if stale:
            pid = stale.split()[0].removeprefix("pid=")
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                print(
                    f"thumbs: note: {folder} was last held by a process that is gone ({stale})",
                    file=sys.stderr,
                )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.write(
            fd, f"pid={os.getpid()} host={socket.gethostname()} command={command} since={stamp}\n".encode()
        )
        _HELD[folder] = 1
        try:
            yield folder
        finally:
            del _HELD[folder]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def staging(target: str | Path) -> Path:
    """A fresh, empty hidden folder beside ``target`` (same file system, so the swap is a rename)."""
    target = Path(target)
    make_dir(target.parent)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return make_dir(tmp)


def swap_in(tmp: Path, target: Path) -> Path:
    """Put the finished ``tmp`` folder where ``target`` is; the old one goes only after."""
    target = Path(target)
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_text(path: str | Path, text: str) -> Path:
    """Replace one file whole: written beside it, flushed, then renamed over it."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path
