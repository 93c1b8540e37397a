"""``nclean demo``: an offline end-to-end run on generated data.

1. Generates shapes-world shards (one to three coloured shapes per image,
   compositional captions) with a fraction of shuffled captions and a few
   planted corrupt samples.
2. Pre-trains a small open_clip estimator on *clean* shapes-world pairs
   with the demo's own recipe (:data:`DEMO_RECIPE`, about two minutes of one
   CPU core the first time; cached afterwards), standing in
   for the pre-trained CLIP a real job would use. ``random_estimator=True``
   skips this and uses random weights: the machinery runs, the verdicts sit
   at chance.
3. Scores the shards through the same pipeline users run (the checkpoint is
   loaded from its file) with OSA, SDD, SPS and ``match`` and
   ``--thresholds auto``, and prints the summary plus how each method's keep
   verdict (its declared ``keep_expr``, the rule the score summary counts
   with) lines up with the planted noise.
4. Writes the HTML report with ``--shards`` into ``out/report/`` and ends by
   pointing at its ``index.html``: shuffled captions next to their images
   make the cleaning visible, which a table of AUROCs does not.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cleaner.errors import ConfigError
from cleaner.estimator.model import save_random_checkpoint
from cleaner.io import schema as S
from cleaner.io.atomic import write_json
from cleaner.worlds import shapes

# What the generated shards were made with, stored inside the shard folder
# (written before the folder is moved into place, so data and settings
# always agree); a rerun with other settings regenerates the shards.
SETTINGS_FILE = "settings.json"
SETTINGS_VERSION = 1
SHARD_SIZE = 100
DEMO_METHODS = ("osa", "sdd", "sps", "match")
# The demo's own pre-training recipe: 30,000 pairs seen instead of the
# benchmarks' default 64,000 (8000 pairs x 8 epochs at batch 128, ~5 minutes
# on 2 cores), so that the whole demo fits in 3 minutes. Measured on the
# demo's 600 pairs (auto thresholds; share of clean pairs among those each
# method keeps, AUROC):
#   3000 x 5 at batch 128 (115 steps): 69-76% clean, AUROC 0.82;
#   4000 x 6 at batch 64 (372 steps): 94.5-95.2%, AUROC 0.99;
#   6000 x 5 at batch 64 (465 steps, this one): 96.3-97.5%, AUROC 0.99.
# What the contrastive loss needed was steps: a smaller batch buys more of
# them for the same pairs seen. eval_samples only sizes the held-out check.
DEMO_RECIPE = {"samples": 6000, "epochs": 5, "batch_size": 64, "eval_samples": 300}
# each method's clean score, for the AUROC column (its keep rule is its own keep_expr)
SCORE_COLUMNS = {"osa": "cosine", "sdd": "sdd_w_con", "sps": "sps_clean_prob",
                 "match": "match_score", "clipcleaner": "cc_label_quality"}  # fmt: skip


def default_cache_dir() -> Path:
    base = os.environ.get("NCLEAN_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "nclean"
    )
    return Path(base)


def make_demo_shards(
    out: Path, samples: int, noise: float, seed: int = 0, shard_size: int = 100
) -> list[str]:
    data = shapes.generate(samples, seed=seed)
    data, _ = shapes.add_caption_noise(data, noise, seed=seed)
    return shapes.write_shards(data, out, shard_size=shard_size, plant_corrupt=True)


def validate_demo_settings(samples, noise) -> None:
    """ConfigError (exit 2) for settings the generator cannot honour."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ConfigError(f"--samples must be a whole number >= 1, not {samples!r}")
    if not (
        isinstance(noise, (int, float))
        and not isinstance(noise, bool)
        and math.isfinite(noise)
        and 0 <= noise < 1
    ):
        raise ConfigError(f"--noise must be a fraction in [0, 1), not {noise!r}")
    if round(noise * samples) == 1:
        raise ConfigError(
            f"--noise {noise} of {samples} samples shuffles a single caption, which cannot be "
            "swapped with another; choose a noise giving 0 or at least 2 shuffled captions"
        )


