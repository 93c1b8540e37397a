"""Where a job keeps its files, and how it keeps them to itself.

``--out w/``          parts in ``w/<shard stem>.parquet``
``--out w.parquet``   parts in ``w.parts/``, merged into ``w.parquet`` at the end

Job state lives in ``<parts dir>/_nclean/`` (the fitted statistics, and the
embedding cache unless ``--cache`` says otherwise). Names starting with ``_``
or ``.`` are skipped by pyarrow/pandas dataset readers, so
``pd.read_parquet("w/")`` sees only the parts.

Two guards, because a results folder is easy to share by accident:

* **Ownership.** The parts folder is nclean's alone: it may hold only parts
  nclean wrote -- proved by its metadata key in the Parquet footer
  (:data:`cleaner.io.schema.METADATA_KEY`) -- and names starting with ``_``
  or ``.``. Anything else (``nclean score shards/ --out shards/`` next to
  img2dataset's ``00000.parquet``) is refused before a byte is written, so
  nothing nclean did not write is ever overwritten or ``--overwrite``-deleted.
  An embedding folder (``nclean embed --out``, ``--cache``) is nclean's when
  it is new or empty, carries nclean's lock file, or holds only partitions
  whose metadata carries ``nclean_embed``.
* **One job at a time.** :class:`FolderLock` holds an exclusive ``flock`` on
  ``<folder>/.nclean.lock``, which names the holder (pid, host, start time,
  command) for the job that is refused (exit 2). The kernel drops the lock
  when its process dies, SIGKILL included, so a stale lock file (its pid
  dead) is simply taken over. The file stays as the folder's mark.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from cleaner.errors import ConfigError
from cleaner.io.schema import METADATA_KEY

LOCK_NAME = ".nclean.lock"
EMBED_METADATA_KEY = b"nclean_embed"  # cleaner.io.embcache.META_KEY
_EMBED_DIRS = ("img_emb", "text_emb", "metadata")


@dataclass
class OutputLayout:
    out: Path
    parts_dir: Path
    merged: Path | None
    lock: FolderLock | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_out(cls, out: str | Path) -> OutputLayout:
        out = Path(out)
        if out.suffix == ".parquet":
            return cls(out=out, parts_dir=out.with_suffix(".parts"), merged=out)
        return cls(out=out, parts_dir=out, merged=None)

    @property
    def state_dir(self) -> Path:
        return self.parts_dir / "_nclean"

    @property
    def fit_path(self) -> Path:
        return self.state_dir / "fit.json"

    @property
    def default_cache(self) -> Path:
        return self.state_dir / "embeddings"

    def part_path(self, stem: str) -> Path:
        return self.parts_dir / f"{stem}.parquet"

    def prepare(self, overwrite: bool) -> None:
        """Refuse a folder holding files nclean did not write, create the
        folders, lock them for this job, clear old results on overwrite."""
        self.check_owned()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            if self.merged is not None:
                self.merged.parent.mkdir(parents=True, exist_ok=True)
            for d in {self.parts_dir, self.merged.parent if self.merged else self.parts_dir}:
                fd, probe = tempfile.mkstemp(prefix=".nclean-probe-", dir=d)
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise ConfigError(
                f"output location {self.out} is not writable: {exc.strerror or exc}"
            ) from None
        if self.lock is None:
            self.lock = FolderLock(self.parts_dir, f"--out {self.out}")
            self.lock.acquire()
        if overwrite:
            self.check_owned()  # again, under the lock: only ever delete our own files
            for p in self.parts_dir.glob("*.parquet"):
                p.unlink()
            if self.fit_path.exists():
                self.fit_path.unlink()
            if self.default_cache.exists():
                shutil.rmtree(self.default_cache)
            if self.merged is not None and self.merged.exists():
                self.merged.unlink()

    def check_owned(self) -> None:
        """ConfigError (exit 2) naming files in the parts folder, or a merged
        file, that nclean cannot prove it wrote."""
        foreign = foreign_entries(self.parts_dir)
        if self.merged is not None and self.merged.exists():
            if not written_by_nclean(self.merged, METADATA_KEY):
                raise ConfigError(
                    f"--out {self.merged} exists and was not written by nclean (no nclean "
                    "metadata in it); nclean never overwrites it: choose another --out"
                )
        if foreign:
            raise ConfigError(
                f"--out {self.parts_dir} holds files nclean did not write "
                f"({_listed(foreign)}); its parts need a folder of their own, which nclean "
                "never writes over: choose a new or empty folder, or --out FILE.parquet"
            )

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @contextlib.contextmanager
    def held(self):
        """Release the lock :meth:`prepare` takes however the job ends."""
        try:
            yield self
        finally:
            self.release()


# -- ownership -----------------------------------------------------------------
def written_by_nclean(path: Path, key: bytes) -> bool:
    """True if ``path`` is Parquet whose footer carries nclean's metadata ``key``."""
    try:
        return key in (pq.read_schema(path).metadata or {})
    except Exception:  # not Parquet, unreadable: not provably ours  # noqa: BLE001
        return False


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:  # absent, or not a folder: nothing in it to overwrite
        return []


