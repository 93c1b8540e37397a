"""nclean: score noisy image-text pairs once with a frozen CLIP estimator and
write per-sample verdicts (OSA, SDD, SPS, CLIPCleaner) as Parquet sidecars.

The package is a set of stages, each usable on its own:

- :mod:`cleaner.io.shards`   -- shard specs and robust webdataset tar reading
- :mod:`cleaner.io.decode`   -- image / caption decoding with status codes
- :mod:`cleaner.estimator.model` -- loading the open_clip estimator
- :mod:`cleaner.estimator.embed`    -- batched, normalised embeddings
- :mod:`cleaner.io.embcache` -- the clip-retrieval compatible embedding layout
- :mod:`cleaner.methods.beta`     -- OSA's spatial-debiasing constant
- :mod:`cleaner.scorers`  -- one fit/transform object per method, no I/O
- :mod:`cleaner.io.schema`   -- the sidecar schema (one owner)
- :mod:`cleaner.io.sidecar`  -- atomic sidecar writing, reading, merging
"""

__version__ = "0.1.0"
