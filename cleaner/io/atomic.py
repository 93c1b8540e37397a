"""Atomic file writes: write a temp file beside the target, fsync, rename.

A reader (or a resumed job) sees either the old file or the whole new one,
never a torn write; a crash leaves at most a hidden ``.name.tmp`` that the
next write replaces.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``.

    ``suffix`` is appended to the temp name for writers that insist on an
    extension (``np.save`` adds ``.npy`` otherwise).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj, **kwargs) -> None:
    kwargs.setdefault("sort_keys", True)
    kwargs.setdefault("indent", 1)
    write_text(path, json.dumps(obj, default=str, **kwargs))
