"""Give freed heap memory back to the operating system between stages.

numpy's temporaries of a few MiB come from glibc's heap (its mmap threshold
grows to 32 MiB once such blocks are freed), and with the read-ahead and
search threads each using an arena, freed blocks stay resident: measured
at 1M pairs, 0.16 GiB after the fit and 0.11 GiB after the pools were
built. :func:`trim` calls glibc's ``malloc_trim(0)`` (a few milliseconds)
where a stage's temporaries have just been freed; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
