"""``single_threaded_blas`` limits BLAS inside the block and restores the
limit after it, nested or not, with its library scan reused between blocks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blas_threads as _blas_threads

from cleaner.methods import threads


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


def test_blocks_on_two_threads_inside_an_outer_block_keep_one_thread():
    """Blocks on two threads, each restoring what it found: inside an outer
    block (entered before the second thread starts) both find 1 and restore
    1, so BLAS stays at one thread until the outer block restores the
    caller's count. Without it the block left last would restore 2 under
    the other (or 1 after both)."""
    import threading

    np.ones((4, 4)) @ np.ones((4, 4))
    before = _blas_threads()
    if before == {1}:
        pytest.skip("BLAS is at one thread already (one core)")
    inside, leave, seen = threading.Event(), threading.Event(), []

    def other() -> None:
        with threads.single_threaded_blas():
            inside.set()
            leave.wait(10)
        seen.append(_blas_threads())  # after its block, under the outer one

    with threads.single_threaded_blas():
        worker = threading.Thread(target=other)
        with threads.single_threaded_blas():
            worker.start()
            assert inside.wait(10)
        assert _blas_threads() == {1}  # this thread's inner block left first
        leave.set()
        worker.join(10)
        assert seen == [{1}] and _blas_threads() == {1}
    assert _blas_threads() == before
