"""Fill the embedding cache for a list of shards, skipping finished ones.

The embedding stage on its own (``nclean embed``, and the first step of
``nclean score``): which shards still need embedding, which model and batch
size, and writing each finished shard's cache partition. Kept apart from the
scoring so both commands share one resumable implementation.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from cleaner import __version__, faults
from cleaner.errors import ConfigError
from cleaner.estimator.sidefile import file_digest
from cleaner.io.decode import SampleSpec
from cleaner.io.embcache import EmbeddingCache
from cleaner.io.shards import shard_stem
from cleaner.progress import progress_bar
from pipelines.layout import embedding_folder_held

if TYPE_CHECKING:  # torch is imported only when something is embedded
    from cleaner.estimator.embed import ShardResult
    from cleaner.estimator.model import Estimator


@dataclass
class EstimatorSpec:
    """The CLI's model options; loads the model only when first needed."""

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    device: str = "auto"
    precision: str = "auto"
    _loaded: Estimator | None = field(default=None, repr=False)

    def identity(self) -> dict:
        """What determines the embeddings (device/precision excluded: they
        change values only within numerical noise)."""
        digest = None
        if self.pretrained and Path(self.pretrained).is_file():
            digest = file_digest(self.pretrained)
        return {
            "model": self.model if not self.model.endswith(".json") else Path(self.model).stem,
            "pretrained": self.pretrained or "none",
            "pretrained_digest": digest,
        }

    def get(self) -> Estimator:
        if self._loaded is None:
            from cleaner.estimator.model import load_estimator

            self._loaded = load_estimator(self.model, self.pretrained, self.device, self.precision)
        return self._loaded


def default_batch_size(device: str) -> int:
    return 1024 if device.startswith("cuda") else 128


@dataclass
class EmbedReport:
    embedded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fatal: dict[str, str] = field(default_factory=dict)  # stem -> message
    warnings: dict[str, list[str]] = field(default_factory=dict)
    samples: int = 0


def file_fingerprint(path: str | Path) -> dict | None:
    """What tells a rewritten file from the one a job read: size and mtime
    (ns). None when the file cannot be stat'ed (it then fails elsewhere).
    Deliberately strict: a copy that does not keep mtimes (``cp -r``) counts
    as changed -- a false alarm costs an ``--overwrite``, a miss stale rows."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def describe_changes(changed: list[tuple[str, dict | None, dict | None]], limit: int = 5) -> str:
    """``name (what changed)`` for (name, recorded, now) triples, on one line."""

    def why(old: dict | None, new: dict | None) -> str:
        if new is None:
            return "now missing or unreadable"
        if old is None or not isinstance(old, dict):
            return "changed"
        if "size" in old and old.get("size") != new.get("size"):
            return f"size {old.get('size')} -> {new.get('size')} bytes"
        if "size" in old:
            return "rewritten: modification time differs"
        parts = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return "rewritten: " + ", ".join(parts) if parts else "changed"

    shown = [f"{name} ({why(old, new)})" for name, old, new in changed[:limit]]
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(shown) + more


def check_batch_and_workers(batch_size: int | None, workers: int) -> None:
    """--batch-size and --workers as the embedding stage needs them."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    if workers is None or workers < 0:
        raise ConfigError(
            f"--workers must be 0 (decode in the main process) or more, not {workers}"
        )


def cache_identity(est: EstimatorSpec, spec: SampleSpec) -> dict:
    # through JSON, so it compares equal to what a cache partition stores
    return json.loads(json.dumps({"estimator": est.identity(), "sample_spec": asdict(spec)}))


def run_embed(shards: list[Path], cache: EmbeddingCache, *args, **kwargs) -> EmbedReport:
    """:func:`embed_missing`, holding the cache folder: it must be nclean's, and
    one job at a time writes it (:func:`pipelines.layout.embedding_folder_held`)."""
    with embedding_folder_held(cache.root, "embedding folder"):
        return embed_missing(shards, cache, *args, **kwargs)


