"""``nclean filter``: reshard the samples a sidecar keeps, optionally upsampled.

This module holds the job -- its options, its summary and :func:`run_filter`,
a short sequence of steps (join -> select -> copy -> stats); the passes
themselves live in their own modules, so each reads on its own.

Two passes over the input shards, both with :func:`cleaner.io.shards.read_shard`
(robust to truncated or corrupt tars):

1. **scan** (:mod:`pipelines.filter_join`) -- tar headers only (no member
   data is read, except the ``.json`` uid for a sidecar that finds samples
   by uid): every sample is joined to the sidecar at once, by the
   sidecar's ``join`` -- (shard, key), key or uid, see
   :mod:`cleaner.train.lookup` -- so a sidecar that does not match the
   shards is a :class:`~cleaner.train.weights.SidecarMismatchError` with
   counts *before* anything is written, and so is a filter that would keep
   nothing; the keep/drop decision, the drop reasons and the number of
   copies of every sample are planned here.
2. **copy** (:mod:`pipelines.filter_write`) -- the kept samples' members are
   copied byte for byte into ``{i:06d}.tar`` output shards of at most
   ``maxcount`` samples with ``webdataset.TarWriter``, keys unchanged (an
   upsampled sample's extra copies get ``_dup1``, ``_dup2``, ... appended),
   each shard with a ``{i:06d}_stats.json``; ``stats.json`` (the totals) is
   written last and marks a finished job. Every file is written to a
   temporary name and renamed into place, so a killed job never leaves a
   half-written shard under a final name.

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

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from cleaner.errors import ConfigError, InputError
from cleaner.io.schema import SchemaError
from cleaner.io.shards import expand_shards
from cleaner.train.weights import Verdicts
from pipelines.filter_join import Plan, Scan, plan_copies, scan_shards, upsample_counts
from pipelines.filter_write import (
    DATACOMP_UID_DTYPE,
    OUTPUT_NAME,
    STATS_NAME,
    TOTAL_STATS,
    atomic_json,
    check_out,
    clear_out,
    copy_kept,
    uids_to_datacomp,
    write_keep_list,
    write_sidecar_keep_list,
)

__all__ = [
    "DATACOMP_UID_DTYPE",
    "OUTPUT_NAME",
    "STATS_NAME",
    "TOTAL_STATS",
    "FilterJob",
    "FilterSummary",
    "run_filter",
    "uids_to_datacomp",
    "upsample_counts",
    "write_keep_list",
]


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
    _check_job(job)
    paths = expand_shards(job.shards)
    verdicts = _load_verdicts(job.weights)
    # before the scan: cheap mistakes
    earlier = check_out(Path(job.out), paths, job.overwrite) if job.out else []
    # a sidecar scored from clip-retrieval embeddings may find samples by uid
    scan = scan_shards(paths, job.progress, uid_field="uid" if verdicts.join == "uid" else None)
    plan = plan_copies(scan, verdicts, job)
    copies, shard_stats = plan.copies, []
    if job.out:
        # cleared only once the plan stands: a failed plan leaves old output alone
        clear_out(Path(job.out), earlier)
        copies, shard_stats = copy_kept(scan, plan, Path(job.out), job.maxcount, job.progress)
    keep_rows = None
    if job.keep_list:
        keep_rows = write_sidecar_keep_list(verdicts, plan.rows, copies, job.keep_list)
    summary = _summarise(paths, scan, plan, copies, verdicts)
    summary.output_shards = [s["shard"] for s in shard_stats]
    summary.keep_list_rows = keep_rows
    if job.out:
        summary.stats_path = _write_total_stats(job, paths, scan, summary, shard_stats)
    return summary


def _check_job(job: FilterJob) -> None:
    if not job.out and not job.keep_list:
        raise ConfigError("nothing to write: give --out and/or --keep-list")
    if job.maxcount < 1:
        raise ConfigError("--maxcount must be at least 1")
    if job.on_missing not in ("error", "drop", "zero"):
        raise ConfigError("--on-missing must be error or drop")


def _load_verdicts(weights: list[str]) -> Verdicts:
    try:
        return Verdicts.load(weights)
    except SchemaError as exc:
        raise InputError(f"--weights: {exc}") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"--weights: cannot read sidecar ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"--weights: {exc}") from None


def _summarise(
    paths: list[Path], scan: Scan, plan: Plan, copies: np.ndarray, verdicts: Verdicts
) -> FilterSummary:
    """The totals, given the copies actually written (a truncated member drops a sample)."""
    reasons = Counter(r for r in plan.reasons if r is not None)
    truncated = int(((plan.copies > 0) & (copies == 0)).sum())
    if truncated:
        reasons["truncated_member"] += truncated
    matched = set(plan.rows[plan.rows >= 0].tolist())
    in_sidecar = (
        sum(len(verdicts.rows_of_shard(p.name)) for p in paths)
        if verdicts.join == "shard_key"
        else len(verdicts)  # by key or uid no row belongs to a shard: count them all
    )
    return FilterSummary(
        input_shards=len(paths),
        input_samples=len(scan.keys),
        kept=int((copies > 0).sum()),
        written=int(copies.sum()),
        dropped=int((copies == 0).sum()),
        reasons=dict(sorted(reasons.items())),
        unreadable_shards=dict(scan.unreadable),
        sidecar_rows_without_sample=in_sidecar - len(matched),
    )


def _write_total_stats(
    job: FilterJob, paths: list[Path], scan: Scan, summary: FilterSummary, shard_stats: list[dict]
) -> str:
    """Write ``stats.json`` (last: it marks a finished job); return its path."""
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
        "keep_list": {"path": str(job.keep_list), "rows": summary.keep_list_rows}
        if job.keep_list
        else None,
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
    atomic_json(total, stats_path)
    return str(stats_path)
