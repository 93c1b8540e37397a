"""webdataset pipeline stages that join streamed samples to their verdicts.

:func:`attach_weights` sets a weight on each sample and :func:`keep_where`
drops the samples an expression rejects; both are callables from an iterator
of sample dicts to an iterator of sample dicts, for
``wds.WebDataset(urls).compose(stage)``. A sample's row is found from its
``__url__`` (the shard) and ``__key__`` through a small per-shard index, so
streaming costs O(rows of one shard) whatever the sidecar's size.

A module of its own because it is the streaming consumer of
:class:`~cleaner.train.verdicts.Verdicts`, one of three (with the map-style
helpers and ``nclean filter``) that depend on it and not on each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cleaner.train.lookup import (
    OPT_OUT_HINT,
    SHOWN,
    SidecarMismatchError,
    check_on_missing,
    shard_name,
)
from cleaner.train.verdicts import Verdicts


class _Stage:
    """Shared join logic: find each streamed sample's row via ``__url__``/``__key__``."""

    def __init__(self, verdicts: Verdicts, on_missing: str, shard_of=None):
        check_on_missing(on_missing)
        if not isinstance(verdicts, Verdicts):
            raise TypeError("pass a cleaner.train.weights.Verdicts (Verdicts.load(path))")
        self.verdicts = verdicts
        self.on_missing = on_missing
        self.shard_of = shard_of or shard_name

    def rows(self, src: Iterable[dict]) -> Iterator[tuple[dict, int]]:
        """Yield (sample, row) with row -1 for a missing sample under an opt-out."""
        current, index, seen, matched = None, None, 0, 0
        for sample in src:
            url, key = sample.get("__url__"), sample.get("__key__")
            if url is None or key is None:
                raise ValueError(
                    "sample lacks __url__ or __key__: put the nclean stage before stages that drop them "
                    "(webdataset sets both when it reads tars)"
                )
            name = self.shard_of(url)
            if name != current:
                current, index, seen, matched = name, self.verdicts.shard_index(name), 0, 0
            seen += 1
            row = index.get(key) if index is not None else None
            if row is None:
                if self.on_missing == "error":
                    raise SidecarMismatchError(self._message(name, key, index, seen, matched))
                row = -1
            else:
                matched += 1
            yield sample, row

    def _message(self, name, key, index, seen, matched) -> str:
        if index is None:
            known = self.verdicts.shards
            shown = ", ".join(known[:SHOWN]) + (
                f" and {len(known) - SHOWN} more" if len(known) > SHOWN else ""
            )
            return (
                f"shard {name} has no rows in the sidecar (sample {key!r}); the sidecar covers "
                f"{len(known)} shards: {shown}. {OPT_OUT_HINT}"
            )
        return (
            f"sample {key!r} of shard {name} has no row in the sidecar ({matched} of {seen} samples of this "
            f"shard matched so far; the sidecar has {len(index)} keys for it). {OPT_OUT_HINT}"
        )


class attach_weights(_Stage):  # noqa: N801 - used like a function, as webdataset's stages are
    """webdataset stage: add ``sample[key] = weight`` from a column or expression.

    Parameters
    ----------
    verdicts : Verdicts
    expr_or_column : a column name (``osa_weight_norm``) or expression
        (``osa_weight_norm * sdd_w_con``, ``sdd_keep`` as 1/0).
    on_missing : ``"error"`` (default) raises :class:`SidecarMismatchError`
        for a sample with no row; ``"zero"`` gives it weight 0.0;
        ``"drop"`` leaves it out of the stream.
    key : the sample field to set (default ``"weight"``).
    keep_failed : give rows whose status is not ``ok`` their expression's
        value instead of 0.
    shard_of : function from ``__url__`` to the sidecar's shard name
        (default :func:`shard_name`, the URL's file name).

    Examples
    --------
    >>> ds = wds.WebDataset(urls).compose(attach_weights(v, "osa_weight_norm"))  # doctest: +SKIP
    >>> next(iter(ds))["weight"]                                                  # doctest: +SKIP
    0.93
    """

    def __init__(
        self,
        verdicts: Verdicts,
        expr_or_column: str,
        on_missing: str = "error",
        key: str = "weight",
        keep_failed: bool = False,
        shard_of=None,
    ):
        super().__init__(verdicts, on_missing, shard_of)
        self.expr = expr_or_column
        self.key = key
        # computed once, vectorised, over all rows; per sample it is one lookup
        self.values = verdicts.weights(expr_or_column, keep_failed=keep_failed)

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample, row in self.rows(src):
            if row < 0:
                if self.on_missing == "drop":
                    continue
                weight = 0.0
            else:
                weight = float(self.values[row])
            sample[self.key] = weight
            yield sample


class keep_where(_Stage):  # noqa: N801 - used like a function, as webdataset's stages are
    """webdataset stage: yield only the samples for which ``expr`` is true.

    Parameters
    ----------
    verdicts : Verdicts
    expr : a true/false expression, e.g. ``sdd_keep and osa_weight > 0`` or
        ``sps_partition == 'reliable'``. Unknown (null) counts as false.
    on_missing : ``"error"`` (default) raises :class:`SidecarMismatchError`;
        ``"drop"`` and ``"zero"`` both leave samples without a row out.
    keep_failed : let the expression decide for rows whose status is not
        ``ok`` (by default they are dropped).
    shard_of : see :class:`attach_weights`.
    """

    def __init__(
        self,
        verdicts: Verdicts,
        expr: str,
        on_missing: str = "error",
        keep_failed: bool = False,
        shard_of=None,
    ):
        super().__init__(verdicts, on_missing, shard_of)
        self.expr = expr
        self.keep = verdicts.mask(expr, keep_failed=keep_failed)

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample, row in self.rows(src):
            if row >= 0 and self.keep[row]:
                yield sample
