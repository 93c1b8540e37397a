"""``nclean filter``: reshard the samples a sidecar keeps, optionally upsampled.

Two passes over the input shards, both with :func:`cleaner.io.shards.read_shard`
(robust to truncated or corrupt tars):

1. **scan** -- tar headers only (no member data is read): every sample's
   (shard, key) is joined to the sidecar at once, so a sidecar that does not
   match the shards is a :class:`~cleaner.train.weights.SidecarMismatchError`
   with counts *before* anything is written; the keep/drop decision, the
   drop reasons and the number of copies of every sample are planned here.
2. **copy** -- the kept samples' members are copied byte for byte into
   ``{i:06d}.tar`` output shards of at most ``maxcount`` samples with
   ``webdataset.TarWriter``, keys unchanged (an upsampled sample's extra
   copies get ``_dup1``, ``_dup2``, ... appended), each shard with a
   ``{i:06d}_stats.json``; ``stats.json`` (the totals) is written last and
   marks a finished job. Every file is written to a temporary name and
   renamed into place, so a killed job never leaves a half-written shard
   under a final name.

Upsampling (``upsample``) follows DataComp: a kept sample with weight
``w_i`` gets ``r_i = w_i / mean(w)`` expected copies (the mean over the kept
samples), rounded to integers by *systematic rounding* -- one seeded uniform
offset ``u`` and the running sum ``C_i`` of the ``r`` in input order give
``c_i = floor(C_i + u) - floor(C_{i-1} + u)``. Each count differs from
``r_i`` by less than 1, its expectation is exactly ``r_i``, and the total is
the number of kept samples (give or take one for float rounding), so an
upsampled dataset is as large as the filtered one. A sample whose count
comes out 0 is dropped (reason ``upsample_zero``).

``keep_list`` writes a DataComp subset file: the kept samples' uids (32 hex
digits) as a sorted numpy array of dtype ``"u8,u8"`` (high and low 64 bits),
each uid repeated once per copy, exactly what DataComp's ``resharder.py``
loads and probes with ``np.searchsorted``.

Drop reasons in the stats: a row's ``status`` (``decode_error``,
``duplicate_key``, ...) for rows that could not be scored, ``where`` when the
expression is false, ``upsample_zero``, ``no_sidecar_row`` (only with
``on_missing="drop"``) and ``truncated_member`` (member data cut off, seen
while copying).
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import webdataset as wds
from tqdm import tqdm

from cleaner.errors import ConfigError, InputError
from cleaner.io.atomic import atomic_path, write_json
from cleaner.io.schema import SchemaError
from cleaner.io.shards import ShardReadError, ShardReport, expand_shards, read_shard
from cleaner.train.weights import OPT_OUT_HINT, SidecarMismatchError, Verdicts

DATACOMP_UID_DTYPE = np.dtype("u8,u8")  # as DataComp's baselines and resharder.py
OUTPUT_NAME = "{:06d}.tar"
STATS_NAME = "{:06d}_stats.json"
TOTAL_STATS = "stats.json"
_OURS = re.compile(
    r"^(\d{6}\.tar|\d{6}_stats\.json|stats\.json|\.(\d{6}\.tar|\d{6}_stats\.json|stats\.json)\.tmp)$"
)


@dataclass
class FilterJob:
    """What to filter and where to put it (the command line, parsed).

    ``out`` and ``keep_list`` are each optional, but one must be given.
    ``on_missing`` is ``"error"`` or ``"drop"`` (``"zero"`` means the same
    here: a sample without a row has no weight and is not kept).
    """

    shards: list[str]
    weights: list[str]
    out: str | None = None
    where: str | None = None
    upsample: str | None = None
    keep_list: str | None = None
    maxcount: int = 10_000
    on_missing: str = "error"
    keep_failed: bool = False
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    argv: list[str] | None = None


@dataclass
class FilterSummary:
    """Totals of a finished job (also written to ``stats.json``)."""

    input_shards: int
    input_samples: int
    kept: int
    written: int
    dropped: int
    reasons: dict[str, int]
    output_shards: list[str] = field(default_factory=list)
    keep_list_rows: int | None = None
    unreadable_shards: dict[str, str] = field(default_factory=dict)
    sidecar_rows_without_sample: int = 0
    stats_path: str | None = None


# --------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------


def upsample_counts(ratios: np.ndarray, seed: int = 0) -> np.ndarray:
    """Integer copy counts with expectation ``ratios``, by systematic rounding.

    ``c_i = floor(C_i + u) - floor(C_{i-1} + u)`` with ``C`` the running sum
    of ``ratios`` and one uniform ``u`` from ``seed``: each ``c_i`` is
    ``floor(r_i)`` or ``ceil(r_i)``, ``E[c_i] = r_i``, and ``sum(c)`` is
    ``floor`` or ``ceil`` of ``sum(r)``.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if not np.all(np.isfinite(r)) or (r < 0).any():
        raise ValueError("upsampling ratios must be finite and non-negative")
    if len(r) == 0:
        return np.zeros(0, dtype=np.int64)
    u = np.random.default_rng(seed).random()
    edges = np.floor(np.cumsum(r) + u)
    return np.diff(edges, prepend=0.0).astype(np.int64)  # floor(u) == 0


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


