"""Pass 2 of ``nclean filter``: copy the planned samples into new shards, write the keep list.

Everything that touches the output lives here: checking that ``--out`` is
free, the ``{i:06d}.tar`` shards with their per-shard stats (each written to
a temporary name and renamed into place, so a killed job never leaves a
half-written shard under a final name), and DataComp's ``.npy`` subset file.
Kept apart from the plan (:mod:`pipelines.filter_join`), which writes nothing.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import webdataset as wds

from cleaner.errors import ConfigError, InputError
from cleaner.io.atomic import atomic_path, write_json
from cleaner.io.shards import read_shard
from cleaner.progress import progress_bar
from cleaner.train.weights import Verdicts
from pipelines.filter_join import Plan, Scan

DATACOMP_UID_DTYPE = np.dtype("u8,u8")  # as DataComp's baselines and resharder.py
OUTPUT_NAME = "{:06d}.tar"
STATS_NAME = "{:06d}_stats.json"
TOTAL_STATS = "stats.json"
_OURS = re.compile(
    r"^(\d{6}\.tar|\d{6}_stats\.json|stats\.json|\.(\d{6}\.tar|\d{6}_stats\.json|stats\.json)\.tmp)$"
)


def atomic_json(obj: dict, path: Path) -> None:
    write_json(path, obj, indent=2)


# --------------------------------------------------------------------------
# The keep list
# --------------------------------------------------------------------------


def uids_to_datacomp(uids: list[str]) -> np.ndarray:
    """32-hex-digit uids -> DataComp's ``"u8,u8"`` records (unsorted).

    Raises ConfigError naming the first uid that is not 32 hex digits.
    """
    out = np.empty(len(uids), dtype=DATACOMP_UID_DTYPE)
    if not uids:
        return out
    bad = next((u for u in uids if len(u) != 32), None)
    raw = None
    if bad is None:
        try:
            raw = bytes.fromhex("".join(uids))
        except ValueError:
            raw = None
        if raw is None or len(raw) != 16 * len(uids):  # fromhex skips whitespace
            bad = next(u for u in uids if not re.fullmatch(r"[0-9a-fA-F]{32}", u))
    if bad is not None:
        raise ConfigError(
            f"uid {bad!r} is not a DataComp uid (32 hex digits); --keep-list needs those"
        )
    halves = np.frombuffer(raw, dtype=">u8").reshape(
        -1, 2
    )  # big-endian: hex digits read left to right
    out["f0"] = halves[:, 0]
    out["f1"] = halves[:, 1]
    return out


def write_keep_list(uids: list[str], copies: np.ndarray, path: str | Path) -> int:
    """Write the DataComp subset file (sorted, each uid ``copies`` times); return its length."""
    records = np.repeat(uids_to_datacomp(uids), np.asarray(copies, dtype=np.int64))
    records.sort()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, records)
    return len(records)


def write_sidecar_keep_list(
    verdicts: Verdicts, rows: np.ndarray, copies: np.ndarray, path: str | Path
) -> int:
    """The keep list of the samples with ``copies > 0``, uids from the sidecar's rows ``rows``."""
    kept = copies > 0
    uids = verdicts.table.column("uid").take(pa.array(rows[kept])).to_pylist()
    absent = sum(u is None for u in uids)
    if absent:
        raise ConfigError(
            f"{absent} of {len(uids)} kept samples have no uid in the sidecar; "
            "--keep-list needs DataComp uids (score with --uid-field uid)"
        )
    return write_keep_list(uids, copies[kept], path)


# --------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------


