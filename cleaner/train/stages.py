"""webdataset pipeline stages that join streamed samples to their verdicts.

:func:`attach_weights` sets a weight on each sample and :func:`keep_where`
drops the samples an expression rejects; both are callables from an iterator
of sample dicts to an iterator of sample dicts, for
``wds.WebDataset(urls).compose(stage)``. A sample's row is found from its
``__url__`` (the shard) and ``__key__`` through a small per-shard index, so
streaming costs O(rows of one shard) whatever the sidecar's size.

Order: :func:`keep_where` adds nothing to a sample, so it works anywhere a
sample is still a dict with ``__url__`` and ``__key__`` (before or after
``.decode()``). :func:`attach_weights` adds a float, and webdataset's
``.decode()`` (0.2.x and 1.x alike) rejects any member that is neither bytes
nor named ``__...``: with a continue-handler it drops *every* sample, so a
trainer would silently train on nothing. The default key
``__weight__`` passes through ``.decode()``, ``.to_tuple()`` and batching
untouched, so the stages work in any order; a plain key such as ``weight``
works after ``.decode()``, and before it the stage warns
(:class:`UndecodedWeightWarning`) instead of leaving the failure silent.

A module of its own because it is the streaming consumer of
:class:`~cleaner.train.verdicts.Verdicts`, one of three (with the map-style
helpers and ``nclean filter``) that depend on it and not on each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

from cleaner.io.decode import read_uid
from cleaner.io.shards import sample_key
from cleaner.train.lookup import (
    OPT_OUT_HINT,
    SHOWN,
    SidecarMismatchError,
    check_on_missing,
    shard_name,
)
from cleaner.train.verdicts import Verdicts

# The default sample field for attach_weights. ``__``-prefixed so that it
# passes through webdataset's .decode() (which rejects any other non-bytes
# member): the stage then works before or after decoding, in any order.
DEFAULT_WEIGHT_KEY = "__weight__"


class UndecodedWeightWarning(UserWarning):
    """attach_weights put a non-bytes value under a plain key in an undecoded sample."""


def is_undecoded(sample: dict) -> bool:
    """True for a sample as webdataset reads it from a tar: every member still bytes."""
    members = [v for k, v in sample.items() if not str(k).startswith("__")]
    return bool(members) and all(isinstance(v, (bytes, bytearray)) for v in members)


class _Stage:
    """Shared join logic: find each streamed sample's row via ``__url__``/``__key__``."""

    def __init__(self, verdicts: Verdicts, on_missing: str, shard_of=None, uid_field="uid"):
        check_on_missing(on_missing)
        if not isinstance(verdicts, Verdicts):
            raise TypeError("pass a cleaner.train.weights.Verdicts (Verdicts.load(path))")
        self.verdicts = verdicts
        self.on_missing = on_missing
        self.shard_of = shard_of or shard_name
        # a sidecar that finds its samples by uid (keys repeat across the
        # shards it was scored from): the uid is read from the .json member
        self.uid_field = uid_field if verdicts.join == "uid" else None

    def _sample_id(self, sample: dict, key: str) -> str | None:
        if self.uid_field is None:
            # the sidecar stores non-UTF-8 key bytes escaped; webdataset hands
            # them over as surrogates: look them up the way nclean wrote them
            return sample_key(key)
        return read_uid(sample, self.uid_field)  # the .json member, bytes or decoded

    def rows(self, src: Iterable[dict]) -> Iterator[tuple[dict, int]]:
        """Yield (sample, row) with row -1 for a missing sample under an opt-out."""
        current, index, seen, matched = None, None, 0, 0
        for sample in src:
            if not isinstance(sample, dict):
                raise TypeError(
                    f"nclean stages take sample dicts, got {type(sample).__name__}: put them before "
                    ".to_tuple() / .map_tuple() / .batched()"
                )
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
            ident = self._sample_id(sample, key)
            row = index.get(ident) if index is not None and ident is not None else None
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
    key : the sample field to set (default ``"__weight__"``, which passes
        through webdataset's ``.decode()``, so the stage may come before or
        after it); a plain key such as ``"weight"`` must come after
        ``.decode()`` (see the module docstring).
    keep_failed : give rows whose status is not ``ok`` their expression's
        value instead of 0.
    shard_of : function from ``__url__`` to the sidecar's shard name
        (default :func:`shard_name`, the URL's file name).
    uid_field : for a sidecar that finds its samples by uid (scored from
        embeddings whose keys repeat across partitions, e.g. DataComp's), the
        field of the sample's ``.json`` member that holds it (default ``uid``;
        dotted paths reach into nested objects).

    Warns
    -----
    UndecodedWeightWarning
        once per pass, when a plain ``key`` lands in a sample that is not
        decoded yet: a ``.decode()`` after this stage would reject it.

    Examples
    --------
    Given a :class:`Verdicts` ``v`` and the shards' ``urls``:

    >>> import webdataset as wds
    >>> ds = (wds.WebDataset(urls, shardshuffle=False)
    ...       .compose(attach_weights(v, "osa_weight_norm"))
    ...       .decode("pil", handler=wds.ignore_and_continue)
    ...       .to_tuple("jpg", "txt", "__weight__"))
    >>> from PIL import Image
    >>> image, caption, weight = next(iter(ds))
    >>> isinstance(image, Image.Image), isinstance(caption, str), isinstance(weight, float)
    (True, True, True)

    After ``.decode()`` a plain key is fine too:

    >>> ds = (wds.WebDataset(urls, shardshuffle=False)
    ...       .decode("pil", handler=wds.ignore_and_continue)
    ...       .compose(attach_weights(v, "osa_weight_norm", key="weight")))
    >>> next(iter(ds))["weight"] >= 0
    True
    """

    def __init__(
        self,
        verdicts: Verdicts,
        expr_or_column: str,
        on_missing: str = "error",
        key: str = DEFAULT_WEIGHT_KEY,
        keep_failed: bool = False,
        shard_of=None,
        uid_field: str = "uid",
    ):
        super().__init__(verdicts, on_missing, shard_of, uid_field)
        if not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty string, not {key!r}")
        self.expr = expr_or_column
        self.key = key
        # computed once, vectorised, over all rows; per sample it is one lookup
        self.values = verdicts.weights(expr_or_column, keep_failed=keep_failed)

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        # only a plain key can trip a later .decode(); one look per pass is enough
        check = not self.key.startswith("__")
        for sample, row in self.rows(src):
            if row < 0:
                if self.on_missing == "drop":
                    continue
                weight = 0.0
            else:
                weight = float(self.values[row])
            if check:
                check = False
                if is_undecoded(sample):
                    self._warn_undecoded()
            sample[self.key] = weight
            yield sample

    def _warn_undecoded(self) -> None:
        warnings.warn(
            f"attach_weights sets {self.key!r} on samples that are not decoded yet; webdataset's "
            f".decode() after this stage rejects a float under {self.key!r} (with a continue-handler "
            "it drops every sample). Use key='__weight__', or put attach_weights after .decode()",
            UndecodedWeightWarning,
            stacklevel=3,
        )


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
    shard_of, uid_field : see :class:`attach_weights`.

    Examples
    --------
    It adds nothing to a sample, so it may come before or after ``.decode()``:

    >>> import webdataset as wds
    >>> ds = (wds.WebDataset(urls, shardshuffle=False)
    ...       .decode("pil", handler=wds.ignore_and_continue)
    ...       .compose(keep_where(v, "sps_partition == 'reliable'")))
    >>> sum(1 for _ in ds) == int(v.mask("sps_partition == 'reliable'").sum())
    True
    """

    def __init__(
        self,
        verdicts: Verdicts,
        expr: str,
        on_missing: str = "error",
        keep_failed: bool = False,
        shard_of=None,
        uid_field: str = "uid",
    ):
        super().__init__(verdicts, on_missing, shard_of, uid_field)
        self.expr = expr
        self.keep = verdicts.mask(expr, keep_failed=keep_failed)

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample, row in self.rows(src):
            if row >= 0 and self.keep[row]:
                yield sample
