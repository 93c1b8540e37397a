"""Per-sample verdicts for trainers that do not know nclean.

A trainer needs one of three things from a sidecar: a *weight* per sample, a
*keep/drop* decision per sample, or a *sampler* that draws samples in
proportion to their weights. This module gives all three without the trainer
having to read Parquet or know the schema:

* :class:`Verdicts` loads one or many sidecars (files or part folders, each
  validated), finds the row of a sample by (``shard``, ``key``) or by ``uid``
  (vectorised), and evaluates small expressions over the columns, such as
  ``sdd_keep and osa_weight > 0`` or ``osa_weight_norm * sdd_w_con``.
* :func:`attach_weights` and :func:`keep_where` are webdataset pipeline
  stages (callables from an iterator of sample dicts to an iterator of sample
  dicts), for ``wds.WebDataset(urls).compose(stage)``. With the
  default key ``__weight__`` they work in any order around ``.decode()``;
  with a plain key such as ``weight``, put :func:`attach_weights` after
  ``.decode()`` (webdataset's decoder rejects a float under a plain key; the
  stage warns).
* :class:`WeightedSampler` and :func:`keep_indices` serve map-style datasets.

Joining is never silent: a sample with no row in the sidecar raises
:class:`SidecarMismatchError` with counts, unless the caller opts out with
``on_missing="drop"`` or ``"zero"``.

Expressions
-----------
Parsed with :mod:`ast` and evaluated column-wise with pyarrow; only these are
allowed: column names, numbers, strings, ``True``/``False``, comparisons
(``== != < <= > >=``, chains like ``0 < x <= 1``), ``and``/``or``/``not``,
``+ - * / **``, unary ``-``/``+`` and parentheses. Anything else (calls,
attributes, indexing, unknown names, ...) raises :class:`ValueError`.
Booleans count as 1/0 in arithmetic; ``and``/``or``/``not`` need true/false
operands (write ``osa_weight > 0``, not ``osa_weight``).

Nulls (rows that could not be scored carry nulls in most method columns)
follow SQL's three-valued logic: a comparison with a null is *unknown*,
arithmetic with a null gives null, ``unknown and False`` is False and
``unknown or True`` is True, and ``not unknown`` stays unknown. Whatever is
still unknown or null at the end counts as **not kept** / **weight 0** (and
NaN, e.g. from ``0/0``, counts as null). So a comparison with a null is never
true, not even under ``not``.

Failed rows
-----------
Rows whose ``status`` is not ``ok`` (decode errors, duplicate keys, ...) are
not kept and weigh 0 in :meth:`Verdicts.mask`, :meth:`Verdicts.weights` and
everything built on them, whatever the expression says, because the trainer
could not use those samples anyway; ``keep_failed=True`` lets the expression
decide.

Ambiguous rows
--------------
A key that occurs twice in a shard gives two sidecar rows with the same
(``shard``, ``key``); the repeat has status ``duplicate_key``. The two samples
cannot be told apart by key, so a lookup returns the *last* such row (the
flagged one), and both samples get its verdict: not kept, weight 0. The same
rule applies to repeated uids.

Examples
--------
A sidecar ``weights.parquet`` and its shards' ``urls`` (tests/test_wds_pipelines.py
runs these lines on generated shards, under webdataset 0.2.86 and 1.x):

>>> import webdataset as wds
>>> from cleaner.train.weights import Verdicts, attach_weights, keep_where
>>> v = Verdicts.load("weights.parquet")
>>> ds = (wds.WebDataset(urls, shardshuffle=False)
...       .compose(keep_where(v, "sdd_keep"), attach_weights(v, "osa_weight_norm"))
...       .decode("pil")
...       .to_tuple("jpg", "txt", "__weight__"))
>>> from PIL import Image
>>> image, caption, weight = next(iter(ds))
>>> isinstance(image, Image.Image), isinstance(caption, str), isinstance(weight, float)
(True, True, True)
>>> sum(1 for _ in ds) == int(v.mask("sdd_keep").sum())
True

Or decode first; then a plain key such as ``weight`` is fine too:

>>> ds = (wds.WebDataset(urls, shardshuffle=False)
...       .compose(keep_where(v, "sdd_keep"))
...       .decode("pil")
...       .compose(attach_weights(v, "osa_weight_norm * sdd_w_con", key="weight")))
>>> sample = next(iter(ds))
>>> isinstance(sample["jpg"], Image.Image), sample["weight"] >= 0
(True, True)

Layout
------
This module is the stable import path; the code lives in
:mod:`cleaner.train.verdicts` (:class:`Verdicts`, :func:`evaluate`),
:mod:`cleaner.train.expressions` (the expression language),
:mod:`cleaner.train.lookup` (row matching, :func:`shard_name`,
:class:`SidecarMismatchError`), :mod:`cleaner.train.stages` (the webdataset
stages) and :mod:`cleaner.train.mapstyle` (:func:`keep_indices`,
:class:`WeightedSampler`).
"""

from __future__ import annotations

# ON_MISSING and OPT_OUT_HINT are importable here (nclean filter rewords the
# hint) but stay out of __all__, as they always have
from cleaner.train.lookup import ON_MISSING as ON_MISSING
from cleaner.train.lookup import OPT_OUT_HINT as OPT_OUT_HINT
from cleaner.train.lookup import SidecarMismatchError, shard_name
from cleaner.train.mapstyle import WeightedSampler, keep_indices
from cleaner.train.stages import attach_weights, keep_where
from cleaner.train.verdicts import Verdicts, evaluate

__all__ = [
    "SidecarMismatchError",
    "Verdicts",
    "WeightedSampler",
    "attach_weights",
    "evaluate",
    "keep_indices",
    "keep_where",
    "shard_name",
]
