"""Resume bookkeeping of the score job: what was fitted, on which inputs.

``_nclean/fit.json`` records the settings, the inputs (shard stems) and
their fingerprints, and the fitted parameters. A rerun reuses it when the
settings and inputs are the same, refits when shards that were unreadable
last time can be read now, and refuses (naming what changed) when the
settings differ or an input changed since it was scored -- its rows would
be stale.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from cleaner.errors import ConfigError
from cleaner.io.atomic import write_json
from pipelines.embed_job import describe_changes, file_fingerprint


def settings_json(settings) -> dict:
    """Settings as they read back from JSON (tuples become lists), so a
    stored fit compares equal to the same settings given again."""
    return json.loads(json.dumps(asdict(settings), sort_keys=True))


def fit_id(fit: dict) -> str:
    return hashlib.sha1(json.dumps(fit, sort_keys=True).encode()).hexdigest()[:16]


def read_fit(layout) -> dict | None:
    try:
        return json.loads(layout.fit_path.read_text())
    except (OSError, ValueError):
        return None


def fingerprints(embeddings_input: bool, cache, stems: list[str], paths: dict) -> dict:
    """Each input's fingerprint as scored: for shards the one recorded when
    it was embedded (the embed stage has just checked it still matches the
    file), for an embeddings folder its partition files."""
    out = {}
    for stem in stems:
        if not embeddings_input:
            info = cache.info(stem) or {}
            out[stem] = info.get("shard_fingerprint") or file_fingerprint(paths[stem])
        else:
            out[stem] = {
                "metadata": file_fingerprint(cache.meta_path(stem)),
                "img_emb": file_fingerprint(cache.img_path(stem)),
                "text_emb": file_fingerprint(cache.text_path(stem)),
            }
    return out


def refuse_changed(layout, stored: dict, current: dict, names: dict) -> None:
    """ConfigError naming the inputs whose fingerprint differs from the one
    the job recorded when it scored them (stale rows otherwise). A job from
    before fingerprints were recorded has none: nothing to compare."""
    recorded = stored.get("fingerprints") or {}
    kinds = {
        frozenset(fp) for fp in (*recorded.values(), *current.values()) if isinstance(fp, dict)
    }
    if len(kinds) > 1:  # shard files ({size, mtime_ns}) vs embedding partitions
        raise ConfigError(
            f"{layout.parts_dir} was scored from another kind of input (shards vs --embeddings); "
            "pass --overwrite to redo it from this one, or choose another --out"
        )
    changed = [
        (names.get(s, s), recorded[s], current[s])
        for s in current
        if recorded.get(s) is not None and recorded[s] != current[s]
    ]
    if changed:
        raise ConfigError(
            f"{len(changed)} input(s) changed since {layout.parts_dir} was scored: "
            f"{describe_changes(changed)}; its rows are stale: pass --overwrite to "
            "redo them, or choose another --out"
        )


def only_recovered(stored: dict, stems: list[str]) -> bool:
    """True when ``stems`` are the stored inputs plus shards the stored run
    could not read (and nothing else changed)."""
    before, now = stored.get("inputs") or [], set(stems)
    added = now - set(before)
    return bool(added) and set(before) <= now and added <= set(stored.get("unreadable") or [])


def reusable_fit(layout, settings, stems, current: dict, names: dict, log) -> dict | None:
    """The stored fit when it can be reused; None when the job must fit
    (nothing stored, or recovered shards); ConfigError when it must not run."""
    if not layout.fit_path.exists():
        return None
    stored = read_fit(layout)
    same_settings = stored and stored.get("settings") == settings_json(settings)
    if same_settings and stored.get("inputs") == stems:
        refuse_changed(layout, stored, current, names)
        return stored
    if same_settings and only_recovered(stored, stems):
        # Shards that could not be read last time (exit 5) are readable now:
        # the global fit must include them, so fit again; every part's
        # fit_id changes and the parts are redone from the cache.
        recovered = sorted(set(stems) - set(stored["inputs"]))
        refuse_changed(layout, stored, current, names)
        more = " ..." if len(recovered) > 3 else ""
        log(
            f"{len(recovered)} shard(s) unreadable last time can be read now "
            f"({', '.join(recovered[:3])}{more}): fitting again over all shards"
        )
        return None
    if stored:
        raise ConfigError(
            f"{layout.parts_dir} holds results made with other settings or inputs; "
            "pass --overwrite to redo them, or choose another --out"
        )
    return None


def record_fit(layout, fit: dict, stems, unreadable, current: dict) -> dict:
    fit["inputs"] = stems
    fit["unreadable"] = sorted(unreadable or [])
    fit["fingerprints"] = current
    write_json(layout.fit_path, fit)
    return fit
