"""What a method declares to the rest of nclean, in one place.

A method is a subclass of :class:`Method` in its own package
(``cleaner/methods/<name>/method.py``) and one line in
:mod:`cleaner.methods.catalog`. From that declaration:

- the sidecar schema gets the method's columns (:mod:`cleaner.io.schema`),
- ``nclean score`` gets the method's options, in its own help panel
  (:mod:`cleaner.commands.score`),
- the score job runs the method's fit, reference pools and transform
  (:mod:`pipelines.fit_stage`, :mod:`pipelines.index_stage`,
  :mod:`pipelines.transform_stage`).

The declaration holds no data and does no I/O of its own: the pipeline hands
it a :class:`FitContext` for whatever it needs from the job (rows of the
cache, the estimator, a file in the job's state folder), and the scorer
objects it builds stay pure fit/transform objects on arrays.

Keep a ``method.py`` light to import (pyarrow, the standard library): the
schema imports every method's declaration, so heavy modules (torch, faiss,
sklearn) are imported inside the hooks, where they are used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Option:
    """One setting of a method: a key in ``ScoreSettings.options`` and a CLI option.

    ``parse`` turns the CLI's text into the stored value (e.g. a
    comma-separated list into a tuple); ``check`` returns an error message
    for a bad value, or None.
    """

    name: str
    default: Any
    help: str
    flag: str | None = None  # default: --<name with dashes>
    type: type = float
    parse: Callable[[Any], Any] | None = None
    check: Callable[[Any], str | None] | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass
class FitContext:
    """What the pipeline lends a method while it fits (the method does no I/O).

    ``settings`` is the job's ScoreSettings; ``options`` the resolved method
    options; ``sample`` the columns the method asked for with
    :meth:`Method.sample_columns`, over a seeded sample of rows; the
    callables reach the job's data and services.
    """

    settings: Any
    options: dict
    seed: int
    ok_counts: list[int]
    sample: dict[str, np.ndarray] = field(default_factory=dict)
    log: Callable[[str], None] = print
    gather_rows: Callable[[np.ndarray, str], np.ndarray] | None = None
    # (row ids as Pairs.row_ids gives them, side) -> those rows' vectors, in order
    gather_ids: Callable[[np.ndarray, str], np.ndarray] | None = None
    estimator: Callable[[], Any] | None = None
    encode_texts: Callable[[list[str]], np.ndarray] | None = None
    iter_views: Callable[..., Any] | None = None  # (desc) -> iterable of (stem, ShardView)
    save_arrays: Callable[[str, dict], dict] | None = None  # (name, arrays) -> file record
    load_arrays: Callable[[dict], dict] | None = None  # file record -> arrays
    n_classes: int | None = None


class Method:
    """A method's declaration. Subclass it; override what the method needs.

    The defaults describe a method that needs no fit and no neighbours: its
    scorer is built from its options and transforms each shard on its own.
    """

    name: str = ""
    fields: tuple[pa.Field, ...] = ()
    # value a non-nullable column takes on rows that could not be scored
    fill_for_failed: dict[str, Any] = {}
    options: tuple[Option, ...] = ()
    default: bool = False  # part of the default --methods
    needs_labels: bool = False  # rows need a class label (CLIPCleaner)
    needs_text: bool = True  # rows need a caption
    # fits on the shared seeded sample of per-row values (sample_columns)
    samples_rows: bool = False
    summary: str = ""  # one line for --help
    # The method's keep verdict as an ``nclean filter --where`` expression
    # over its columns ({name} fields filled from the fitted params by
    # keep_where): the score summary, the report and the demo count with it.
    keep_expr: str = ""
    # modules the fit and transform import (heavy ones: sklearn, faiss); the
    # score job imports them on a thread while its first stage reads the data
    preload: tuple[str, ...] = ()
    # the fit runs on a thread beside the other methods' fits (a fit that is
    # mostly matrix products on its own threads: the others leave a core idle)
    fits_aside: bool = False

    # -- settings ---------------------------------------------------------
    def check_options(self, options: dict) -> None:
        """Raise ValueError for a bad combination of this method's options."""
        for opt in self.options:
            if opt.check is not None and (err := opt.check(options[opt.name])):
                raise ValueError(err)

    def n_classes(self, options: dict) -> int | None:
        """Number of classes when rows carry labels (decided before decoding)."""
        return None

    # -- fit ----------------------------------------------------------------
    def sample_columns(self, scorer, pairs, seed_key: str) -> dict[str, np.ndarray]:
        """Per-row values the fit needs, for every row of ``pairs`` (the
        pipeline keeps a seeded sample of them). Default: none."""
        return {}

    def new_scorer(self, options: dict, seed: int):
        """An unfitted scorer, or None when the method has nothing to fit."""
        return None

    def fit(self, scorer, ctx: FitContext) -> dict:
        """Fit on ``ctx.sample``; return the JSON-able fitted parameters."""
        return {}

    def restore(self, params: dict, ctx: FitContext):
        """The fitted scorer, from the parameters :meth:`fit` returned."""
        raise NotImplementedError

    # -- neighbour pools -----------------------------------------------------
    def pools(self, scorer) -> dict[str, str]:
        """Reference pools this method searches: pool name -> modality
        (``image`` or ``text``) of the vectors stored in it."""
        return {}

    def reference_rows(self, scorer, pairs, seed_key: str) -> dict[str, tuple]:
        """For each pool, ``(mask, payload or None)`` over the rows of ``pairs``."""
        return {}

    def queries(self, scorer, pairs, seed_key: str) -> dict[str, np.ndarray]:
        """For each pool :meth:`transform` searches (top-1, with vectors of the
        pool's modality): a bool mask of the rows it searches with. A hint: the
        pipeline may search those rows ahead, several shards at once, and
        :meth:`transform` then gets the answers (any other search still runs).
        Default: every row searches every pool of the method."""
        return {name: np.ones(len(pairs), dtype=bool) for name in self.pools(scorer)}

    # -- transform -----------------------------------------------------------
    def transform(self, scorer, pairs, pools: dict, seed_key: str) -> dict[str, np.ndarray]:
        """Columns for the ``ok`` rows of one shard."""
        raise NotImplementedError

    # A method whose transform runs faster on many rows at once (match's
    # matrix products) sets ``batch_rows``: the local runner then calls
    # :meth:`prepare` on each shard and :meth:`transform_batch` on shards of
    # about that many rows together. Its :meth:`transform` must give the
    # same columns (a Ray task transforms one shard).
    batch_rows: int = 0

    def prepare(self, scorer, pairs, seed_key: str):
        """What :meth:`transform_batch` needs of one shard (kept small: the
        shard's vectors are let go)."""
        raise NotImplementedError

    def transform_batch(self, scorer, prepared: list) -> list[dict[str, np.ndarray]]:
        """Columns for several :meth:`prepare` results, in order."""
        raise NotImplementedError

    def metadata(self, params: dict) -> dict:
        """The fitted parameters as every part's metadata carries them."""
        return params

    def keep_where(self, params: dict) -> str | None:
        """``keep_expr`` for a fitted job (``params`` as :meth:`metadata`
        gives them), or None when the method has no keep verdict."""
        return self.keep_expr or None


def options_of(methods) -> dict[str, Option]:
    return {opt.name: opt for m in methods for opt in m.options}