def _atomic_json(obj: dict, path: Path) -> None:
    write_json(path, obj, indent=2)


# --------------------------------------------------------------------------
# Pass 1: scan and plan
# --------------------------------------------------------------------------


@dataclass
class _Scan:
    paths: list[Path]
    starts: list[int]  # first sample of each shard in the flat arrays
    shard_names: list[str]  # per sample
    keys: list[str]  # per sample
    unreadable: dict[str, str]
    warnings: dict[str, list[str]]


def _scan(paths: list[Path], progress: bool) -> _Scan:
    names, keys, starts, unreadable, warnings = [], [], [], {}, {}
    for path in tqdm(
        paths, desc="scan", unit="shard", disable=not progress, file=sys.stderr, leave=False
    ):
        starts.append(len(keys))
        report = ShardReport()
        try:
            # wanted=(): headers only, no member data is read
            for raw in read_shard(path, wanted=(), report=report):
                keys.append(raw.key)
                names.append(path.name)
        except ShardReadError as exc:
            unreadable[path.name] = str(exc)
        if report.warnings:
            warnings[path.name] = report.warnings
    return _Scan(paths, starts, names, keys, unreadable, warnings)


@dataclass
class _Plan:
    rows: np.ndarray  # sidecar row per sample, -1 when none
    copies: np.ndarray  # copies to write per sample (0 = dropped)
    reasons: np.ndarray  # drop reason per sample (object; None when kept)


