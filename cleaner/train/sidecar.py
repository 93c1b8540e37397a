"""The trainer's view of a sidecar: read it, check it serves the method, join it.

Reading fails with the one-line errors ``nclean filter`` gives (a missing or
invalid sidecar is an :class:`~cleaner.errors.InputError`), the method's
columns and ``--where`` are checked before any shard is decoded, and the
rows are aligned to the decoded samples, with counts when they do not match.
The weights a method trains with are checked too (:func:`checked_weights`):
a NaN or negative weight is refused, never trained on.

A module of its own because both training tasks apply the same checks and
the same join, and none of it needs the model.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cleaner.errors import ConfigError, InputError
from cleaner.io.schema import SchemaError
from cleaner.io.sidecar import read_sidecar
from cleaner.train.config import TrainConfig
from cleaner.train.data import Split
from cleaner.train.lookup import SidecarMismatchError, align_ids, join_of
from cleaner.train.verdicts import evaluate


def read_train_sidecar(sidecar_path: str):
    """``(table, meta)`` of a sidecar, or the one-line InputError (exit 3)
    ``nclean filter`` gives for a missing, non-Parquet or invalid sidecar."""
    try:
        return read_sidecar(sidecar_path)
    except SchemaError as exc:
        raise InputError(f"--sidecar: {exc}") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"--sidecar: cannot read sidecar ({exc})") from None


def join_sidecar(split: Split, sidecar_path: str, loaded=None):
    """Sidecar rows aligned to ``split`` (a pandas frame), or a clear error
    with counts when the sidecar does not describe these shards
    (:class:`~cleaner.train.weights.SidecarMismatchError`, exit 2, as in
    ``nclean filter``). ``loaded``: ``(table, meta)`` already read."""
    table, meta = loaded if loaded is not None else read_train_sidecar(sidecar_path)
    frame = table.to_pandas()
    try:  # by (shard, key), or by key for a sidecar scored from clip-retrieval embeddings
        join = join_of([meta], [str(sidecar_path)])
    except ValueError as exc:
        raise InputError(f"--sidecar: {exc}") from None
    frame.index, wanted = align_ids(
        join, frame["shard"], frame["key"], split.shards, split.keys,
        side_uids=frame["uid"] if "uid" in frame else None, uids=split.uids,
    )  # fmt: skip
    missing = [s for s, w in zip(split.shards, wanted) if w not in frame.index]
    if missing:
        shards = sorted(set(missing))
        raise SidecarMismatchError(
            f"{len(missing)} of {len(wanted)} training samples have no row in {sidecar_path} "
            f"(shards: {', '.join(shards[:5])}{' ...' if len(shards) > 5 else ''}); "
            "was the sidecar made from these shards?"
        )
    return frame.loc[wanted].reset_index(drop=True), meta


def checked_weights(
    side, column: str, rows: np.ndarray, method: str, negative_ok: bool = False
) -> np.ndarray:
    """``side[column]`` as float32, checked on the ``rows`` a method trains on.

    A missing (null/NaN) or infinite value -- or, for a weight, a negative
    one -- in a row whose status is ``ok`` is a ConfigError (exit 2) naming
    the column and the counts: training on it would turn every loss NaN (or
    reward a pair for mismatching). In a row whose sample could not be
    scored (status not ``ok``) it becomes 0, that row's documented weight,
    with a warning that counts them. Rows not in ``rows`` are left as they are.
    """
    values = np.array(pd.to_numeric(side[column], errors="coerce"), dtype=np.float64)  # a copy
    trained = np.zeros(len(values), dtype=bool)
    trained[rows] = True
    missing, infinite = np.isnan(values), np.isinf(values)
    negative = np.zeros_like(trained) if negative_ok else values < 0
    bad = trained & (missing | infinite | negative)
    ok = (
        side["status"].eq("ok").to_numpy(bool)
        if "status" in side
        else np.ones(len(values), dtype=bool)
    )
    refused = bad & ok
    if refused.any():
        counts = [
            f"{int((refused & m).sum())} {what}"
            for m, what in (
                (missing, "missing/NaN"),
                (infinite, "infinite"),
                (negative, "negative"),
            )
            if (refused & m).any()
        ]
        first = int(np.flatnonzero(refused)[0])
        where = f"shard {side['shard'].iloc[first]}, key {side['key'].iloc[first]!r}"
        need = "a finite number" if negative_ok else "a finite number >= 0"
        raise ConfigError(
            f"--method {method}: sidecar column {column} has {', '.join(counts)} value(s) in "
            f"{int(trained.sum())} training rows (first: {where}); it must be {need}: "
            "rescore the sidecar or fix the column"
        )
    if bad.any():
        print(
            f"nclean: warning: {int(bad.sum())} training row(s) whose status is not ok have no "
            f"usable {column}; they get weight 0",
            file=sys.stderr,
            flush=True,
        )
    values[bad] = 0.0
    return values.astype(np.float32)


def where_mask(side, expr: str) -> np.ndarray:
    """Keep mask of ``--where`` over sidecar rows (a pandas frame or a
    pyarrow table); bad expressions are a ConfigError (exit 2) as in
    ``nclean filter``: unknown columns, text or numeric results, syntax."""
    try:
        value = evaluate(side, expr)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--where: {exc}") from None
    if value.dtype != bool:
        raise ConfigError(
            f"--where: a keep/drop expression must be true/false, {expr!r} is a number "
            f"(compare it, e.g. {expr} > 0)"
        )
    return value


def expression_weights(side, expr: str, rows: np.ndarray, method: str = "filter") -> np.ndarray:
    """``--weight``: one loss weight per sidecar row from an expression
    (e.g. ``match_clean_prob``), float32. It must be a number, and finite and
    >= 0 on the rows trained on (:func:`checked_weights`' rules); true/false
    counts as 1/0, a null as 0 (the expression language's rule for weights)."""
    try:
        value = evaluate(side, expr)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--weight: {exc}") from None
    names = side.column_names if isinstance(side, pa.Table) else list(side.columns)
    # named by the expression, so a refusal says which weights were bad
    frame = pd.DataFrame({expr: np.asarray(value, dtype=np.float64)})
    for col in ("status", "shard", "key"):
        if col in names:
            frame[col] = np.asarray(side[col])
    return checked_weights(frame, expr, rows, f"{method} --weight")


def osa_form_of(meta: dict, sidecar_path) -> str:
    """The OSA weight curve a sidecar was scored with (``params.osa.form``:
    ``paper`` or ``monotone``, what ``--thresholds auto`` writes); sidecars
    from before the form was recorded were scored with the paper's cubic."""
    from cleaner.methods.osa.loss import FORMS

    form = ((meta.get("params") or {}).get("osa") or {}).get("form") or "paper"
    if form not in FORMS:
        raise ConfigError(
            f"--osa-form code: {sidecar_path} records OSA weight form {form!r}; "
            f"this trainer knows {', '.join(FORMS)}"
        )
    return form


def required_columns(cfg: TrainConfig) -> list[str]:
    """Sidecar columns the chosen method reads (``--where`` is checked on its own)."""
    if cfg.task == "classify":
        return (
            ["cc_selected"]
            if cfg.method == "mixfix" or (cfg.method == "filter" and not cfg.where)
            else []
        )
    if cfg.method == "osa":
        return [
            {"paper": "osa_weight", "paper-norm": "osa_weight_norm", "code": "cosine"}[cfg.osa_form]
        ]
    if cfg.method == "sdd":
        return ["sdd_keep", "sdd_w_con", "sdd_mb_image_key", "sdd_mb_text_key"]
    if cfg.method == "sps":
        return ["sps_partition", "sps_soft_label", "sps_proxy_key", "sps_proxy_label"]
    return []


def check_sidecar(cfg: TrainConfig, loaded) -> None:
    """Fail before decoding any shard: the method's columns must be there
    and ``--where`` must be a valid true/false expression over the sidecar."""
    table, meta = loaded
    absent = [c for c in required_columns(cfg) if c not in table.column_names]
    if absent:
        raise ConfigError(
            f"--method {cfg.method} needs sidecar column(s) {', '.join(absent)}, which "
            f"{cfg.sidecar} lacks; score it with the method (nclean score --methods ...)"
        )
    if (
        cfg.task == "pairs"
        and cfg.method == "osa"
        and cfg.osa_form == "code"
        and "beta" not in meta
    ):
        raise ConfigError(f"--osa-form code needs beta in the metadata of {cfg.sidecar}")
    if cfg.task == "pairs" and cfg.weight:  # a bad expression fails before any decoding
        expression_weights(table, cfg.weight, np.zeros(0, np.int64))
    if cfg.method == "filter" and cfg.where:
        keep = where_mask(table, cfg.where)
        if "status" in table.column_names:  # the trainer only sees scorable samples
            ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
            keep &= ok.to_numpy(zero_copy_only=False).astype(bool)
        if keep.sum() < 2:  # fail before decoding the shards (checked again after the join)
            raise ConfigError(
                f"--method filter: only {int(keep.sum())} training rows selected; nothing to "
                f"train on (--where {cfg.where!r})"
            )
