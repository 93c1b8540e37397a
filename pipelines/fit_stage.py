"""The fit stage: global statistics of every selected method, fitted once.

One streaming pass over the cache keeps, for a seeded Bernoulli sample of
about ``fit_sample`` scorable rows, the per-row values each method asked for
(:meth:`Method.sample_columns`: SDD's cosine, SPS's in-batch loss) -- only
those scalars, so memory is O(sample), not O(dataset). Each method then
fits on its sample through a :class:`FitContext`, which also lends it the
job's services (rows of the cache, the estimator, array files in the job's
state folder) so that methods never do I/O themselves.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cleaner.errors import ConfigError
from cleaner.io.atomic import atomic_path
from cleaner.io.embcache import EmbeddingCache, normalise_rows
from cleaner.methods import catalog
from cleaner.methods.registry import FitContext
from cleaner.methods.sampling import base_hash, hash_order, row_sample_mask
from cleaner.methods.threads import thread_beside
from cleaner.progress import progress_bar
from pipelines.shard_view import ROW_ID_SHIFT, RowMemo, gather_vectors, iter_views


def bar(items, desc: str, progress: bool, unit: str = "shard"):
    return progress_bar(
        items, desc=desc, unit=unit, disable=not progress, file=sys.stderr,
        dynamic_ncols=True, leave=False,
    )  # fmt: skip


def log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


# A job whose scorable vectors (float32, both sides) fit in this keeps its
# shards' views between the fit, index and transform passes: at 100k 512-d
# rows (400 MiB) that is 20 of 30 shard reads saved; larger jobs stream.
KEEP_VIEWS_BYTES = 1 << 29


class JobData:
    """The job's cache as the methods may reach it while fitting."""

    def __init__(self, cache: EmbeddingCache, stems: list[str], ok_counts: list[int],
                 n_classes: int | None, progress: bool):  # fmt: skip
        self.cache, self.stems, self.ok_counts = cache, stems, ok_counts
        self.n_classes, self.progress = n_classes, progress
        self.memo = RowMemo()  # per-shard values the methods memoise, kept across passes
        self.kept = {} if self._vector_bytes() <= KEEP_VIEWS_BYTES else None
        self._last_positions: tuple = (None, None)  # (row ids digest, their positions)

    def _vector_bytes(self) -> int:
        """Bytes of the scorable rows' vectors as float32, both sides."""
        total = int(sum(self.ok_counts))
        if not total:
            return 0
        first = next(s for p, s in enumerate(self.stems) if self.ok_counts[p])
        return total * int(self.cache.open_vectors(first)[0].shape[1]) * 8

    def views(self, desc: str, skip_empty: bool = False):
        """(stem, ShardView) of every shard, the next one read ahead."""
        items = [(p, s) for p, s in enumerate(self.stems) if self.ok_counts[p] or not skip_empty]
        progress = bar(range(len(items)), desc, self.progress)
        for item in self.read(items):
            yield item
            progress.update(1)
        progress.close()

    def read(self, items, ahead: int = 1):
        """(stem, ShardView) of ``items`` ((position, stem)), the next ones
        read ahead. A small job (its vectors within ``KEEP_VIEWS_BYTES``)
        keeps the views for its next pass instead of reading them again."""
        kept = self.kept
        if kept is not None and all(s in kept for _, s in items):
            yield from ((s, kept[s]) for _, s in items)
            return
        for stem, view in iter_views(self.cache, items, self.n_classes, self.memo, ahead):
            if kept is not None:
                kept[stem] = view
            yield stem, view

    def _hash_ordered_ok_rows(self, stem: str) -> np.ndarray:
        """A shard's ok row positions in the order of their keys' hash,
        memoised (within the memo's row budget): the fits gather repeatedly."""
        extra = self.memo.extra_for(stem, self.cache.num_rows(stem))
        hit = extra.get("hash_ordered_ok_rows")
        if hit is None:
            ok_idx = np.flatnonzero(self.cache.ok_mask(stem))
            keys = self.cache.read_meta(stem).column("key")
            hit = ok_idx[hash_order(base_hash(keys)[ok_idx])]
            extra["hash_ordered_ok_rows"] = hit
        return hit

    def gather_rows(self, global_rows: np.ndarray, which: str) -> np.ndarray:
        """Rows numbered over the ok rows of all shards (in order), read from
        the memory-mapped cache one shard at a time, L2-normalised. Within a
        shard, rows are numbered in the order of their keys' hash, so a
        seeded draw of row numbers picks the same samples in any row order."""
        offsets = np.concatenate([[0], np.cumsum(self.ok_counts)])
        order = np.argsort(global_rows, kind="stable")
        sorted_rows = global_rows[order]
        shard_of = np.searchsorted(offsets, sorted_rows, side="right") - 1
        out = None
        for s in np.unique(shard_of):
            ok_idx = self._hash_ordered_ok_rows(self.stems[s])
            img, txt = self.cache.open_vectors(self.stems[s])
            sel = shard_of == s
            vals = np.asarray(
                (img if which == "image" else txt)[ok_idx[sorted_rows[sel] - offsets[s]]],
                np.float32,
            )
            if out is None:
                out = np.zeros((len(global_rows), vals.shape[1]), np.float32)
            out[order[sel]] = vals
        return normalise_rows(out)

    def gather_ids(self, row_ids: np.ndarray, which: str) -> np.ndarray:
        """The ``image`` or ``text`` vectors of rows named by their row ids
        (:class:`ShardView`'s: shard position and the row's ``index``), in the
        order given, as a pass over the shards would have read them."""
        row_ids = np.asarray(row_ids, np.int64)
        shard_pos, row_pos = self._positions(row_ids)
        return gather_vectors(self.cache, self.stems, shard_pos, row_pos, which)

    def _positions(self, row_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard position, row position) of each row id; the last answer is
        kept (a fit reads both sides of the same rows)."""
        memo_key = hashlib.sha1(row_ids.tobytes()).digest()
        if self._last_positions[0] == memo_key:
            return self._last_positions[1]
        shard_pos = row_ids >> ROW_ID_SHIFT
        row_pos = np.empty(len(row_ids), np.int64)
        for s in np.unique(shard_pos):
            at = np.flatnonzero(shard_pos == s)
            index = self.cache.read_meta(self.stems[int(s)]).column("index").to_numpy()
            order = np.argsort(index, kind="stable")
            want = row_ids[at] & ((1 << ROW_ID_SHIFT) - 1)
            found = order[np.clip(np.searchsorted(index[order], want), 0, len(index) - 1)]
            if len(index) == 0 or not np.array_equal(index[found], want):
                raise ValueError(f"row ids not found in partition {self.stems[int(s)]}")
            row_pos[at] = found
        self._last_positions = (memo_key, (shard_pos, row_pos))
        return shard_pos, row_pos


class StateFiles:
    """Array files a fit keeps next to fit.json, checked by digest on reuse."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)

    def save(self, name: str, arrays: dict) -> dict:
        path = self.state_dir / f"{name}.npz"
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
        return {"file": path.name, "sha1": hashlib.sha1(path.read_bytes()).hexdigest()}

    def load(self, record: dict) -> dict:
        path = self.state_dir / record["file"]
        if not path.exists() or hashlib.sha1(path.read_bytes()).hexdigest() != record["sha1"]:
            raise ConfigError(f"{path} is missing or changed since the fit; rerun with --overwrite")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def text_encoder(estimator_spec, state_dir: Path):
    """Texts -> normalised text embeddings, cached in the job's state folder
    (keyed by the texts and the estimator) so a rerun does not re-encode them."""

    def encode(texts: list[str]) -> np.ndarray:
        ident = json.dumps({"texts": texts, "estimator": estimator_spec.identity()}, sort_keys=True)
        path = state_dir / f"prompt_emb_{hashlib.sha1(ident.encode()).hexdigest()[:16]}.npy"
        if path.exists():
            return np.load(path)
        import torch

        est = estimator_spec.get()
        out = [
            est.encode_text(torch.as_tensor(est.tokenizer(texts[i : i + 256]))).cpu().numpy()
            for i in range(0, len(texts), 256)
        ]
        emb = np.concatenate(out).astype(np.float32)
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, emb)
        return emb

    return encode


