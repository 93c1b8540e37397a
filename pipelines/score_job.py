"""``nclean score``: embed -> fit -> index -> transform -> merge.

:func:`run_score` reads as that sequence of named stages; each stage lives
in its own module and the resume bookkeeping in :mod:`pipelines.resume`:

1. *embed* (shards input only): cache partitions that exist and validate
   are skipped (:mod:`pipelines.embed_job`).
2. *fit* (:mod:`pipelines.fit_stage`): every selected method's global
   statistics, computed once and stored in ``_nclean/fit.json``; a rerun
   with the same settings and inputs reuses them.
3. *index* (:mod:`pipelines.index_stage`): the neighbour pools, over all shards.
4. *transform* (:mod:`pipelines.transform_stage`): each shard's part, written
   atomically; a part that exists, validates and carries the current fit id
   is skipped.
5. *merge* (``--out x.parquet``): only when a part changed or the merged
   file is missing or stale -- a second identical run leaves it untouched.
"""

from __future__ import annotations

import importlib
import math
import threading
from dataclasses import asdict, dataclass, field

from cleaner import __version__, faults
from cleaner.errors import ConfigError, InputError, NothingScoredError
from cleaner.io import schema as S
from cleaner.io.atomic import write_json
from cleaner.io.decode import SampleSpec
from cleaner.io.embcache import sample_join, validate_dir
from cleaner.io.shards import expand_shards, shard_stem
from cleaner.methods import catalog
from cleaner.methods.thresholds import check_settings as check_thresholds
from pipelines import resume
from pipelines.embed_job import (
    EmbedReport,
    EstimatorSpec,
    check_batch_and_workers,
    file_fingerprint,
    run_embed,
)
from pipelines.fit_stage import JobData, bar, fit_methods, log, restore_scorers
from pipelines.index_stage import build_pools, describe
from pipelines.layout import OutputLayout
from pipelines.score_report import (
    Phases,
    ScoreSummary,
    keep_counts,
    nothing_usable_message,
    warn_missing_uids,
    warn_negative_beta,
)
from pipelines.transform_stage import (
    merge_if_stale,
    params_for_metadata,
    parts_to_do,
    status_counts,
    transform_local,
)


@dataclass
class ScoreSettings:
    """Everything that changes the scores (stored, and compared on resume)."""

    methods: list[str] = field(default_factory=lambda: ["osa"])
    beta_source: str = "noise"  # noise | shuffled
    beta_samples: int | None = None  # K; None = the source's default
    beta: float | None = None  # set by hand: skips estimation
    # paper: the published constants; auto: mapped from the calibrated cosine
    # (cleaner.methods.thresholds)
    thresholds: str = "paper"
    seed: int = 0
    fit_sample: int = 1_000_000  # rows used for global fits; all rows when fewer
    exact_threshold: int = 2048  # exact neighbour search up to this many pool rows, IVF above
    pool_size: int = 65_536  # neighbour pools: a seeded sample of at most this many rows
    # method options by name (declared in cleaner.methods.<name>.method);
    # missing ones take their declared defaults when the job starts
    options: dict = field(default_factory=dict)


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
    beta_source_explicit: bool = False
    # called with a phase name (embed, fit, index, transform, merge) as each
    # starts and with "done" at the end; benchmarks hang timers on it
    on_phase: object = None


def run_score(job: ScoreJob) -> ScoreSummary:
    """Run the whole job; return what happened. Raises NcleanError subclasses
    for configuration problems and when nothing at all could be scored."""
    layout = OutputLayout.from_out(job.out)
    with layout.held():  # the --out lock that layout.prepare() takes, released however it ends
        return _run_score(job, layout)


def _run_score(job: ScoreJob, layout: OutputLayout) -> ScoreSummary:
    n_classes = _prepare(job)
    summary = ScoreSummary(
        parts_dir=str(layout.parts_dir), merged=str(layout.merged) if layout.merged else None
    )
    phase = Phases(summary, job.on_phase)
    preloading = _preload(job.settings.methods)
    phase("embed")
    data, paths, embed_report = embed_stage(job, layout, summary, n_classes)
    # from here on only this thread imports (no import-lock cycles); joining
    # later (through the fit pass) measured no faster at 100k rows: the
    # imports hold the GIL the fit pass's Python needs
    preloading.join()
    phase("fit")
    fit = fit_stage(job, layout, data, paths, summary)
    scorers = restore_scorers(fit["scorers"], layout.state_dir)
    meta = base_metadata(job, fit)
    # how readers find each row's sample in the shards (cleaner.train.lookup)
    meta["join"], join_warning = sample_join(data.cache, data.stems)
    if join_warning:
        log(f"warning: {join_warning}")
    todo = parts_to_do(layout, data.stems, meta["fit_id"], job.overwrite)
    summary.parts_skipped = len(data.stems) - len(todo)
    if todo:
        phase("index")
        pools = index_stage(job, layout, data, scorers, fit, meta)
        phase("transform")
        transform_stage(job, layout, data, todo, scorers, pools, fit, meta, summary)
    phase("merge")
    merge_stage(layout, data, meta, summary, embed_report)
    phase("done")
    if summary.status_counts.get("ok", 0) == 0:
        detail = ", ".join(f"{k}: {v}" for k, v in summary.status_counts.items()) or "no samples"
        raise NothingScoredError(
            f"nothing could be scored ({detail}); see the status column in {layout.parts_dir}"
        )
    return summary


