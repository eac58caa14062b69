"""Files written whole or not at all: each is written under a temporary name beside its place and renamed into it
(atomic on one file system), so a crash never leaves a half-written file that looks complete."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


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
