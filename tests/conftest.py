"""Shared fixtures: a tiny open_clip checkpoint on disk and generated shards.

Everything is made locally (no hub): the checkpoint is a random-initialised
``nclean-tiny`` saved to a file and loaded back through the users' path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cleaner.estimator.model import save_random_checkpoint
from cleaner.worlds import shapes

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = "nclean-tiny"


def tiny_args(ckpt, workers=0) -> list[str]:
    """The CLI options that point a command at the tiny test model."""
    return ["--model", TINY, "--pretrained", str(ckpt), "--workers", str(workers), "--no-progress"]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_random_checkpoint(TINY, tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """3 shards x 40 generated samples (30% shuffled captions) + planted bad samples."""
    out = tmp_path_factory.mktemp("shards")
    data = shapes.generate(120, seed=1)
    data, _ = shapes.add_caption_noise(data, 0.3, seed=1)
    shapes.write_shards(data, out, shard_size=40, plant_corrupt=True)
    return out


def run_cli(*args, check=True, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    cmd = [sys.executable, "-c", "from cleaner.cli import main; main()", *map(str, args)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"nclean {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stderr[-3000:]}"
        )
    return proc


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging (in-process cases; subprocesses use timeout=)."""

    def fire(signum, frame):
        raise TimeoutError(f"took longer than {seconds}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def cli_in_process(monkeypatch, capsys, *args, timeout=120) -> tuple[int, str]:
    """The console entry point in-process: (exit code, stderr), never a traceback."""
    from cleaner.cli import main

    monkeypatch.setattr(sys, "argv", ["nclean", *map(str, args)])
    with deadline(timeout), pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exc.value.code, err


# open_clip_torch[training] pins webdataset<=0.2.86; nclean must work on that line and on 1.x
WDS_LEGACY = "0.2.86"


@pytest.fixture(scope="session")
def wds_legacy_env() -> dict[str, str]:
    """Environment for subprocesses that import webdataset 0.2.86 instead of the venv's 1.x.

    ``make test`` installs it into ``.venv/wds-0.2.86`` (``pip --target``, no
    dependencies: webdataset's own are in the venv) and puts it first on
    ``PYTHONPATH``; run alone, pytest installs it there itself, and without
    PyPI the tests that need it skip. ``NCLEAN_WDS_LINE`` tells the child which
    version it must see.
    """
    import shutil

    target = Path(sys.prefix) / f"wds-{WDS_LEGACY}"
    stamp = target / ".installed"
    if not stamp.exists():
        tmp = target.with_name(target.name + ".tmp")
        for old in (tmp, target):
            shutil.rmtree(old, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp)]
        proc = subprocess.run([*pip, f"webdataset=={WDS_LEGACY}"], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot install webdataset=={WDS_LEGACY}: {proc.stderr.strip()[-300:]}")
        tmp.rename(target)
        stamp.touch()
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "NCLEAN_WDS_LINE": WDS_LEGACY}


def blas_threads() -> set[int]:
    """The process-wide BLAS thread counts (numpy's and scipy's OpenBLAS).
    An OpenMP build's count (faiss's, once loaded) is per thread: a new
    thread starts at all cores whatever another thread set."""
    from threadpoolctl import threadpool_info

    return {lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and lib.get("threading_layer") != "openmp"}  # fmt: skip