def _preload(methods: list[str]) -> threading.Thread:
    """Import the methods' heavy modules on a thread: sklearn alone takes
    ~1 s, which overlaps the first stage's reads instead of adding to the run."""
    names = sorted({m for name in methods for m in catalog.get(name).preload})
    thread = threading.Thread(target=_import_all, args=(names,), daemon=True)
    thread.start()
    return thread


def _import_all(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 -- the stage that needs it reports the error
            return


# -- settings ------------------------------------------------------------------
def _prepare(job: ScoreJob) -> int | None:
    """Check the settings, fill in the methods' option defaults, and set what
    decoding needs from the methods (labels, captions). Returns n_classes."""
    st = job.settings
    try:
        st.options = catalog.resolve_options(st.methods, st.options)
        for name in st.methods:
            catalog.get(name).check_options(st.options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _check_settings(job)
    chosen = [catalog.get(name) for name in st.methods]
    n_classes = next((m.n_classes(st.options) for m in chosen if m.needs_labels), None)
    if n_classes is not None:
        job.sample_spec.label_key = job.sample_spec.label_key or "cls"
        job.sample_spec.n_classes = n_classes
        # classification shards need not carry captions when only labels are scored
        job.sample_spec.text_required = any(m.needs_text for m in chosen)
    return n_classes


def _check_settings(job: ScoreJob) -> None:
    st = job.settings
    if job.engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, not {job.engine!r}")
    if st.beta_source not in ("noise", "shuffled"):
        raise ConfigError(f"--beta-source must be noise or shuffled, not {st.beta_source!r}")
    if (job.shards is None) == (job.embeddings is None):
        raise ConfigError("give shards, or --embeddings DIR, but not both")
    if st.fit_sample < 2:
        raise ConfigError("--fit-sample must be at least 2")
    if st.pool_size < 1 or st.exact_threshold < 0:
        raise ConfigError("--pool-size must be at least 1 and --exact-threshold at least 0")
    if (err := check_thresholds(st, job.beta_source_explicit)) is not None:
        raise ConfigError(err)
    auto = st.thresholds == "auto"  # OSA's beta comes from the data: no model needed
    if "osa" in st.methods and job.embeddings is not None and st.beta is None and not auto:
        if st.beta_source == "noise":
            raise ConfigError(
                "--beta-source noise needs the model, which --embeddings input does not load; "
                "use --beta-source shuffled or set --beta VALUE"
            )
    if st.beta_samples is not None and st.beta_samples < 2:
        raise ConfigError("--beta-samples must be at least 2")
    if st.beta is not None:
        _check_manual_beta(job)
    check_batch_and_workers(job.batch_size, job.workers)


def _check_manual_beta(job: ScoreJob) -> None:
    st = job.settings
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


# -- stages --------------------------------------------------------------------
def embed_stage(job: ScoreJob, layout, summary: ScoreSummary, n_classes):
    """The cache to score: precomputed embeddings, or the shards embedded
    (resumably). Returns (JobData, shard paths by stem, EmbedReport)."""
    if job.embeddings is not None:
        cache = validate_dir(job.embeddings)
        layout.prepare(job.overwrite)
        return _job_data(job, cache, cache.stems(), n_classes), {}, EmbedReport()
    shards = expand_shards(job.shards)
    stems_all = [shard_stem(p) for p in shards]
    paths = dict(zip(stems_all, shards))
    if len(set(stems_all)) != len(stems_all):
        raise ConfigError("two shards have the same name stem; sidecar parts would collide")
    layout.prepare(job.overwrite)
    stored = None if job.overwrite else resume.read_fit(layout)
    if stored:  # before the embedding pass: a changed shard is refused up front
        current = {s: file_fingerprint(paths[s]) for s in stems_all}
        resume.refuse_changed(layout, stored, current, {s: paths[s].name for s in stems_all})
    from cleaner.io.embcache import EmbeddingCache

    cache = EmbeddingCache(job.cache or layout.default_cache)
    report = run_embed(
        shards, cache, job.estimator, job.sample_spec, job.batch_size, job.workers,
        overwrite=job.overwrite and job.cache is not None, progress=job.progress,
        engine=job.engine, ray_address=job.ray_address,
    )  # fmt: skip
    summary.fatal_shards = dict(report.fatal)
    stems = [s for s in stems_all if s not in report.fatal]
    if not stems:
        fatal = list(report.fatal.values())
        more = f"; and {len(fatal) - 3} more" if len(fatal) > 3 else ""
        raise InputError(
            f"no shard could be read ({len(fatal)} tried): " + "; ".join(fatal[:3]) + more
        )
    warn_missing_uids(job, cache, stems)
    return _job_data(job, cache, stems, n_classes), paths, report


def _job_data(job: ScoreJob, cache, stems: list[str], n_classes) -> JobData:
    from cleaner.methods.threads import parallel_map

    # every partition's vectors are checked once here: on all cores (numpy releases the GIL)
    counts = parallel_map(lambda stem: int(cache.ok_mask(stem).sum()), stems)
    return JobData(cache, stems, counts, n_classes, job.progress)


def fit_stage(job: ScoreJob, layout, data: JobData, paths: dict, summary) -> dict:
    """The stored fit when it is current, else a new fit over all inputs."""
    names = {s: paths[s].name for s in data.stems if s in paths}
    current = resume.fingerprints(job.embeddings is not None, data.cache, data.stems, paths)
    fit = resume.reusable_fit(layout, job.settings, data.stems, current, names, log)
    if fit is None:
        fit = resume.record_fit(
            layout, _fit(job, layout, data), data.stems, summary.fatal_shards, current
        )
    warn_negative_beta(fit)
    summary.fit = fit
    return fit


def _fit(job: ScoreJob, layout, data: JobData) -> dict:
    if sum(data.ok_counts) == 0:
        raise NothingScoredError(nothing_usable_message(job, data.cache, data.stems))
    st = job.settings
    fit: dict = {"settings": resume.settings_json(st)}
    try:
        fit["scorers"] = fit_methods(st, st.options, data, job.estimator, layout.state_dir)
    except ValueError as exc:
        raise NothingScoredError(str(exc)) from None
    if "beta" in fit["scorers"].get("osa", {}):
        fit["beta"] = fit["scorers"]["osa"]["beta"]
    fit["ok_counts"] = data.ok_counts
    return fit


def base_metadata(job: ScoreJob, fit: dict) -> dict:
    """What every part's (and the merged file's) metadata says about the run."""
    estimator = (
        job.estimator.identity() if job.embeddings is None else {"embeddings": str(job.embeddings)}
    )
    return {
        "nclean_version": __version__,
        "schema_version": S.SCHEMA_VERSION,
        "methods": job.settings.methods,
        "fit_id": resume.fit_id(fit),
        "estimator": estimator,
        "beta": fit.get("beta"),
        "params": params_for_metadata(fit["scorers"]),
        "settings": asdict(job.settings),
        "sample_spec": asdict(job.sample_spec),
        "argv": job.argv,
    }


def index_stage(job: ScoreJob, layout, data: JobData, scorers, fit, meta: dict) -> dict:
    """Neighbour pools span all shards, so they are built before any part is
    written (and rebuilt, identically, by a resumed run)."""
    img, _ = data.cache.open_vectors(data.stems[0])
    pools = build_pools(scorers, fit["scorers"], data, int(img.shape[1]), job.settings)
    meta["neighbors"] = describe(pools)
    if meta["neighbors"]:  # kept for the merge of a later no-op run
        write_json(layout.state_dir / "neighbors.json", meta["neighbors"])
    return pools


def transform_stage(job, layout, data, todo, scorers, pools, fit, meta, summary) -> None:
    progress = bar(range(len(todo)), "score", job.progress)

    def part_done(stem: str) -> None:
        summary.parts_written += 1
        progress.update(1)
        faults.checkpoint("part")

    methods = job.settings.methods
    if job.engine == "ray":
        from pipelines.ray_runner import init_ray, ray_transform

        ray = init_ray(job.ray_address)
        ray_transform(
            ray, todo, data.cache, fit["scorers"], layout.state_dir, pools, methods, meta,
            data.n_classes, layout.part_path, part_done,
        )  # fmt: skip
    else:
        transform_local(todo, data, scorers, pools, methods, meta, layout, part_done)
    progress.close()


def merge_stage(layout, data: JobData, meta: dict, summary: ScoreSummary, embed_report) -> None:
    parts = [layout.part_path(s) for s in data.stems]
    summary.status_counts = status_counts(parts)
    summary.kept = keep_counts(parts, meta["methods"], meta["params"])
    summary.rows = sum(summary.status_counts.values())
    for stem, warns in embed_report.warnings.items():
        summary.shard_warnings[stem] = warns
    if layout.merged is None:
        return
    neighbors_json = layout.state_dir / "neighbors.json"
    if "neighbors" not in meta and neighbors_json.exists():
        import json

        meta["neighbors"] = json.loads(neighbors_json.read_text())
    summary.merged_written = merge_if_stale(
        parts, layout.merged, {**meta, "shards": data.stems}, meta["fit_id"], summary.rows,
        changed=bool(summary.parts_written),
    )  # fmt: skip


__all__ = ["ScoreJob", "ScoreSettings", "ScoreSummary", "run_score"]
