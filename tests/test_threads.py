"""``single_threaded_blas`` limits BLAS inside the block and restores the
limit after it, nested or not, with its library scan reused between blocks."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from cleaner.methods import threads


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_limit_inside_and_restored_after():
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded
    before = _blas_threads()
    with threads.single_threaded_blas():
        scan = threads._SCANNED[0][1]
        with threads.single_threaded_blas():
            assert _blas_threads() == {1}
        assert _blas_threads() == {1}
    assert _blas_threads() == before
    with threads.single_threaded_blas():
        assert threads._SCANNED[0][1] is scan  # no new import: the scan is reused
        assert _blas_threads() == {1}
    assert _blas_threads() == before


def test_capped_workers_on_this_thread_only():
    import threading

    cores = threads.n_workers()
    seen = {}
    with threads.capped_workers(1):
        assert threads.n_workers() == 1
        assert (
            threads.parallel_map(lambda _: threading.get_ident(), range(4), workers=2)
            == [threading.get_ident()] * 4
        )  # capped: run in line
        other = threading.Thread(target=lambda: seen.setdefault("n", threads.n_workers()))
        other.start()
        other.join()
    assert seen["n"] == cores  # another thread is not capped
    assert threads.n_workers() == cores


def test_snapshot_restores_what_interleaved_blocks_left():
    """Blocks on two threads, each restoring what it found: the one left
    last restores the other's limit (1). The snapshot taken before both
    sets the counts found then again."""
    import threading

    np.ones((4, 4)) @ np.ones((4, 4))
    before = _blas_threads()
    restore = threads.blas_snapshot()
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with threads.single_threaded_blas():  # enters while the main block holds 1
            inside.set()
            leave.wait(10)

    with threads.single_threaded_blas():
        worker = threading.Thread(target=other)
        worker.start()
        assert inside.wait(10)
    leave.set()
    worker.join(10)
    restore()
    assert _blas_threads() == before
