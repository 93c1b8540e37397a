"""Jobs composed from the :mod:`cleaner` stages, each resumable.

- :mod:`.score_job`: ``embed -> fit -> index -> transform -> merge``, one
  module per stage (:mod:`.fit_stage`, :mod:`.index_stage`,
  :mod:`.transform_stage`), the resume bookkeeping in :mod:`.resume`, the
  summary and warnings in :mod:`.score_report`, the shard view every stage
  reads in :mod:`.shard_view`, the output folder in :mod:`.layout`;
- :mod:`.embed_job`: fills the embedding cache (also ``nclean embed``);
- :mod:`.filter_job` (+ :mod:`.filter_join`, :mod:`.filter_write`): ``nclean filter``;
- :mod:`.ray_runner`: the same per-shard work on a Ray cluster (``--engine ray``).
"""