def sample_columns(scorers: dict, data: JobData, fit_sample: int, seed: int) -> dict:
    """method -> {column: values over a seeded sample of about fit_sample rows}."""
    total = int(sum(data.ok_counts))
    rate = 1.0 if total <= fit_sample else fit_sample / total
    parts: dict[str, dict[str, list]] = {name: {} for name in scorers}
    for stem, view in data.views("fit", skip_empty=True):
        take = row_sample_mask(view.pairs, rate, seed, "fit-sample")  # by key: order-free
        for name, scorer in scorers.items():
            cols = catalog.get(name).sample_columns(scorer, view.pairs, seed_key=stem)
            for col, values in cols.items():
                parts[name].setdefault(col, []).append(np.asarray(values)[take])
    return {
        name: {col: np.concatenate(chunks) for col, chunks in cols.items()}
        for name, cols in parts.items()
    }


def fit_methods(settings, options: dict, data: JobData, estimator_spec, state_dir: Path) -> dict:
    """Fit every selected method; returns method -> JSON-able params."""
    seed = settings.seed
    scorers = {
        name: s
        for name in settings.methods
        if (s := catalog.get(name).new_scorer(options, seed)) is not None
    }
    # methods that fit on a shared sample of per-row values (SDD, SPS); the
    # others (OSA, match, CLIPCleaner) draw what they need themselves
    samplers = {n: s for n, s in scorers.items() if catalog.get(n).samples_rows}
    samples = sample_columns(samplers, data, settings.fit_sample, seed) if samplers else {}
    n_fit = len(next(iter(next(iter(samples.values())).values()))) if samples else 0
    if samplers and n_fit < 2:
        raise ValueError(f"{'/'.join(s.upper() for s in samplers)} need at least two scorable "
                         "samples to fit on")  # fmt: skip
    files = StateFiles(state_dir)

    def fit_one(name: str) -> dict:
        ctx = FitContext(
            settings=settings, options=options, seed=seed, ok_counts=data.ok_counts,
            sample=samples.get(name, {}), log=log, gather_rows=data.gather_rows,
            gather_ids=data.gather_ids,
            estimator=estimator_spec.get if estimator_spec is not None else None,
            encode_texts=text_encoder(estimator_spec, state_dir) if estimator_spec else None,
            iter_views=data.views, save_arrays=files.save, load_arrays=files.load,
            n_classes=data.n_classes,
        )  # fmt: skip
        params = catalog.get(name).fit(scorers.get(name), ctx)
        if name in samplers:
            params["fit_rows"] = n_fit
            params["fit_rows_total"] = int(sum(data.ok_counts))
        return params

    aside = [n for n in settings.methods if catalog.get(n).fits_aside]
    # BLAS at one thread on both threads (thread_beside): its limit is
    # process-wide, so the fits on this thread would otherwise run at one or
    # two threads as the other's blocks come and go, and a mixture fit's sums
    # depend on that (measured: GMM means 1 ulp apart)
    with thread_beside("nclean-fit") as pool:
        later = {name: pool.submit(fit_one, name) for name in aside}
        params = {name: fit_one(name) for name in settings.methods if name not in later}
        params.update({name: f.result() for name, f in later.items()})
    return {name: params[name] for name in settings.methods}


def restore_scorers(params: dict, state_dir: Path | None) -> dict:
    """method -> fitted scorer, from the stored params (on every resume)."""
    files = StateFiles(state_dir) if state_dir is not None else None
    ctx = FitContext(settings=None, options={}, seed=0, ok_counts=[],
                     load_arrays=files.load if files else None)  # fmt: skip
    return {name: catalog.get(name).restore(p, ctx) for name, p in params.items()}