def foreign_entries(parts_dir: Path) -> list[Path]:
    """What a parts folder holds besides nclean's parts and ``_``/``.`` names."""
    return [
        p
        for p in _entries(parts_dir)
        if not _hidden(p.name)
        and not (p.suffix == ".parquet" and p.is_file() and written_by_nclean(p, METADATA_KEY))
    ]


def _listed(paths: list[Path], limit: int = 3) -> str:
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in paths[:limit])
    return names + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def foreign_in_embedding_folder(root: Path) -> list[Path]:
    """Files in an embedding folder that nclean cannot prove it wrote (empty
    when the folder is new, empty, or marked by nclean's lock file)."""
    entries = _entries(root)
    if not entries or (root / LOCK_NAME).exists():
        return []
    foreign = [p for p in entries if not _hidden(p.name) and p.name not in _EMBED_DIRS]
    ours = 0
    for p in _entries(root / "metadata"):
        if _hidden(p.name):
            continue
        if p.suffix == ".parquet" and written_by_nclean(p, EMBED_METADATA_KEY):
            ours += 1
        else:
            foreign.append(p)
    if not ours and not foreign:  # vectors without any metadata: whose are they?
        foreign = [p for d in _EMBED_DIRS[:2] for p in _entries(root / d) if not _hidden(p.name)]
    return foreign


def check_embedding_folder(root: Path, flag: str) -> None:
    foreign = foreign_in_embedding_folder(Path(root))
    if foreign:
        raise ConfigError(
            f"{flag} {root} holds files nclean did not write ({_listed(foreign)}), e.g. "
            "clip-retrieval's; nclean never writes over them: choose a new or empty folder "
            "(score such a folder with nclean score --embeddings)"
        )


@contextlib.contextmanager
def embedding_folder_held(root: str | Path, flag: str):
    """An embedding folder checked to be nclean's and locked while it is written."""
    root = Path(root)
    check_embedding_folder(root, flag)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {root} is not writable: {exc.strerror or exc}") from None
    lock = FolderLock(root, f"{flag} {root}")
    lock.acquire()
    try:
        yield root
    finally:
        lock.release()


# -- one job per folder --------------------------------------------------------
class FolderLock:
    """An exclusive lock on a folder a job writes, naming its holder."""

    def __init__(self, folder: str | Path, label: str):
        self.path = Path(folder) / LOCK_NAME
        self.label = label  # the folder as the user named it (e.g. "--out w.parquet")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or ConfigError (exit 2) naming the job that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"{self.label} is not writable: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # no flock on this file system: trust the holder's pid instead
                return self._acquire_by_pid(fd)
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise ConfigError(
                f"{self.label} is in use by another nclean job ({holder}); "
                f"wait for it to end, or choose another folder (lock: {self.path})"
            ) from None
        self._own(fd)

    def _acquire_by_pid(self, fd: int) -> None:
        info = _read_holder(fd)
        pid, host = info.get("pid"), info.get("host")
        if pid and pid != os.getpid() and (host != socket.gethostname() or _alive(pid)):
            os.close(fd)
            raise ConfigError(
                f"{self.label} is in use by another nclean job "
                f"({_describe(info)}); if it is not running, delete {self.path}"
            )
        self._own(fd)

    def _own(self, fd: int) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(["nclean", *sys.argv[1:]])[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # the mark stays; a dead pid in it is harmless
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def _read_holder(fd: int) -> dict:
    for _ in range(20):  # a holder that just took the lock may not have written yet
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            info = None
        if isinstance(info, dict):
            return info
        time.sleep(0.01)
    return {}


def _describe(info: dict) -> str:
    if not info:
        return "holder unknown"
    return (
        f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}: "
        f"{info.get('command')}"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