def _plan(scan: _Scan, verdicts: Verdicts, job: FilterJob) -> _Plan:
    try:
        rows = verdicts.lookup(scan.shard_names, scan.keys, on_missing=job.on_missing)
    except SidecarMismatchError as exc:
        raise SidecarMismatchError(
            str(exc).replace(OPT_OUT_HINT, "--on-missing drop opts out")
        ) from None
    try:
        mask = verdicts.mask(job.where, keep_failed=job.keep_failed)
        weights = (
            verdicts.weights(job.upsample, keep_failed=job.keep_failed) if job.upsample else None
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    n = len(rows)
    found = rows >= 0
    keep = np.zeros(n, dtype=bool)
    keep[found] = mask[rows[found]]
    reasons = np.full(n, None, dtype=object)
    reasons[~found] = "no_sidecar_row"
    if not job.keep_failed:
        failed = np.zeros(n, dtype=bool)
        failed[found] = verdicts.failed()[rows[found]]
        status = (
            verdicts.table.column("status")
            .take(pa.array(rows[failed]))
            .to_numpy(zero_copy_only=False)
        )
        reasons[failed] = status
    reasons[found & ~keep & (reasons == None)] = "where"  # noqa: E711 - elementwise on an object array
    copies = keep.astype(np.int64)
    if weights is not None and keep.any():
        w = weights[rows[keep]]
        if not np.all(np.isfinite(w)) or (w < 0).any():
            raise ConfigError(
                f"--upsample {job.upsample!r} gives negative or non-finite weights for kept samples"
            )
        mean = w.mean()
        if mean <= 0:
            raise ConfigError(f"--upsample {job.upsample!r} is 0 for every kept sample")
        copies[keep] = upsample_counts(w / mean, job.seed)
        zero = keep & (copies == 0)
        reasons[zero] = "upsample_zero"
    _check_keys(scan, copies)
    return _Plan(rows, copies, reasons)


def _check_keys(scan: _Scan, copies: np.ndarray) -> None:
    """Output keys must be unique: webdataset merges neighbouring samples with one key."""
    keys = np.asarray(scan.keys, dtype=object)
    kept = keys[copies > 0]
    uniq, counts = (
        np.unique(kept.astype(str), return_counts=True) if len(kept) else (kept, np.zeros(0))
    )
    if (counts > 1).any():
        example = uniq[np.argmax(counts > 1)]
        raise ConfigError(
            f"{int((counts > 1).sum())} keys are kept more than once (e.g. {example!r}, in several shards); "
            "output keys must be unique"
        )
    multi = np.flatnonzero(copies > 1)
    if len(multi):
        existing = set(scan.keys)
        for i in multi:
            for j in range(1, int(copies[i])):
                if f"{keys[i]}_dup{j}" in existing:
                    raise ConfigError(
                        f"upsampled key {keys[i]}_dup{j} would collide with an existing key"
                    )


# --------------------------------------------------------------------------
# Pass 2: copy
# --------------------------------------------------------------------------


class _ShardedOutput:
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
        _atomic_json(stats, self.out / STATS_NAME.format(self.index))
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


def _check_out(out: Path, inputs: list[Path], overwrite: bool) -> list[Path]:
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


def _clear_out(out: Path, ours: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # stats.json first: without it the folder no longer claims a finished job
    for f in sorted(ours, key=lambda f: f.name != TOTAL_STATS):
        f.unlink()


def _copy(
    scan: _Scan, plan: _Plan, out: Path, maxcount: int, progress: bool
) -> tuple[np.ndarray, list[dict]]:
    """Write the planned copies; return the copies actually written per sample and the shard stats."""
    written = plan.copies.copy()
    output = _ShardedOutput(out, maxcount)
    try:
        ends = [*scan.starts[1:], len(scan.keys)]
        todo = [
            t
            for t in zip(scan.paths, scan.starts, ends, strict=True)
            if t[0].name not in scan.unreadable
        ]
        for path, start, end in tqdm(
            todo, desc="filter", unit="shard", disable=not progress, file=sys.stderr, leave=False
        ):
            i = start
            for raw in read_shard(path, wanted=None):
                if i >= end or raw.key != scan.keys[i]:
                    raise InputError(
                        f"shard {path.name} changed while it was being filtered; run again"
                    )
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
                raise InputError(
                    f"shard {path.name} changed while it was being filtered; run again"
                )
        return written, output.close()
    except BaseException:
        output.abort()
        raise


# --------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------


def run_filter(job: FilterJob) -> FilterSummary:
    """Filter (and optionally upsample) shards by a sidecar; see the module docstring.

    Raises
    ------
    ConfigError
        bad options or expressions, an ``--out`` folder that is not free,
        uids unusable for ``--keep-list``.
    cleaner.train.weights.SidecarMismatchError
        samples without a row in the sidecar (``on_missing="error"``).
    InputError
        an unreadable sidecar.
    """
    if not job.out and not job.keep_list:
        raise ConfigError("nothing to write: give --out and/or --keep-list")
    if job.maxcount < 1:
        raise ConfigError("--maxcount must be at least 1")
    if job.on_missing not in ("error", "drop", "zero"):
        raise ConfigError("--on-missing must be error or drop")
    paths = expand_shards(job.shards)
    try:
        verdicts = Verdicts.load(job.weights)
    except SchemaError as exc:
        raise InputError(f"--weights: {exc}") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"--weights: cannot read sidecar ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"--weights: {exc}") from None
    earlier = (
        _check_out(Path(job.out), paths, job.overwrite) if job.out else []
    )  # before the scan: cheap mistakes

    scan = _scan(paths, job.progress)
    plan = _plan(scan, verdicts, job)
    if job.out:
        _clear_out(
            Path(job.out), earlier
        )  # only once the plan stands: a failed plan leaves old output alone

    shard_stats: list[dict] = []
    copies = plan.copies
    if job.out:
        copies, shard_stats = _copy(scan, plan, Path(job.out), job.maxcount, job.progress)
    reasons = Counter(r for r in plan.reasons if r is not None)
    truncated = int(((plan.copies > 0) & (copies == 0)).sum())
    if truncated:
        reasons["truncated_member"] += truncated

    keep_rows = None
    if job.keep_list:
        kept = copies > 0
        uids = verdicts.table.column("uid").take(pa.array(plan.rows[kept])).to_pylist()
        absent = sum(u is None for u in uids)
        if absent:
            raise ConfigError(
                f"{absent} of {len(uids)} kept samples have no uid in the sidecar; "
                "--keep-list needs DataComp uids (score with --uid-field uid)"
            )
        keep_rows = write_keep_list(uids, copies[kept], job.keep_list)

    matched = set(plan.rows[plan.rows >= 0].tolist())
    in_sidecar = sum(len(verdicts.rows_of_shard(p.name)) for p in paths)
    summary = FilterSummary(
        input_shards=len(paths),
        input_samples=len(scan.keys),
        kept=int((copies > 0).sum()),
        written=int(copies.sum()),
        dropped=int((copies == 0).sum()),
        reasons=dict(sorted(reasons.items())),
        output_shards=[s["shard"] for s in shard_stats],
        keep_list_rows=keep_rows,
        unreadable_shards=dict(scan.unreadable),
        sidecar_rows_without_sample=in_sidecar - len(matched),
    )
    if job.out:
        total = {
            "input_shards": [p.name for p in paths],
            "input_samples": summary.input_samples,
            "kept": summary.kept,
            "written": summary.written,
            "duplicates": summary.written - summary.kept,
            "dropped": summary.dropped,
            "reasons": summary.reasons,
            "output_shards": [{"shard": s["shard"], "count": s["written"]} for s in shard_stats],
            "unreadable_shards": summary.unreadable_shards,
            "shard_warnings": scan.warnings,
            "sidecar_rows_without_sample": summary.sidecar_rows_without_sample,
            "keep_list": {"path": str(job.keep_list), "rows": keep_rows} if job.keep_list else None,
            "settings": {
                "weights": [str(w) for w in job.weights],
                "where": job.where,
                "upsample": job.upsample,
                "maxcount": job.maxcount,
                "on_missing": job.on_missing,
                "keep_failed": job.keep_failed,
                "seed": job.seed,
            },
            "argv": job.argv,
        }
        stats_path = Path(job.out) / TOTAL_STATS
        _atomic_json(total, stats_path)
        summary.stats_path = str(stats_path)
    return summary
