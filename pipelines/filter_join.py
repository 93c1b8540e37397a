"""Pass 1 of ``nclean filter``: join shard headers to the sidecar and plan the copies.

Only tar headers are read here (no member data), and nothing is written: a
sidecar that does not match the shards, a bad ``--where`` or ``--upsample``
and colliding output keys all fail in this pass, before any output exists.
Kept apart from the writing (:mod:`pipelines.filter_write`) because the plan
is a pure function of the scan and the sidecar, and reads best on its own.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from cleaner.errors import ConfigError
from cleaner.io.decode import read_uid
from cleaner.io.shards import ShardReadError, ShardReport, read_shard
from cleaner.progress import progress_bar
from cleaner.train.lookup import JOINS
from cleaner.train.weights import OPT_OUT_HINT, SidecarMismatchError, Verdicts


class Selection(Protocol):
    """The options that decide which samples are kept, and how often
    (:class:`pipelines.filter_job.FilterJob` has them)."""

    where: str | None
    upsample: str | None
    on_missing: str
    keep_failed: bool
    seed: int
    out: str | None  # resharded output (its keys must be unique), or only a keep list


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


@dataclass
class Scan:
    """Every sample's (shard, key), flat over the input shards in order."""

    paths: list[Path]
    starts: list[int]  # first sample of each shard in the flat arrays
    shard_names: list[str]  # per sample
    keys: list[str]  # per sample
    unreadable: dict[str, str]
    warnings: dict[str, list[str]]
    uids: list[str | None] | None = None  # per sample, when the sidecar joins by uid


def scan_shards(paths: list[Path], progress: bool, uid_field: str | None = None) -> Scan:
    """Read the tar headers of ``paths``; a shard that is no tar is noted, not raised.

    With ``uid_field`` (a sidecar that finds samples by uid) each sample's
    ``.json`` member is read too, for that field.
    """
    names, keys, starts, unreadable, warnings = [], [], [], {}, {}
    uids = [] if uid_field else None
    wanted = ("json",) if uid_field else ()
    for path in progress_bar(
        paths, desc="scan", unit="shard", disable=not progress, file=sys.stderr, leave=False
    ):
        starts.append(len(keys))
        report = ShardReport()
        try:
            # wanted=(): headers only, no member data is read (the json for uids)
            for raw in read_shard(path, wanted=wanted, report=report):
                keys.append(raw.key)
                names.append(path.name)
                if uids is not None:
                    uids.append(read_uid(raw.members, uid_field))
        except ShardReadError as exc:
            unreadable[path.name] = str(exc)
        if report.warnings:
            warnings[path.name] = report.warnings
    return Scan(paths, starts, names, keys, unreadable, warnings, uids)


@dataclass
class Plan:
    """Per scanned sample: its sidecar row, its copies and why it is dropped."""

    rows: np.ndarray  # sidecar row per sample, -1 when none
    copies: np.ndarray  # copies to write per sample (0 = dropped)
    reasons: np.ndarray  # drop reason per sample (object; None when kept)


def plan_copies(scan: Scan, verdicts: Verdicts, sel: Selection) -> Plan:
    """Join ``scan`` to the sidecar and decide every sample's copies (0 = dropped).

    Raises SidecarMismatchError for samples without a row (``on_missing="error"``),
    ConfigError for bad expressions, unusable upsampling weights or output
    keys that would not be unique.
    """
    rows = _lookup_rows(scan, verdicts, sel.on_missing)
    try:
        mask = verdicts.mask(sel.where, keep_failed=sel.keep_failed)
        weights = (
            verdicts.weights(sel.upsample, keep_failed=sel.keep_failed) if sel.upsample else None
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    found = rows >= 0
    keep = np.zeros(len(rows), dtype=bool)
    keep[found] = mask[rows[found]]
    reasons = _drop_reasons(rows, keep, verdicts, sel.keep_failed)
    copies = keep.astype(np.int64)
    if weights is not None and keep.any():
        copies[keep] = _upsampled_copies(weights[rows[keep]], sel)
        reasons[keep & (copies == 0)] = "upsample_zero"
    check_something_kept(scan, rows, copies, reasons, verdicts)
    if sel.out:  # a keep list names uids: keys that repeat across shards do no harm there
        check_output_keys(scan, copies)
    return Plan(rows, copies, reasons)


def check_something_kept(scan: Scan, rows, copies, reasons, verdicts: Verdicts) -> None:
    """A filter that keeps nothing is an error, not an empty output: either
    no sample found its row (a sidecar of other data, even with
    ``--on-missing drop``) or the selection drops every sample."""
    n = len(rows)
    if n == 0 or (copies > 0).any():
        return
    if not (rows >= 0).any():
        shards = list(dict.fromkeys(scan.shard_names))
        shown = ", ".join(shards[:5]) + (f" and {len(shards) - 5} more" if len(shards) > 5 else "")
        raise SidecarMismatchError(
            f"none of the {n} samples has a row in the sidecar (matched by "
            f"{JOINS[verdicts.join]}; shards: {shown}; the sidecar covers "
            f"{len(verdicts)} rows); is it the sidecar of these shards? nothing written"
        )
    counts = Counter(r for r in reasons if r is not None).most_common()
    detail = ", ".join(f"{reason} {count}" for reason, count in counts)
    raise ConfigError(f"nothing to keep: all {n} samples are dropped ({detail}); nothing written")


def _lookup_rows(scan: Scan, verdicts: Verdicts, on_missing: str) -> np.ndarray:
    try:
        return verdicts.lookup(scan.shard_names, scan.keys, on_missing=on_missing, uids=scan.uids)
    except SidecarMismatchError as exc:
        # the library's hint names its keyword; a CLI user needs the flag
        raise SidecarMismatchError(
            str(exc).replace(OPT_OUT_HINT, "--on-missing drop opts out")
        ) from None


def _drop_reasons(
    rows: np.ndarray, keep: np.ndarray, verdicts: Verdicts, keep_failed: bool
) -> np.ndarray:
    """Why each sample is dropped (None when kept): no row, its status, or ``where``."""
    n = len(rows)
    found = rows >= 0
    reasons = np.full(n, None, dtype=object)
    reasons[~found] = "no_sidecar_row"
    if not keep_failed:
        failed = np.zeros(n, dtype=bool)
        failed[found] = verdicts.failed()[rows[found]]
        status = (
            verdicts.table.column("status")
            .take(pa.array(rows[failed]))
            .to_numpy(zero_copy_only=False)
        )
        reasons[failed] = status
    reasons[found & ~keep & (reasons == None)] = "where"  # noqa: E711 - elementwise on an object array
    return reasons


def _upsampled_copies(w: np.ndarray, sel: Selection) -> np.ndarray:
    """Copies of the kept samples with weights ``w``: ``w / mean(w)`` in expectation."""
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ConfigError(
            f"--upsample {sel.upsample!r} gives negative or non-finite weights for kept samples"
        )
    mean = w.mean()
    if mean <= 0:
        raise ConfigError(f"--upsample {sel.upsample!r} is 0 for every kept sample")
    return upsample_counts(w / mean, sel.seed)


def check_output_keys(scan: Scan, copies: np.ndarray) -> None:
    """Output keys must be unique: webdataset merges neighbouring samples with one key."""
    keys = np.asarray(scan.keys, dtype=object)
    kept = keys[copies > 0]
    uniq, counts = (
        np.unique(kept.astype(str), return_counts=True) if len(kept) else (kept, np.zeros(0))
    )
    if (counts > 1).any():
        example = str(uniq[np.argmax(counts > 1)])  # repr of a plain str, not np.str_
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
