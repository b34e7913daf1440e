"""The one way a file is replaced: a temp file in the same folder, flushed to disk, renamed over
the old one, and the folder flushed too. A reader (the GUI, another tool) sees the old file or
the whole new one, never half of one, and a power cut leaves one of the two.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` only when the block ends
    without an error (else it is removed). The new file keeps the old one's permissions, or
    gets a normal file's (0666 less the umask), not mkstemp's owner-only 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        _flush_to_disk(temp)
        _copy_permissions(path, temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _flush_to_disk(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def _flush_to_disk(path: Path) -> None:
    """fsync a file, or a folder where the platform can (POSIX; Windows cannot open folders)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    if path.is_dir() and not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        handle = os.open(path, flags)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _copy_permissions(old: Path, temp: Path) -> None:
    if old.exists():
        shutil.copymode(old, temp)
        return
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)


def move_into_place(staged: str | Path, path: str | Path) -> Path:
    """Rename a file already written (and flushed) elsewhere in the same file system over
    `path`, then flush the folder: for files that are checked before they replace the old."""
    path = Path(path)
    os.replace(staged, path)
    _flush_to_disk(path.parent)
    return path
