"""``nclean score``: embed -> global fit -> per-shard transform -> parts.

The job is resumable at every step:

1. *embed* (shards input only): cache partitions that exist and validate
   are skipped (:mod:`pipelines.embed_job`).
2. *fit*: global statistics (beta; the other methods' fits) are computed
   once and stored in ``_nclean/fit.json``; a rerun with the same settings
   reuses them, so resumed parts use exactly the same parameters.
3. *transform*: each shard's part is written atomically; a part that exists,
   validates and carries the current fit id is skipped.
4. *merge* (``--out x.parquet``): only when a part changed or the merged
   file is missing or stale -- a second identical run leaves it untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from cleaner import __version__, faults
from cleaner.errors import ConfigError, InputError, NothingScoredError
from cleaner.io import schema as S
from cleaner.io.atomic import atomic_path, write_json
from cleaner.io.decode import SampleSpec
from cleaner.io.embcache import EmbeddingCache, validate_dir
from cleaner.io.shards import expand_shards, shard_stem
from cleaner.io.sidecar import atomic_write_table, merge_parts, part_is_valid
from cleaner.methods.beta import (
    DEFAULT_NOISE_K,
    DEFAULT_SHUFFLED_K,
    BetaEstimate,
    noise_beta,
    sample_mismatched_indices,
    shuffled_beta_from_rows,
)
from pipelines.embed_job import (
    EmbedReport,
    EstimatorSpec,
    check_batch_and_workers,
    describe_changes,
    file_fingerprint,
    run_embed,
)
from pipelines.layout import OutputLayout
from pipelines.methods import (
    MethodSettings,
    ShardView,
    build_indexes,
    fit_clipcleaner,
    fit_methods,
    load_class_names,
    scorers_from_params,
    transform_shard,
)


@dataclass
class ScoreSettings:
    """Everything that changes the scores (stored, and compared on resume)."""

    methods: list[str] = field(default_factory=lambda: ["osa"])
    beta_source: str = "noise"  # noise | shuffled
    beta_samples: int | None = None  # K; None = the source's default
    beta: float | None = None  # set by hand: skips estimation
    seed: int = 0
    method: MethodSettings = field(default_factory=MethodSettings)


@dataclass
class ScoreJob:
    out: str
    shards: list[str] | None = None
    embeddings: str | None = None
    cache: str | None = None
    estimator: EstimatorSpec = field(default_factory=EstimatorSpec)
    sample_spec: SampleSpec = field(default_factory=SampleSpec)
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    batch_size: int | None = None
    workers: int = 2
    overwrite: bool = False
    progress: bool = True
    engine: str = "local"  # local | ray
    ray_address: str | None = None
    argv: list[str] = field(default_factory=list)
    # True when --beta-source was given on the command line (not just its
    # default): with --beta it would be silently ignored, so that is an error.
    # The CLI can only tell by asking click (ctx.get_parameter_source).
    beta_source_explicit: bool = False
    # called with a phase name (embed, fit, index, transform, merge) as each
    # starts and with "done" at the end; benchmarks hang timers on it
    on_phase: object = None


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


# ---------------------------------------------------------------------------
def _log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def _check_settings(job: ScoreJob) -> None:
    st = job.settings
    if job.engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, not {job.engine!r}")
    if st.beta_source not in ("noise", "shuffled"):
        raise ConfigError(f"--beta-source must be noise or shuffled, not {st.beta_source!r}")
    if (job.shards is None) == (job.embeddings is None):
        raise ConfigError("give shards, or --embeddings DIR, but not both")
    if (
        "osa" in st.methods
        and job.embeddings is not None
        and st.beta is None
        and st.beta_source == "noise"
    ):
        raise ConfigError(
            "--beta-source noise needs the model, which --embeddings input does not load; "
            "use --beta-source shuffled or set --beta VALUE"
        )
    if st.beta_samples is not None and st.beta_samples < 2:
        raise ConfigError("--beta-samples must be at least 2")
    if st.beta is not None:
        if not math.isfinite(st.beta) or not -1.0 < st.beta < 1.0:
            raise ConfigError(
                f"--beta must be a finite cosine between -1 and 1, not {st.beta}"
                " (outside that range every osa_weight is 0)"
            )
        if st.beta_source != "noise" or job.beta_source_explicit:
            raise ConfigError(
                f"--beta sets beta by hand, so --beta-source {st.beta_source} would be ignored; "
                "give one of them"
            )
        if st.beta_samples is not None:
            raise ConfigError(
                "--beta sets beta by hand, so --beta-samples would be ignored; give one of them"
            )
    check_batch_and_workers(job.batch_size, job.workers)


def _settings_json(settings: ScoreSettings) -> dict:
    """Settings as they read back from JSON (tuples become lists), so a
    stored fit compares equal to the same settings given again."""
    return json.loads(json.dumps(asdict(settings), sort_keys=True))


def _fit_id(fit: dict) -> str:
    return hashlib.sha1(json.dumps(fit, sort_keys=True).encode()).hexdigest()[:16]


def _ok_counts(cache: EmbeddingCache, stems: list[str]) -> list[int]:
    counts = []
    for stem in stems:
        counts.append(int(cache.ok_mask(stem).sum()))
    return counts


def _gather_rows(
    cache: EmbeddingCache,
    stems: list[str],
    ok_counts: list[int],
    global_rows: np.ndarray,
    which: str,
) -> np.ndarray:
    """Fetch rows (numbered over the ok rows of all shards, in order) from
    the memory-mapped cache, one shard at a time."""
    offsets = np.concatenate([[0], np.cumsum(ok_counts)])
    out = None
    order = np.argsort(global_rows, kind="stable")
    sorted_rows = global_rows[order]
    shard_of = np.searchsorted(offsets, sorted_rows, side="right") - 1
    for s in np.unique(shard_of):
        stem = stems[s]
        ok_idx = np.flatnonzero(cache.ok_mask(stem))
        img, txt = cache.open_vectors(stem)
        arr = img if which == "image" else txt
        sel = shard_of == s
        local = ok_idx[sorted_rows[sel] - offsets[s]]
        vals = np.asarray(arr[local], dtype=np.float32)
        if out is None:
            out = np.zeros((len(global_rows), vals.shape[1]), np.float32)
        out[order[sel]] = vals
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def _estimate_beta(
    job: ScoreJob, cache: EmbeddingCache, stems: list[str], counts: list[int]
) -> BetaEstimate:
    st = job.settings
    if st.beta is not None:
        return BetaEstimate.manual(st.beta)
    if st.beta_source == "noise":
        k = st.beta_samples or DEFAULT_NOISE_K
        _log(f"estimating beta from {k} noise images x {k} random token sequences ...")
        return noise_beta(job.estimator.get(), k=k, seed=st.seed)
    k = st.beta_samples or DEFAULT_SHUFFLED_K
    if sum(counts) < 2:
        raise NothingScoredError(
            "shuffled beta needs at least two scorable samples; none or one found"
        )
    i, j = sample_mismatched_indices(counts, k, st.seed)
    if len(i) < k:
        _log(
            f"shuffled beta: {sum(counts)} scorable samples support {len(i)} independent "
            f"mismatched pairs, not {k}: using K={len(i)}"
        )
    return shuffled_beta_from_rows(
        _gather_rows(cache, stems, counts, i, "image"),
        _gather_rows(cache, stems, counts, j, "text"),
        st.seed,
    )


def _n_classes(job: ScoreJob) -> int | None:
    if "clipcleaner" not in job.settings.methods:
        return None
    return len(load_class_names(job.settings.method))


def layout_state_dir(job: ScoreJob) -> Path:
    return OutputLayout.from_out(job.out).state_dir


def _prompt_encoder(job: ScoreJob, state_dir: Path):
    """Prompt texts -> normalised text embeddings, cached in the job's state
    folder (keyed by the texts and the estimator) so a rerun or another
    setting does not re-encode them."""

    def encode(texts: list[str]) -> np.ndarray:
        ident = json.dumps({"texts": texts, "estimator": job.estimator.identity()}, sort_keys=True)
        digest = hashlib.sha1(ident.encode()).hexdigest()[:16]
        path = state_dir / f"prompt_emb_{digest}.npy"
        if path.exists():
            return np.load(path)
        est = job.estimator.get()
        import torch

        out = []
        for i in range(0, len(texts), 256):
            tokens = est.tokenizer(texts[i : i + 256])
            out.append(est.encode_text(torch.as_tensor(tokens)).cpu().numpy())
        emb = np.concatenate(out).astype(np.float32)
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, emb)
        return emb

    return encode


def _fit(job: ScoreJob, cache: EmbeddingCache, stems: list[str]) -> dict:
    st = job.settings
    counts = _ok_counts(cache, stems)
    if sum(counts) == 0:
        raise NothingScoredError(_nothing_usable_message(job, cache, stems))
    fit: dict = {"settings": _settings_json(st), "scorers": {}}
    if "osa" in st.methods:
        beta = _estimate_beta(job, cache, stems, counts)
        _log(
            f"beta = {beta.value:.4f} (source {beta.source}, K={beta.k}, std {beta.std:.4f}, se {beta.se:.5f})"
        )
        fit["beta"] = beta.to_dict()
        fit["scorers"]["osa"] = {"beta": beta.to_dict()}
    n_classes = _n_classes(job)
    try:
        fit["scorers"].update(
            fit_methods(
                st.methods, st.method, st.seed, cache, stems, counts, job.progress, n_classes
            )
        )
        if "clipcleaner" in st.methods:
            encode = _prompt_encoder(job, layout_state_dir(job))
            fit["scorers"]["clipcleaner"] = fit_clipcleaner(
                st.method,
                st.seed,
                cache,
                stems,
                counts,
                encode,
                layout_state_dir(job),
                job.progress,
            )
    except ValueError as exc:
        raise NothingScoredError(str(exc)) from None
    fit["ok_counts"] = counts
    return fit


def _nothing_usable_message(job: ScoreJob, cache: EmbeddingCache, stems: list[str]) -> str:
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


def _fingerprints(job: ScoreJob, cache: EmbeddingCache, stems: list[str], paths: dict) -> dict:
    """Each input's fingerprint as scored: for shards the one recorded when it
    was embedded (run_embed has just checked it still matches the file), for
    an embeddings folder its partition files."""
    out = {}
    for stem in stems:
        if job.embeddings is None:
            info = cache.info(stem) or {}
            out[stem] = info.get("shard_fingerprint") or file_fingerprint(paths[stem])
        else:
            out[stem] = {
                "metadata": file_fingerprint(cache.meta_path(stem)),
                "img_emb": file_fingerprint(cache.img_path(stem)),
                "text_emb": file_fingerprint(cache.text_path(stem)),
            }
    return out


def _refuse_changed(layout: OutputLayout, stored: dict, current: dict, names: dict) -> None:
    """ConfigError naming the inputs whose fingerprint differs from the one
    the job recorded when it scored them (stale rows otherwise). A job from
    before fingerprints were recorded has none: nothing to compare."""
    recorded = stored.get("fingerprints") or {}
    kinds = {
        frozenset(fp) for fp in (*recorded.values(), *current.values()) if isinstance(fp, dict)
    }
    if len(kinds) > 1:  # shard files ({size, mtime_ns}) vs embedding partitions
        raise ConfigError(
            f"{layout.parts_dir} was scored from another kind of input (shards vs --embeddings); "
            "pass --overwrite to redo it from this one, or choose another --out"
        )
    changed = [
        (names.get(s, s), recorded[s], current[s])
        for s in current
        if recorded.get(s) is not None and recorded[s] != current[s]
    ]
    if changed:
        raise ConfigError(
            f"{len(changed)} input(s) changed since {layout.parts_dir} was scored: "
            f"{describe_changes(changed)}; its rows are stale: pass --overwrite to "
            "redo them, or choose another --out"
        )


def _read_fit(layout: OutputLayout) -> dict | None:
    try:
        return json.loads(layout.fit_path.read_text())
    except (OSError, ValueError):
        return None


def _load_or_fit(
    job: ScoreJob,
    layout: OutputLayout,
    cache: EmbeddingCache,
    stems: list[str],
    fingerprints: dict | None = None,
    names: dict | None = None,
    unreadable: list[str] | None = None,
) -> dict:
    if layout.fit_path.exists():
        try:
            stored = json.loads(layout.fit_path.read_text())
        except (OSError, ValueError):
            stored = None
        same_settings = stored and stored.get("settings") == _settings_json(job.settings)
        if same_settings and stored.get("inputs") == stems:
            _refuse_changed(layout, stored, fingerprints or {}, names or {})
            return stored
        if same_settings and _only_recovered(stored, stems):
            # Shards that could not be read last time (exit 5) are readable
            # now: the global fit must include them, so fit again; every
            # part's fit_id changes and the parts are redone from the cache.
            recovered = sorted(set(stems) - set(stored["inputs"]))
            _refuse_changed(layout, stored, fingerprints or {}, names or {})
            _log(
                f"{len(recovered)} shard(s) unreadable last time can be read now "
                f"({', '.join(recovered[:3])}{' ...' if len(recovered) > 3 else ''}): "
                "fitting again over all shards"
            )
        elif stored:
            raise ConfigError(
                f"{layout.parts_dir} holds results made with other settings or inputs; "
                "pass --overwrite to redo them, or choose another --out"
            )
    fit = _fit(job, cache, stems)
    fit["inputs"] = stems
    fit["unreadable"] = sorted(unreadable or [])
    if fingerprints is not None:
        fit["fingerprints"] = fingerprints
    write_json(layout.fit_path, fit)
    return fit


def _only_recovered(stored: dict, stems: list[str]) -> bool:
    """True when ``stems`` are the stored inputs plus shards the stored run
    could not read (and nothing else changed)."""
    before, now = stored.get("inputs") or [], set(stems)
    added = now - set(before)
    return bool(added) and set(before) <= now and added <= set(stored.get("unreadable") or [])


def _warn_negative_beta(fit: dict) -> None:
    beta = (fit.get("beta") or {}).get("value")
    if beta is not None and beta < 0:
        _log(
            f"warning: beta = {beta:.4f} < 0: OSA's cubic gives the best matches "
            f"(cosine > {1 + beta:.4f}) weight 0 and clean pairs less weight; "
            "to keep pairs by OSA's own rule filter on cosine > beta, not osa_weight > 0"
        )


def _warn_missing_uids(job: ScoreJob, cache: EmbeddingCache, stems: list[str]) -> str | None:
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
    _log(msg)
    return msg


class _Phases:
    def __init__(self, summary: ScoreSummary, callback):
        self.summary, self.callback = summary, callback
        self.name, self.t0 = None, 0.0

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.name is not None:
            self.summary.timings[self.name] = (
                self.summary.timings.get(self.name, 0.0) + now - self.t0
            )
        self.name, self.t0 = (None if name == "done" else name), now
        if self.callback is not None:
            self.callback(name)


def run_score(job: ScoreJob) -> ScoreSummary:
    """Run the whole job; return what happened. Raises NcleanError subclasses
    for configuration problems and when nothing at all could be scored."""
    _check_settings(job)
    n_classes = _n_classes(job)
    if n_classes is not None:
        job.sample_spec.label_key = job.sample_spec.label_key or "cls"
        job.sample_spec.n_classes = n_classes
        # classification shards need not carry captions when only labels are scored
        job.sample_spec.text_required = job.settings.methods != ["clipcleaner"]
    layout = OutputLayout.from_out(job.out)
    summary = ScoreSummary(
        parts_dir=str(layout.parts_dir), merged=str(layout.merged) if layout.merged else None
    )
    phase = _Phases(summary, job.on_phase)
    phase("embed")
    paths: dict = {}  # shard stem -> path (shards input)
    if job.embeddings is not None:
        cache = validate_dir(job.embeddings)
        layout.prepare(job.overwrite)
        stems = cache.stems()
        embed_report = EmbedReport()
    else:
        shards = expand_shards(job.shards)
        stems_all = [shard_stem(p) for p in shards]
        paths = dict(zip(stems_all, shards))
        if len(set(stems_all)) != len(stems_all):
            raise ConfigError("two shards have the same name stem; sidecar parts would collide")
        layout.prepare(job.overwrite)
        stored = None if job.overwrite else _read_fit(layout)
        if stored:  # before the embedding pass: a changed shard is refused up front
            _refuse_changed(
                layout,
                stored,
                {s: file_fingerprint(paths[s]) for s in stems_all},
                {s: paths[s].name for s in stems_all},
            )
        cache = EmbeddingCache(job.cache or layout.default_cache)
        embed_report = run_embed(
            shards,
            cache,
            job.estimator,
            job.sample_spec,
            job.batch_size,
            job.workers,
            overwrite=job.overwrite and job.cache is not None,
            progress=job.progress,
            engine=job.engine,
            ray_address=job.ray_address,
        )
        summary.fatal_shards = dict(embed_report.fatal)
        stems = [s for s in stems_all if s not in embed_report.fatal]
        if not stems:
            fatal = list(embed_report.fatal.values())
            more = f"; and {len(fatal) - 3} more" if len(fatal) > 3 else ""
            raise InputError(
                f"no shard could be read ({len(fatal)} tried): " + "; ".join(fatal[:3]) + more
            )
        _warn_missing_uids(job, cache, stems)

    phase("fit")
    names = {s: paths[s].name for s in stems if s in paths}
    fit = _load_or_fit(
        job,
        layout,
        cache,
        stems,
        _fingerprints(job, cache, stems, paths),
        names,
        unreadable=list(summary.fatal_shards),
    )
    _warn_negative_beta(fit)
    summary.fit = fit
    fit_id = _fit_id(fit)
    methods = job.settings.methods
    n_classes = _n_classes(job)
    scorers = scorers_from_params(fit["scorers"], layout.state_dir)
    base_meta = {
        "nclean_version": __version__,
        "schema_version": S.SCHEMA_VERSION,
        "methods": methods,
        "fit_id": fit_id,
        "estimator": job.estimator.identity()
        if job.embeddings is None
        else {"embeddings": str(job.embeddings)},
        "beta": fit.get("beta"),
        "params": _params_for_metadata(fit["scorers"]),
        "settings": asdict(job.settings),
        "sample_spec": asdict(job.sample_spec),
        "argv": job.argv,
    }
    todo = [
        (pos, stem)
        for pos, stem in enumerate(stems)
        if job.overwrite
        or not (
            layout.part_path(stem).exists()
            and part_is_valid(layout.part_path(stem), {"fit_id": fit_id})
        )
    ]
    summary.parts_skipped = len(stems) - len(todo)
    if todo:
        # Neighbour pools span all shards, so they are built before any part
        # is written (and rebuilt, identically, by a resumed run).
        phase("index")
        dim = _dim(cache, stems)
        indexes = build_indexes(
            scorers,
            fit["scorers"],
            job.settings.method,
            job.settings.seed,
            cache,
            stems,
            dim,
            job.progress,
            n_classes,
        )
        base_meta["neighbors"] = indexes.describe()
        if base_meta["neighbors"]:  # kept for the merge of a later no-op run
            write_json(layout.state_dir / "neighbors.json", base_meta["neighbors"])
        phase("transform")
        bar = tqdm(
            total=len(todo),
            desc="score",
            unit="shard",
            disable=not job.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )

        def part_done(stem: str) -> None:
            summary.parts_written += 1
            bar.update(1)
            faults.checkpoint("part")

        if job.engine == "ray":
            from pipelines.ray_runner import init_ray, ray_transform

            ray = init_ray(job.ray_address)
            ray_transform(
                ray,
                todo,
                cache,
                fit["scorers"],
                layout.state_dir,
                indexes,
                methods,
                base_meta,
                n_classes,
                layout.part_path,
                part_done,
            )
        else:
            for pos, stem in todo:
                view = ShardView.load(cache, stem, pos, n_classes)
                table = transform_shard(
                    view, stem, scorers, indexes, methods, {**base_meta, "shard": stem}
                )
                atomic_write_table(table, layout.part_path(stem))
                part_done(stem)
        bar.close()

    phase("merge")
    # Summary counts come from the parts themselves: what a reader will see.
    counts: Counter = Counter()
    parts = [layout.part_path(s) for s in stems]
    for p in parts:
        status = pq.read_table(p, columns=["status"]).column("status").to_pylist()
        counts.update(status)
    summary.status_counts = dict(sorted(counts.items()))
    summary.rows = sum(counts.values())
    for stem, warns in embed_report.warnings.items():
        summary.shard_warnings[stem] = warns

    if layout.merged is not None:
        neighbors_json = layout.state_dir / "neighbors.json"
        if "neighbors" not in base_meta and neighbors_json.exists():
            base_meta["neighbors"] = json.loads(neighbors_json.read_text())
        merged_meta = {**base_meta, "shards": stems}
        if summary.parts_written or not _merged_is_current(
            layout.merged, fit_id, summary.rows, stems
        ):
            merge_parts(parts, layout.merged, merged_meta)
            summary.merged_written = True

    phase("done")
    if counts.get("ok", 0) == 0:
        detail = ", ".join(f"{k}: {v}" for k, v in summary.status_counts.items()) or "no samples"
        raise NothingScoredError(
            f"nothing could be scored ({detail}); see the status column in {layout.parts_dir}"
        )
    return summary


def _params_for_metadata(params: dict) -> dict:
    """Fitted params for part metadata, minus CLIPCleaner's bulky arrays
    (prompt embeddings, regression coefficients: up to megabytes for many
    classes, in every part). fit.json keeps them; a digest stands in."""
    cc = params.get("clipcleaner")
    if not cc:
        return params

    def digest(value) -> dict:
        return {
            "sha1": hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest(),
            "in": "_nclean/fit.json",
        }

    slim = dict(cc)
    if cc.get("prompts"):
        slim["prompts"] = {
            "class_of_prompt": cc["prompts"]["class_of_prompt"],
            "embeddings": digest(cc["prompts"]["embeddings"]),
        }
    if cc.get("lr"):
        slim["lr"] = digest(cc["lr"])
    return {**params, "clipcleaner": slim}


def _dim(cache: EmbeddingCache, stems: list[str]) -> int:
    img, _ = cache.open_vectors(stems[0])
    return int(img.shape[1])


def _merged_is_current(path: Path, fit_id: str, rows: int, stems: list[str]) -> bool:
    if not part_is_valid(path, {"fit_id": fit_id, "shards": stems}):
        return False
    return pq.read_metadata(path).num_rows == rows


__all__ = ["ScoreJob", "ScoreSettings", "ScoreSummary", "run_score"]
