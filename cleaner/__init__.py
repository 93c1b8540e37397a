"""nclean: score noisy image-text pairs once with a frozen CLIP estimator and
write per-sample verdicts (OSA, SDD, SPS, CLIPCleaner) as Parquet sidecars.

The package is a set of stages, one subpackage each, usable on their own:

- :mod:`cleaner.io`        -- shards, decoding, embedding cache, sidecar schema and I/O
- :mod:`cleaner.estimator` -- loading open_clip models, batched embedding, pre-training
- :mod:`cleaner.methods`   -- one package per method (scorer + loss + declaration),
  the registry, and the shared beta, GMM and neighbour search
- :mod:`cleaner.train`     -- the weights API for other trainers, and the thin trainer
- :mod:`cleaner.report`    -- ``nclean report``
- :mod:`cleaner.worlds`    -- synthetic data (shapes world, embedding mixtures) and the demo
- :mod:`cleaner.commands`, :mod:`cleaner.cli` -- the ``nclean`` command line

The jobs that chain the stages live in the top-level package ``pipelines``.
"""

__version__ = "0.1.0"