def _read_settings(shard_dir: Path) -> dict | None:
    return _read_json(shard_dir / SETTINGS_FILE)


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _remove(paths) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def ensure_demo_shards(
    shard_dir: Path, samples: int, noise: float, seed: int = 0, stale: tuple[Path, ...] = ()
) -> bool:
    """Make sure ``shard_dir`` holds the demo shards for these settings;
    return True when they were (re)generated.

    Shards made with the same settings are reused. Otherwise new ones are
    written to a temporary folder next to ``shard_dir`` (with their settings)
    and swapped in; ``stale`` outputs derived from the old shards (the
    sidecar and its parts, whose embedding cache is keyed by shard name) are
    removed first, so an interrupted run never leaves new shards beside old
    verdicts: at worst the next run finds no matching settings and
    regenerates again.
    """
    validate_demo_settings(samples, noise)
    settings = {
        "version": SETTINGS_VERSION,
        "samples": int(samples),
        "noise": float(noise),
        "seed": int(seed),
        "shard_size": SHARD_SIZE,
        "plant_corrupt": True,
    }
    shard_dir = Path(shard_dir)
    if _read_settings(shard_dir) == settings and any(shard_dir.glob("*.tar")):
        return False
    parent = shard_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{shard_dir.name}.tmp-{os.getpid()}"
    old = parent / f".{shard_dir.name}.old-{os.getpid()}"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        make_demo_shards(tmp, samples, noise, seed=seed, shard_size=SHARD_SIZE)
        write_json(tmp / SETTINGS_FILE, settings)
        _remove(stale)
        if shard_dir.exists():
            shard_dir.rename(old)
        tmp.rename(shard_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return True


def _truth(shard_dir: Path) -> dict[str, bool]:
    """key -> True if the pair is clean, from the generator's json member."""
    truth: dict[str, bool] = {}
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    try:
                        doc = json.loads(tf.extractfile(m).read())
                    except ValueError:
                        continue
                    if "clean" in doc and "planted" not in doc:
                        truth[m.name.rsplit("/", 1)[-1].split(".", 1)[0]] = bool(doc["clean"])
    return truth


def _auroc(score: np.ndarray, clean: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(score)
    if clean[ok].all() or not clean[ok].any():
        return float("nan")
    return float(roc_auc_score(clean[ok], score[ok]))


def run_demo(
    out: Path,
    samples: int = 600,
    noise: float = 0.4,
    progress: bool = True,
    random_estimator: bool = False,
    cache_dir: Path | None = None,
    recipe: dict | None = None,
) -> dict:
    """Generate (or reuse) the demo shards under ``out``, score them with
    OSA, SDD, SPS and match (``--thresholds auto``), print how each verdict
    lines up with the planted noise, and return that report as a dict."""
    validate_demo_settings(samples, noise)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    shard_dir = out / "shards"
    sidecar = out / "weights.parquet"
    # what the sidecar was scored with; written once scoring has finished
    scored_with_path = out / "weights.estimator.json"
    score_outputs = (scored_with_path, sidecar, sidecar.with_suffix(".parts"))
    if ensure_demo_shards(shard_dir, samples, noise, stale=score_outputs) and progress:
        print(
            f"generated {samples} samples ({noise:.0%} shuffled captions) in {shard_dir}",
            file=sys.stderr,
        )
    model, ckpt, what = _demo_estimator(out, random_estimator, cache_dir, progress, recipe)
    # Another estimator than last time (--random-estimator toggled, another
    # --cache-dir): the embedding cache would refuse to mix them and ask for
    # --overwrite, which demo does not have; start the scoring afresh instead.
    scored_with = {"model": model, "pretrained": str(ckpt)}
    if _read_json(scored_with_path) != scored_with:
        _remove(score_outputs)
    summary = _score(shard_dir, sidecar, model, ckpt, progress)
    write_json(scored_with_path, scored_with)
    report = _report(out, sidecar, shard_dir, summary, what)
    report["page"] = str(_page(out, sidecar, shard_dir))
    return report


def _page(out: Path, sidecar: Path, shard_dir: Path) -> Path:
    """Write the HTML report with the pairs themselves (read back from the
    shards) and point at it: the demo ends where a user would look next."""
    from cleaner.report.build import build_report

    index = build_report(sidecar, out / "report", shards=[str(shard_dir)])
    print(
        f"report: {index}\n  open it in a browser: per method, the pairs it keeps and drops "
        "(thumbnails with their captions and scores) and where the methods disagree",
        file=sys.stderr,
    )
    return index


def _demo_estimator(
    out: Path,
    random_estimator: bool,
    cache_dir: Path | None,
    progress: bool,
    recipe: dict | None = None,
) -> tuple[str, Path, str]:
    """(model name, checkpoint, words saying what it is) of the demo's estimator."""
    if random_estimator:
        model, ckpt = "nclean-tiny", out / "tiny-random.pt"
        if not ckpt.exists():
            save_random_checkpoint(model, ckpt)
        return model, ckpt, "a random-initialised estimator: expect chance-level verdicts"
    from cleaner.estimator.pretrain import DEFAULT_MODEL, estimator_info, pretrained_estimator

    ckpt = pretrained_estimator(
        cache_dir or default_cache_dir(), progress=progress, **(recipe or DEMO_RECIPE)
    )
    held = estimator_info(ckpt)["heldout"]
    what = (
        f"the estimator pre-trained on clean shapes-world pairs ({ckpt.name}; held-out R@1 "
        f"i2t {held['i2t_R@1']:.1f}%, t2i {held['t2i_R@1']:.1f}%)"
    )
    return DEFAULT_MODEL, ckpt, what


def _score(shard_dir: Path, sidecar: Path, model: str, ckpt: Path, progress: bool):
    """Score the demo shards through the users' pipeline; its summary."""
    from pipelines.embed_job import EstimatorSpec
    from pipelines.score_job import ScoreJob, ScoreSettings, run_score

    job = ScoreJob(
        out=str(sidecar),
        shards=[str(shard_dir)],
        estimator=EstimatorSpec(model=model, pretrained=str(ckpt), device="cpu"),
        settings=ScoreSettings(methods=list(DEMO_METHODS), thresholds="auto"),
        workers=1,
        progress=progress,
        argv=["demo"],
    )
    return run_score(job)


def _verdicts(scored: pa.Table, meta: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method: (keep verdict, clean score) of the scored rows, the keep
    verdict by the method's declared rule (``keep_expr``) as ``nclean score``
    counts it: OSA's is cosine > beta, its own noise rule."""
    from cleaner.methods import catalog
    from cleaner.train.expressions import evaluate_table

    out = {}
    for name in meta["methods"]:
        rule = catalog.get(name).keep_where(meta["params"].get(name) or {})
        if rule and name in SCORE_COLUMNS:
            score = scored.column(SCORE_COLUMNS[name]).to_numpy(zero_copy_only=False)
            out[f"{name} ({rule})"] = (evaluate_table(scored, rule, True), score)
    return out


def _report(out: Path, sidecar: Path, shard_dir: Path, summary, what: str) -> dict:
    """Compare each method's verdict with the generator's truth; print and
    return the comparison."""
    table = pq.read_table(sidecar)
    truth = _truth(shard_dir)
    known = np.array([truth.get(k) for k in table.column("key").to_pylist()], dtype=object)
    is_ok = table.column("status").to_numpy(zero_copy_only=False) == "ok"
    rows = np.flatnonzero(is_ok & (known != None))  # noqa: E711 - elementwise
    scored = table.take(rows)
    clean = known[rows].astype(bool)
    verdicts = _verdicts(scored, S.read_metadata(table.schema))
    report = {
        "sidecar": str(sidecar),
        "rows": int(table.num_rows),
        "status_counts": summary.status_counts,
        "beta": summary.fit["beta"]["value"],
        "methods": {},
    }
    err = sys.stderr
    print(f"\nsidecar: {sidecar}  ({report['rows']} rows, one per sample)", file=err)
    for status, n in summary.status_counts.items():
        print(f"  {status:16s} {n}", file=err)
    print(f"scored with {what}", file=err)
    print(f"beta ({summary.fit['beta']['source']}): {report['beta']:.4f}", file=err)
    from pipelines.score_report import noise_estimates

    report["noise_rate"] = {what: pi for what, pi in noise_estimates(summary.fit)}
    for what, pi in report["noise_rate"].items():
        print(f"estimated noise rate: {100 * pi:.1f}% ({what})", file=err)
    width = max([28, *map(len, verdicts)])
    print(
        f"{'method (keep rule)':{width}s} {'clean kept':>10s} {'noise caught':>13s} {'AUROC':>7s}",
        file=err,
    )
    for name, (keep, score) in verdicts.items():
        kept = float(keep[clean].mean()) if clean.any() else float("nan")
        caught = float((~keep[~clean]).mean()) if (~clean).any() else float("nan")
        auc = _auroc(score.astype(float), clean)
        report["methods"][name] = {"clean_kept": kept, "noise_caught": caught, "auroc": auc}
        print(f"{name:{width}s} {100 * kept:9.1f}% {100 * caught:12.1f}% {auc:7.3f}", file=err)
    print(
        f"(ground truth: {int((~clean).sum())} of {len(clean)} scorable pairs have a shuffled caption)",
        file=err,
    )
    return report
