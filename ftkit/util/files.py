"""Output files: checked before any work (``check_writable``), then written whole or not at all: each is written
under a temporary name beside its place and renamed into it (atomic on one file system), so a crash never leaves a
half-written file that looks complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ftkit.errors import UsageError


def check_writable(path, flag: str, directory: bool = False) -> Path:
    """Refuse, before any work is done, an output ``path`` (given as ``flag``) that could not be written: a file
    where a directory is wanted or the other way round, a file standing where a parent directory must go, or a
    directory the user may not write in."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise UsageError(f"{flag} {path}: exists and is {'not ' if directory else ''}a directory"
                         + ("" if directory else "; expected a file name"))
    parents = list(path.absolute().parents)
    existing = next(p for p in ([path, *parents] if directory else parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so nothing can be written under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write under {existing} (permission denied)")
    try:  # what root's permissions, a read-only mount or a pseudo file system (/proc) would refuse only later
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".ftkit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write under {existing} ({e.strerror or e})") from None
    return path


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """A temporary sibling of ``path`` to write (ending in ``suffix``, for writers that go by the file name's
    suffix); renamed onto ``path`` when the block ends, removed if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
