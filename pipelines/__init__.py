"""Jobs composed from the :mod:`cleaner` stages.

``embed -> global fit (on a sample where the data is huge) -> per-shard
transform -> sidecar parts``, each step resumable. :mod:`pipelines.embed_job`
fills the embedding cache; :mod:`pipelines.score_job` runs the whole job;
:mod:`pipelines.runners` says where per-shard work runs (local by default).
"""