def embed_missing(
    shards: list[Path],
    cache: EmbeddingCache,
    est: EstimatorSpec,
    spec: SampleSpec,
    batch_size: int | None = None,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
) -> EmbedReport:
    """Embed every shard whose cache partition is missing or incomplete.

    Raises ConfigError when an existing partition was made with other
    settings (another model, other member keys): mixing them would silently
    compare apples with oranges.
    """
    check_batch_and_workers(batch_size, workers)
    report = EmbedReport()
    identity = cache_identity(est, spec)
    todo = _shards_to_embed(shards, cache, identity, overwrite, report)
    if not todo:
        return report
    # taken before reading: a shard rewritten while it is embedded shows as changed next time
    fingerprints = {shard_stem(p): file_fingerprint(p) for p in todo}
    estimator, bs = _estimator_and_batch_size(engine, est, batch_size)
    on_shard = _shard_saver(cache, report, identity, fingerprints)
    bar = progress_bar(
        total=None,
        unit="sample",
        desc="embed",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        if engine == "ray":
            _embed_on_ray(ray_address, todo, est, spec, bs, on_shard, bar.update)
        else:
            from cleaner.estimator.embed import embed_shards  # imports torch

            embed_shards(estimator, todo, spec, bs, workers, on_shard, bar.update)
    finally:
        bar.close()
    return report


def _shards_to_embed(
    shards: list[Path], cache: EmbeddingCache, identity: dict, overwrite: bool, report: EmbedReport
) -> list[Path]:
    """The shards without a complete partition; the others go to ``report.skipped``.

    Raises ConfigError for a partition made with other settings, or of a
    shard that changed since it was embedded.
    """
    todo: list[Path] = []
    changed: list[tuple[str, dict | None, dict | None]] = []
    for path in shards:
        stem = shard_stem(path)
        if not overwrite and cache.meta_path(stem).exists() and cache.is_complete(stem):
            info = cache.info(stem) or {}
            if info.get("identity") != identity:
                raise ConfigError(
                    f"the embedding cache {cache.root} holds shard {stem} made with other settings "
                    f"({info.get('identity', {}).get('estimator', 'unknown')}); pass --overwrite, or another "
                    "folder (--out for nclean embed, --cache for nclean score)"
                )
            # a partition from before fingerprints were recorded: nothing to compare
            recorded = info.get("shard_fingerprint")
            now = file_fingerprint(path)
            if recorded is not None and recorded != now:
                changed.append((path.name, recorded, now))
            report.skipped.append(stem)
        else:
            todo.append(path)
    if changed:
        raise ConfigError(
            f"{len(changed)} shard(s) changed since they were embedded into {cache.root}: "
            f"{describe_changes(changed)}; their cached embeddings (and any scores made from "
            "them) are stale: pass --overwrite to start over, or choose another --out/--cache"
        )
    return todo


def _estimator_and_batch_size(
    engine: str, est: EstimatorSpec, batch_size: int | None
) -> tuple[Estimator | None, int]:
    """The local engine's loaded model (None for ray) and the batch size to use."""
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, not {engine!r}")
    if engine == "local":
        estimator = est.get()
        return estimator, batch_size or default_batch_size(estimator.device)
    import torch

    # the driver loads no model for ray: its own CUDA stands in for the workers'
    return None, batch_size or default_batch_size("cuda" if torch.cuda.is_available() else "cpu")


def _shard_saver(
    cache: EmbeddingCache, report: EmbedReport, identity: dict, fingerprints: dict
) -> Callable[[ShardResult], None]:
    """The callback that writes each finished shard's partition and records it in ``report``."""

    def on_shard(result: ShardResult) -> None:
        if result.fatal:
            report.fatal[result.stem] = result.fatal
            tqdm.write(f"warning: shard {result.path} skipped: {result.fatal}", file=sys.stderr)
            return
        if result.warnings:
            report.warnings[result.stem] = result.warnings
            for w in result.warnings:
                tqdm.write(f"warning: shard {result.path.name}: {w}", file=sys.stderr)
        info = {
            "identity": identity,
            "nclean_version": __version__,
            "shard_path": str(result.path),
            "shard_fingerprint": fingerprints.get(result.stem),
            "warnings": result.warnings,
        }
        cache.write(result.stem, result.meta, result.image, result.text, info)
        report.embedded.append(result.stem)
        faults.checkpoint("embed")
        report.samples += len(result.meta)

    return on_shard


def _embed_on_ray(
    ray_address: str | None,
    todo: list[Path],
    est: EstimatorSpec,
    spec: SampleSpec,
    batch_size: int,
    on_shard: Callable[[ShardResult], None],
    on_batch: Callable[[int], object],
) -> None:
    # imported here: only --engine ray needs the Ray runner
    from pipelines.ray_runner import init_ray, ray_embed

    ray = init_ray(ray_address)
    # ship the spec, not a model the driver may have loaded
    ray_embed(ray, todo, replace(est, _loaded=None), spec, batch_size, on_shard, on_batch)