class ShardedOutput:
    """``{i:06d}.tar`` shards of at most ``maxcount`` samples, each with its stats.

    A drop is counted in the output shard being written when it is seen (in
    the first one if none is open yet), so every shard's stats say what its
    stretch of the input lost and why.
    """

    def __init__(self, out: Path, maxcount: int):
        self.out = out
        self.maxcount = maxcount
        self.index = -1
        self.writer = None
        self.fh = None
        self.tmp: Path | None = None
        self.stats: dict | None = None
        self.pending = self._new_stats(None)  # drops seen before the first shard opens
        self.finished: list[dict] = []

    @staticmethod
    def _new_stats(name) -> dict:
        return {
            "shard": name,
            "input_shards": [],
            "kept": 0,
            "duplicates": 0,
            "written": 0,
            "dropped": 0,
            "reasons": Counter(),
        }

    def _current(self) -> dict:
        return self.stats if self.stats is not None else self.pending

    @staticmethod
    def _note(stats: dict, source: str) -> None:
        if not stats["input_shards"] or stats["input_shards"][-1] != source:
            stats["input_shards"].append(source)

    def _open(self) -> None:
        self._finish()
        self.index += 1
        name = OUTPUT_NAME.format(self.index)
        self.tmp = self.out / f".{name}.tmp"
        self.fh = open(self.tmp, "wb")
        # PAX: keys longer than ustar's 100 characters (or with _dupN added) still fit
        self.writer = wds.TarWriter(
            self.fh, encoder=False, keep_meta=True, mtime=0, format="PAX_FORMAT"
        )
        stats = self._new_stats(name)
        for source in self.pending["input_shards"]:
            self._note(stats, source)
        stats["dropped"] += self.pending["dropped"]
        stats["reasons"].update(self.pending["reasons"])
        self.pending = self._new_stats(None)
        self.stats = stats

    def _finish(self) -> None:
        if self.writer is None:
            return
        self.writer.close()  # closes the tar stream, not our file object
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        final = self.out / self.stats["shard"]
        os.replace(self.tmp, final)
        stats = {
            **self.stats,
            "reasons": dict(sorted(self.stats["reasons"].items())),
            "count": self.stats["written"],
            "successes": self.stats["written"],
        }  # DataComp's resharder reads shard sizes from "successes"
        atomic_json(stats, self.out / STATS_NAME.format(self.index))
        self.finished.append(stats)
        self.writer = self.fh = self.tmp = None
        self.stats = None

    def write(self, sample: dict, source: str, duplicate: bool) -> None:
        if self.writer is None or self.stats["written"] >= self.maxcount:
            self._open()
        self.writer.write(sample)
        self._note(self.stats, source)
        self.stats["written"] += 1
        self.stats["duplicates" if duplicate else "kept"] += 1

    def drop(self, reason: str, source: str) -> None:
        stats = self._current()
        self._note(stats, source)
        stats["dropped"] += 1
        stats["reasons"][reason] += 1

    def close(self) -> list[dict]:
        self._finish()
        return self.finished

    def abort(self) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.tmp is not None and self.tmp.exists():
            self.tmp.unlink()


def check_out(out: Path, inputs: list[Path], overwrite: bool) -> list[Path]:
    """Refuse an ``--out`` that is not free; return our earlier outputs there (to remove)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if not out.exists():
        return []
    if out.resolve() in {p.resolve().parent for p in inputs}:
        raise ConfigError(f"--out {out} is the folder of input shards; choose another folder")
    ours = [f for f in out.iterdir() if _OURS.match(f.name)]
    others = [
        f for f in out.iterdir() if f.name.endswith((".tar", ".tgz", ".tar.gz")) and f not in ours
    ]
    if others:
        raise ConfigError(
            f"--out {out} holds other tar files ({others[0].name}, ...); choose an empty folder"
        )
    if ours and not overwrite:
        raise ConfigError(
            f"--out {out} already holds filter output ({len(ours)} files); pass --overwrite to replace it"
        )
    return ours


def clear_out(out: Path, ours: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # stats.json first: without it the folder no longer claims a finished job
    for f in sorted(ours, key=lambda f: f.name != TOTAL_STATS):
        f.unlink()


# --------------------------------------------------------------------------
# The copy
# --------------------------------------------------------------------------


def copy_kept(
    scan: Scan, plan: Plan, out: Path, maxcount: int, progress: bool
) -> tuple[np.ndarray, list[dict]]:
    """Write the planned copies; return the copies actually written per sample and the shard stats."""
    written = plan.copies.copy()
    output = ShardedOutput(out, maxcount)
    try:
        ends = [*scan.starts[1:], len(scan.keys)]
        todo = [
            t
            for t in zip(scan.paths, scan.starts, ends, strict=True)
            if t[0].name not in scan.unreadable
        ]
        for path, start, end in progress_bar(
            todo, desc="filter", unit="shard", disable=not progress, file=sys.stderr, leave=False
        ):
            _copy_shard(path, start, end, scan, plan, output, written)
        return written, output.close()
    except BaseException:
        output.abort()
        raise


def _copy_shard(
    path: Path,
    start: int,
    end: int,
    scan: Scan,
    plan: Plan,
    output: ShardedOutput,
    written: np.ndarray,
) -> None:
    """Copy the samples ``start:end`` of the scan (those of ``path``); a truncated one is dropped."""
    i = start
    for raw in read_shard(path, wanted=None):
        if i >= end or raw.key != scan.keys[i]:
            raise InputError(f"shard {path.name} changed while it was being filtered; run again")
        count = int(plan.copies[i])
        if count == 0:
            output.drop(plan.reasons[i], path.name)
        elif any(v is None for v in raw.members.values()):
            written[i] = 0
            output.drop("truncated_member", path.name)
        else:
            for j in range(count):
                key = raw.key if j == 0 else f"{raw.key}_dup{j}"
                output.write({"__key__": key, **raw.members}, path.name, duplicate=j > 0)
        i += 1
    if i != end:
        raise InputError(f"shard {path.name} changed while it was being filtered; run again")
