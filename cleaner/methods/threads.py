"""Use every core the process may run on, without BLAS fighting itself.

The scorers' hot loops are many small and medium matrix products (SPS's
128 x 128 loss batches, the neighbour search's query-by-list blocks).
Measured on the 2-core machine, OpenBLAS's own threads make those *slower*
than one thread (they spin and synchronise on every small product: 5-12x
more CPU per FLOP), so the work is split into independent pieces that run
on a small thread pool while BLAS itself stays single-threaded (numpy
releases the GIL inside BLAS and its large ufunc loops, so the threads run
in parallel). faiss keeps its OpenMP threads for what it does (k-means,
exact search), set to the same core count.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

_LOCAL = threading.local()  # .cap: this thread's worker cap (capped_workers)


def n_workers() -> int:
    """Cores this process may use (``NCLEAN_THREADS`` overrides), at most
    the calling thread's cap (:func:`capped_workers`)."""
    cap = getattr(_LOCAL, "cap", None)
    return _cores() if cap is None else max(1, min(cap, _cores()))


@contextmanager
def capped_workers(cap: int):
    """:func:`n_workers` at most ``cap`` on this thread inside the block:
    work running beside the main thread's takes a core, not all of them."""
    before = getattr(_LOCAL, "cap", None)
    _LOCAL.cap = cap
    try:
        yield
    finally:
        _LOCAL.cap = before


def _cores() -> int:
    env = os.environ.get("NCLEAN_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_SCANNED: list = []  # (modules loaded at the scan, ThreadpoolController)


@contextmanager
def single_threaded_blas():
    """BLAS limited to one thread inside the block (no-op without threadpoolctl).

    The limit is process-wide (numpy's OpenBLAS) and each block restores
    what it found, so blocks entered on two threads at once can leave the
    count at 1 or lift it under the other's feet. Work that runs blocks on
    two threads starts the second with :func:`thread_beside`, which enters
    one block before: every block inside then finds 1 and restores 1, and
    the outer block restores the caller's count.

    The library scan behind a limit costs ~6 ms (28 blocks per 1M rows in
    match alone); it is redone only when modules were imported since the
    last one (a BLAS may have come with them)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        yield
        return
    if not _SCANNED or _SCANNED[0][0] != len(sys.modules):
        _SCANNED[:] = [(len(sys.modules), ThreadpoolController())]
    with _SCANNED[0][1].limit(limits=1, user_api="blas"):
        yield


@contextmanager
def thread_beside(name: str):
    """One worker thread (a ``ThreadPoolExecutor``) beside the calling one,
    with BLAS held at one thread for both while it lives: entered here,
    before the thread starts, so that the blocks each thread enters find 1
    and restore 1 (see :func:`single_threaded_blas`)."""
    with single_threaded_blas(), ThreadPoolExecutor(1, thread_name_prefix=name) as pool:
        yield pool


def parallel_map(fn: Callable, items: Iterable, workers: int | None = None) -> list:
    """``[fn(x) for x in items]`` on ``workers`` threads (in order)."""
    items = list(items)
    workers = min(n_workers(), len(items), n_workers() if workers is None else workers)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def set_faiss_threads() -> None:
    """faiss's OpenMP threads on all cores (unless OMP_NUM_THREADS says otherwise)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    import faiss

    faiss.omp_set_num_threads(n_workers())
