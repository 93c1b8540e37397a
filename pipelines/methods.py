"""The scorers a job runs, driven through the three passes over the cache.

1. *fit pass* (:func:`fit_methods`): one streaming pass over the shards
   collecting, for a seeded Bernoulli sample of the scorable rows, what the
   global fits need -- the cosine (SDD's GMM) and the SPS loss computed in
   the shard's own batches (exactly the value the transform will see). Only
   those scalars are kept: memory is O(sample), not O(dataset).
2. *reference pass* (:func:`build_indexes`): stream shards again, adding the
   rows each method searches (SDD's clean set D_c by image and by text,
   SPS's reliable images) to faiss indexes in chunks.
3. *transform* (:func:`transform_shard`): per shard, independent.

Fitted parameters are plain JSON (stored in ``_nclean/fit.json`` and in
every part's metadata); indexes are rebuilt deterministically on resume.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from cleaner.errors import ConfigError, InputError
from cleaner.io.atomic import atomic_path
from cleaner.io.embcache import EmbeddingCache
from cleaner.io.sidecar import build_part
from cleaner.methods.base import Pairs
from cleaner.methods.neighbors import NeighborIndex
from cleaner.methods.osa.scorer import OSAScorer
from cleaner.methods.sdd.scorer import SDDScorer
from cleaner.methods.sps.scorer import SPSScorer

ROW_ID_SHIFT = 32  # row id = shard position << 32 | index within shard


@dataclass
class MethodSettings:
    """Per-method knobs (defaults: the published values, METHODS.md)."""

    sdd_alpha: float = 20.0
    sdd_beta_c: float = 30.0
    sps_batch_size: int = 128
    sps_eps1: float = 0.99
    sps_eps2: float = 0.5
    sps_proxy_label: str = "code"
    sps_gamma: float = 1.0
    sps_b: float = 5.0
    fit_sample: int = 1_000_000  # rows used for global fits; all rows when fewer
    exact_threshold: int = 200_000  # faiss: exact search up to this many indexed rows, IVF above
    # CLIPCleaner (METHODS.md section 3)
    cc_classes: str | None = None  # classes file (one per line) or JSON list
    cc_prompts: str | None = None  # JSON: class name -> prompts; None = built-in templates
    cc_prompt_aggregate: str = "sum"
    cc_induced: str = "oof"
    cc_folds: int = 5
    cc_theta_cons: float = 0.8
    cc_theta_gmm: float = 0.5
    cc_estimators: tuple[str, ...] = ("zs", "ind")
    cc_selectors: tuple[str, ...] = ("consistency", "gmm")
    cc_combine: str = "intersection"
    cc_fit_sample: int = (
        200_000  # labelled rows for the regression and GMMs (stratified sample above)
    )


def new_scorers(methods: list[str], ms: MethodSettings, seed: int) -> dict:
    out = {}
    if "sdd" in methods:
        out["sdd"] = SDDScorer(alpha=ms.sdd_alpha, beta_c=ms.sdd_beta_c, random_state=seed)
    if "sps" in methods:
        out["sps"] = SPSScorer(
            batch_size=ms.sps_batch_size,
            eps1=ms.sps_eps1,
            eps2=ms.sps_eps2,
            proxy_label=ms.sps_proxy_label,
            gamma=ms.sps_gamma,
            b=ms.sps_b,
            seed=seed,
        )
    return out


def load_class_names(ms: MethodSettings) -> list[str]:
    from cleaner.estimator.prompts import load_classes

    if not ms.cc_classes:
        raise ConfigError(
            "CLIPCleaner needs --classes FILE (class names, one per line; line number = label id)"
        )
    try:
        return load_classes(ms.cc_classes)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--classes {ms.cc_classes}: {exc}") from None


def prompt_texts(ms: MethodSettings, classes: list[str]) -> tuple[list[str], np.ndarray]:
    from cleaner.estimator.prompts import build_prompts, load_prompts

    try:
        prompts = load_prompts(ms.cc_prompts, classes) if ms.cc_prompts else None
        return build_prompts(classes, prompts)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--prompts {ms.cc_prompts}: {exc}") from None


def fit_clipcleaner(
    ms: MethodSettings,
    seed: int,
    cache: EmbeddingCache,
    stems: list[str],
    ok_counts: list[int],
    encode_prompts,
    state_dir: Path,
    progress: bool,
) -> dict:
    """Fit CLIPCleaner on the labelled rows (a seeded sample of about
    ``cc_fit_sample`` rows above that, cut to exactly that many by a
    stratified draw inside the scorer). Saves the out-of-fold table next to
    fit.json (it is per-row, too big for JSON) and returns the params."""
    from cleaner.methods.clipcleaner.scorer import CLIPCleanerScorer

    classes = load_class_names(ms)
    texts, class_of_prompt = prompt_texts(ms, classes)
    total = int(sum(ok_counts))
    rate = 1.0 if total <= ms.cc_fit_sample else min(1.0, 1.2 * ms.cc_fit_sample / total)
    images, labels, row_ids = [], [], []
    for pos, stem in enumerate(_bar(stems, "fit clipcleaner", progress)):
        view = ShardView.load(cache, stem, pos, n_classes=len(classes))
        take = _sample_mask(len(view.pairs), rate, seed, "cc:" + stem)
        images.append(view.pairs.image[take])
        labels.append(view.pairs.labels[take])
        row_ids.append(view.pairs.row_ids[take])
    image = np.concatenate(images)
    if len(image) < 2:
        raise ValueError("CLIPCleaner needs at least two samples with a valid label")
    prompt_emb = encode_prompts(texts)
    scorer = CLIPCleanerScorer(
        len(classes),
        theta_cons=ms.cc_theta_cons,
        theta_gmm=ms.cc_theta_gmm,
        prompt_aggregate=ms.cc_prompt_aggregate,
        induced=ms.cc_induced,
        n_folds=ms.cc_folds,
        estimators=ms.cc_estimators,
        selectors=ms.cc_selectors,
        combine=ms.cc_combine,
        max_fit_samples=ms.cc_fit_sample if len(image) > ms.cc_fit_sample else None,
        seed=seed,
    )
    scorer.fit(
        Pairs(image, image, labels=np.concatenate(labels), row_ids=np.concatenate(row_ids)),
        prompt_emb,
        class_of_prompt,
    )
    params = scorer.get_params()
    params["classes"] = classes
    params["n_prompts"] = len(texts)
    if scorer.oof_ is not None:
        path = state_dir / "clipcleaner_oof.npz"
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **scorer.oof_)
        params["oof_file"] = path.name
        params["oof_sha1"] = hashlib.sha1(path.read_bytes()).hexdigest()
    return params


def scorers_from_params(params: dict, state_dir: Path | None = None) -> dict:
    out = {}
    if "osa" in params:
        out["osa"] = OSAScorer.from_params(params["osa"])
    if "sdd" in params:
        out["sdd"] = SDDScorer.from_params(params["sdd"])
    if "sps" in params:
        out["sps"] = SPSScorer.from_params(params["sps"])
    if "clipcleaner" in params:
        from cleaner.methods.clipcleaner.scorer import CLIPCleanerScorer

        cc = params["clipcleaner"]
        oof = None
        if cc.get("oof_file"):
            path = state_dir / cc["oof_file"]
            if not path.exists() or hashlib.sha1(path.read_bytes()).hexdigest() != cc["oof_sha1"]:
                raise ConfigError(
                    f"{path} is missing or changed since the fit; rerun with --overwrite"
                )
            with np.load(path, allow_pickle=False) as z:
                oof = {k: z[k] for k in z.files}
        core = {
            k: v for k, v in cc.items() if k not in ("classes", "n_prompts", "oof_file", "oof_sha1")
        }
        out["clipcleaner"] = CLIPCleanerScorer.from_params(core, oof=oof)
    return out


@dataclass
class ShardView:
    """One cache partition as the scorers see it."""

    meta: pa.Table
    ok: np.ndarray
    pairs: Pairs

    @classmethod
    def load(
        cls, cache: EmbeddingCache, stem: str, position: int, n_classes: int | None = None
    ) -> ShardView:
        """``n_classes`` set: labels are needed; rows without a valid one
        become ``bad_label`` status rows (embeddings input can carry any)."""
        shard = cache.load(stem)
        meta = shard.meta
        labels = None
        if n_classes is not None:
            meta, labels = _check_labels(meta, n_classes, stem)
        ok = np.asarray(meta.column("status").to_pylist(), dtype=object) == "ok"
        keys = np.asarray(meta.column("key").to_pylist(), dtype=object)
        index = meta.column("index").to_numpy()
        row_ids = (np.int64(position) << ROW_ID_SHIFT) | index.astype(np.int64)
        pairs = Pairs(
            image=shard.image[ok],
            text=shard.text[ok],
            keys=keys[ok],
            row_ids=row_ids[ok],
            labels=None if labels is None else labels[ok],
        )
        return cls(meta=meta, ok=ok, pairs=pairs)


def _check_labels(meta: pa.Table, n_classes: int, stem: str) -> tuple[pa.Table, np.ndarray]:
    if "label" not in meta.column_names:
        raise InputError(
            f"partition {stem} has no label column: CLIPCleaner needs labelled data "
            "(shards with a cls member or --label-key json:<field>)"
        )
    raw = meta.column("label").to_pylist()
    labels = np.array([-1 if v is None else int(v) for v in raw], dtype=np.int64)
    status = np.asarray(meta.column("status").to_pylist(), dtype=object)
    bad = (status == "ok") & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        error = np.asarray(meta.column("error").to_pylist(), dtype=object)
        status = status.copy()
        status[bad] = "bad_label"
        for i in np.flatnonzero(bad):
            error[i] = (
                "label missing"
                if labels[i] < 0
                else f"label {labels[i]} out of range [0, {n_classes})"
            )
        meta = meta.set_column(
            meta.schema.get_field_index("status"), "status", pa.array(status.tolist(), pa.string())
        )
        meta = meta.set_column(
            meta.schema.get_field_index("error"), "error", pa.array(error.tolist(), pa.string())
        )
    return meta, labels


def _sample_mask(n: int, rate: float, seed: int, stem: str) -> np.ndarray:
    """Seeded per-shard Bernoulli sample: reproducible shard by shard."""
    if rate >= 1.0:
        return np.ones(n, dtype=bool)
    digest = int.from_bytes(hashlib.sha256(f"fit-sample:{stem}".encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, digest])
    return rng.random(n) < rate


def _bar(items, desc: str, progress: bool):
    return tqdm(
        items,
        desc=desc,
        unit="shard",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )


def fit_methods(
    methods,
    ms: MethodSettings,
    seed: int,
    cache: EmbeddingCache,
    stems: list[str],
    ok_counts: list[int],
    progress: bool,
    n_classes: int | None = None,
) -> dict:
    """Fit SDD / SPS on all rows, or on a seeded sample of ``ms.fit_sample`` rows."""
    scorers = new_scorers(methods, ms, seed)
    if not scorers:
        return {}
    total = int(sum(ok_counts))
    rate = 1.0 if total <= ms.fit_sample else ms.fit_sample / total
    cosines, losses = [], []
    for pos, stem in enumerate(_bar(stems, "fit", progress)):
        if ok_counts[pos] == 0:
            continue
        view = ShardView.load(cache, stem, pos, n_classes)
        take = _sample_mask(len(view.pairs), rate, seed, stem)
        cosines.append(view.pairs.cosine[take])
        if "sps" in scorers:
            losses.append(scorers["sps"].per_sample_loss(view.pairs, seed_key=stem)[take])
    params = {}
    cos = np.concatenate(cosines) if cosines else np.zeros(0, np.float32)
    if len(cos) < 2:
        raise ValueError("SDD/SPS need at least two scorable samples to fit on")
    if "sdd" in scorers:
        sdd = scorers["sdd"].fit(cos)
        params["sdd"] = sdd.get_params()
        # expected size of the memory-bank pool, to size the faiss index
        params["sdd"]["pool_fraction"] = float(np.mean(100.0 * cos > sdd.beta_c))
    if "sps" in scorers:
        sps = scorers["sps"]
        loss = np.concatenate(losses)
        params["sps"] = sps.fit(loss).get_params()
        params["sps"]["pool_fraction"] = float(
            np.mean(sps.partition(sps.clean_prob(loss)) == "reliable")
        )
    for p in params.values():
        p["fit_rows"] = int(len(cos))
        p["fit_rows_total"] = total
    return params


@dataclass
class Indexes:
    sdd_image: NeighborIndex | None = None
    sdd_text: NeighborIndex | None = None
    sps_image: NeighborIndex | None = None

    def describe(self) -> dict:
        return {name: idx.describe() for name, idx in vars(self).items() if idx is not None}


def build_indexes(
    scorers: dict,
    params: dict,
    ms: MethodSettings,
    seed: int,
    cache: EmbeddingCache,
    stems: list[str],
    dim: int,
    progress: bool,
    n_classes: int | None = None,
) -> Indexes:
    """Stream every shard once, adding each method's search pool in chunks."""
    sdd, sps = scorers.get("sdd"), scorers.get("sps")
    idx = Indexes()
    if sdd is None and sps is None:
        return idx

    def new(method):
        expected = max(1, int(params[method]["pool_fraction"] * params[method]["fit_rows_total"]))
        return NeighborIndex(
            dim, exact_threshold=ms.exact_threshold, expected_n=expected, seed=seed
        )

    if sdd is not None:
        idx.sdd_image, idx.sdd_text = new("sdd"), new("sdd")
    if sps is not None:
        idx.sps_image = new("sps")
    total = params[next(iter(m for m in ("sdd", "sps") if m in params))]["fit_rows_total"]
    recall_queries = []
    for pos, stem in enumerate(_bar(stems, "index", progress)):
        view = ShardView.load(cache, stem, pos, n_classes)
        p = view.pairs
        if len(p) == 0:
            continue
        if sdd is not None:
            m = sdd.reference_mask(p)
            if m.any():
                idx.sdd_image.add(p.image[m], p.row_ids[m], p.keys[m])
                idx.sdd_text.add(p.text[m], p.row_ids[m], p.keys[m])
        if sps is not None:
            m, match_prob = sps.reference_rows(p, seed_key=stem)
            if m.any():
                idx.sps_image.add(p.image[m], p.row_ids[m], p.keys[m], payload=match_prob[m])
        if sum(len(q[0]) for q in recall_queries) < 1000:
            take = _sample_mask(len(p), min(1.0, 2000 / max(1, total)), seed, "recall:" + stem)
            recall_queries.append((p.image[take], p.text[take], p.row_ids[take]))
    for name, index in vars(idx).items():
        if index is None:
            continue
        index.finalize()
        if index.kind != "flat" and recall_queries:
            modality = 1 if name == "sdd_text" else 0
            q = np.concatenate([r[modality] for r in recall_queries])[:1000]
            rid = np.concatenate([r[2] for r in recall_queries])[:1000]
            recall = index.measure_recall(q, k=1, query_row_ids=rid)
            tqdm.write(
                f"{name}: IVF nlist={index.nlist} nprobe={index.nprobe}, recall@1 vs exact = {recall:.4f}",
                file=sys.stderr,
            )
    return idx


def transform_shard(
    view: ShardView, stem: str, scorers: dict, indexes: Indexes, methods: list[str], metadata: dict
) -> pa.Table:
    columns: dict[str, np.ndarray] = {}
    p = view.pairs
    if "osa" in methods:
        columns.update(scorers["osa"].transform(p))
    if "sdd" in methods:
        columns.update(scorers["sdd"].transform(p, indexes.sdd_image, indexes.sdd_text))
    if "sps" in methods:
        columns.update(scorers["sps"].transform(p, indexes.sps_image, seed_key=stem))
    if "clipcleaner" in methods:
        cc = scorers["clipcleaner"].transform(p)
        for name in ("cc_pred_zs", "cc_pred_ind"):  # -1 means "estimator not used": null
            v = np.asarray(cc[name]).astype(object)
            v[np.asarray(cc[name]) < 0] = None
            cc[name] = v
        columns.update(cc)
    return build_part(view.meta, view.ok, columns, methods, metadata)
