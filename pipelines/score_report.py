"""What the score job tells its caller: the summary, phase timings, and the
warnings and messages that explain a run (kept out of the stage code)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from pipelines.fit_stage import log


@dataclass
class ScoreSummary:
    rows: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    parts_written: int = 0
    parts_skipped: int = 0
    fatal_shards: dict[str, str] = field(default_factory=dict)
    shard_warnings: dict[str, list[str]] = field(default_factory=dict)
    merged: str | None = None
    merged_written: bool = False
    parts_dir: str = ""
    fit: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


class Phases:
    """Times each phase into ``summary.timings`` and tells ``callback``."""

    def __init__(self, summary: ScoreSummary, callback):
        self.summary, self.callback = summary, callback
        self.name, self.t0 = None, 0.0

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.name is not None:
            timings = self.summary.timings
            timings[self.name] = timings.get(self.name, 0.0) + now - self.t0
        self.name, self.t0 = (None if name == "done" else name), now
        if self.callback is not None:
            self.callback(name)


def nothing_usable_message(job, cache, stems: list[str]) -> str:
    """Why not one sample is scorable, with counts per status and a hint."""
    status: Counter = Counter()
    for stem in stems:
        if cache.info(stem) is not None:
            col = pq.read_table(cache.meta_path(stem), columns=["status"]).column("status")
            status.update(col.to_pylist())
        else:
            status.update(cache.load(stem).meta.column("status").to_pylist())
    n = sum(status.values())
    where = f"{len(stems)} shard{'s' if len(stems) != 1 else ''}"
    if n == 0:
        return f"nothing could be scored: {where} without a single sample"
    detail = ", ".join(f"{v} {k}" for k, v in status.most_common())
    msg = f"nothing could be scored: {n} samples in {where}, none usable ({detail})"
    spec = job.sample_spec
    if job.embeddings is None and (status["missing_image"] or status["missing_text"]):
        msg += (
            f"; check --image-key (now {';'.join(spec.image_keys)}) and --text-key "
            f"(now {spec.text_key}) against the shards' member names"
        )
    return msg


def warn_negative_beta(fit: dict) -> None:
    beta = (fit.get("beta") or {}).get("value")
    if beta is not None and beta < 0:
        log(
            f"warning: beta = {beta:.4f} < 0: OSA's cubic gives the best matches "
            f"(cosine > {1 + beta:.4f}) weight 0 and clean pairs less weight; "
            "to keep pairs by OSA's own rule filter on cosine > beta, not osa_weight > 0"
        )


def warn_missing_uids(job, cache, stems: list[str]) -> str | None:
    """One warning when --uid-field was not found in some samples (their uid
    is null); returns it. A warning, not an error: uids are an optional join
    key that does not change any score, and the count is only known after
    the embedding pass, whose work an error would throw away."""
    field_name = job.sample_spec.uid_field
    if not field_name or job.embeddings is not None:
        return None
    missing = total = 0
    for stem in stems:
        uid = pq.read_table(cache.meta_path(stem), columns=["uid"]).column("uid")
        missing += uid.null_count
        total += len(uid)
    if not missing:
        return None
    msg = (
        f"warning: --uid-field {field_name!r} missing in {missing} of {total} samples "
        "(no .json member, or no such field): their uid is null"
    )
    if missing == total:
        msg += "; check the field name"
    log(msg)
    return msg
