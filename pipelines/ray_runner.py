"""The Ray engine: the same stages, scheduled by Ray.

- *embed*: an ``ActorPool`` of embedding actors, one shard per call; each
  actor loads the estimator once and takes a GPU when the cluster has GPUs
  (one CPU otherwise). The driver writes the cache partitions, so the layout
  and the resume rules are the local engine's.
- *fit* and *index*: on the driver, from the cache (as locally).
- *transform*: one Ray task per shard; the fitted parameters are JSON and
  the neighbour indexes are shipped once through the object store
  (:class:`cleaner.methods.neighbors.NeighborIndex` pickles as numpy arrays
  and rebuilds its faiss objects on arrival). Each task writes its part
  atomically, named as locally, and runs its scorers on one thread (the task
  holds one CPU). Searches are batch-independent, so a task searching one
  shard gets the hits the local engine gets searching several at once.

Per-shard results are computed by the very functions the local engine
calls, so parts are identical (the tests compare them).
"""

from __future__ import annotations

import os
from pathlib import Path

from cleaner.errors import ConfigError


def init_ray(address: str | None, num_cpus: int | None = None):
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'nclean[ray]'") from None
    if not ray.is_initialized():
        kwargs = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        elif num_cpus:
            kwargs["num_cpus"] = num_cpus
        try:
            ray.init(**kwargs)
        except Exception as exc:  # a bad address, a cluster that is down
            raise ConfigError(
                f"could not start or reach Ray ({address or 'local'}): {exc}"
            ) from None
    return ray


def _embed_actor_class(ray, use_gpu: bool):
    @ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else 1)
    class EmbedActor:
        def __init__(self, est_spec, spec, batch_size, threads):
            import torch

            if threads:  # match the driver's thread count: identical float results on CPU
                torch.set_num_threads(threads)
            self.est = est_spec.get()
            self.spec = spec
            self.batch_size = batch_size

        def embed(self, path: str):
            from cleaner.estimator.embed import embed_shards

            results = []
            embed_shards(self.est, [Path(path)], self.spec, self.batch_size, 0, results.append)
            return results[0]

    return EmbedActor


def ray_embed(
    ray, todo: list[Path], est_spec, spec, batch_size: int, on_shard, on_batch=None
) -> None:
    """Embed ``todo`` on an actor pool; ``on_shard(ShardResult)`` on the driver."""
    import torch
    from ray.util import ActorPool

    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n_actors = max(1, min(len(todo), gpus if gpus else cpus))
    actor_cls = _embed_actor_class(ray, use_gpu=gpus > 0)
    threads = None if gpus else torch.get_num_threads()
    pool = ActorPool(
        [actor_cls.remote(est_spec, spec, batch_size, threads) for _ in range(n_actors)]
    )
    for result in pool.map_unordered(lambda a, p: a.embed.remote(str(p)), todo):
        if on_batch is not None and result.meta is not None:
            on_batch(len(result.meta))
        on_shard(result)


def _transform_remote(ray):
    @ray.remote(num_cpus=1)
    def transform(
        cache_root, stem, pos, params, state_dir, indexes, methods, metadata, n_classes, part_path
    ):
        # one CPU per task: the scorers' thread pools use one thread, not all cores
        os.environ["NCLEAN_THREADS"] = "1"
        from cleaner.io.embcache import EmbeddingCache
        from cleaner.io.sidecar import atomic_write_table
        from pipelines.fit_stage import restore_scorers
        from pipelines.shard_view import ShardView
        from pipelines.transform_stage import transform_shard

        cache = EmbeddingCache(cache_root)
        scorers = restore_scorers(params, Path(state_dir))
        view = ShardView.load(cache, stem, pos, n_classes)
        table = transform_shard(view, stem, scorers, indexes, methods, metadata)
        atomic_write_table(table, Path(part_path))
        return stem

    return transform


def ray_transform(
    ray, todo, cache, params, state_dir, indexes, methods, base_meta, n_classes, part_path, on_done
) -> None:
    """One task per shard; ``on_done(stem)`` as each part lands."""
    transform = _transform_remote(ray)
    indexes_ref = ray.put(indexes)
    params_ref = ray.put(params)
    pending = [
        transform.remote(
            str(cache.root),
            stem,
            pos,
            params_ref,
            str(state_dir),
            indexes_ref,
            methods,
            {**base_meta, "shard": stem},
            n_classes,
            str(part_path(stem)),
        )
        for pos, stem in todo
    ]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        on_done(ray.get(done[0]))


def default_address() -> str | None:
    return os.environ.get("RAY_ADDRESS") or None
