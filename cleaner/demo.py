"""``nclean demo``: an offline end-to-end run on generated data.

1. Generates shapes-world shards (one to three coloured shapes per image,
   compositional captions) with a fraction of shuffled captions and a few
   planted corrupt samples.
2. Pre-trains a small open_clip estimator on *clean* shapes-world pairs
   (a few minutes on a CPU the first time; cached afterwards), standing in
   for the pre-trained CLIP a real job would use. ``random_estimator=True``
   skips this and uses random weights: the machinery runs, the verdicts sit
   at chance.
3. Scores the shards through the same pipeline users run (the checkpoint is
   loaded from its file), and prints the summary plus how each method's
   verdict lines up with the planted noise.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from . import shapes
from .estimator import save_random_checkpoint


def default_cache_dir() -> Path:
    base = os.environ.get("NCLEAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nclean")
    return Path(base)


def make_demo_shards(out: Path, samples: int, noise: float, seed: int = 0, shard_size: int = 100) -> list[str]:
    data = shapes.generate(samples, seed=seed)
    data, _ = shapes.add_caption_noise(data, noise, seed=seed)
    return shapes.write_shards(data, out, shard_size=shard_size, plant_corrupt=True)


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


def run_demo(out: Path, samples: int = 600, noise: float = 0.4, progress: bool = True,
             random_estimator: bool = False, cache_dir: Path | None = None) -> dict:
    from pipelines.embed_job import EstimatorSpec
    from pipelines.score_job import ScoreJob, ScoreSettings, run_score

    out = Path(out)
    shard_dir = out / "shards"
    if not any(shard_dir.glob("*.tar")):
        make_demo_shards(shard_dir, samples, noise)
    if random_estimator:
        model, ckpt = "nclean-tiny", out / "tiny-random.pt"
        if not ckpt.exists():
            save_random_checkpoint(model, ckpt)
        what = "a random-initialised estimator: expect chance-level verdicts"
    else:
        from .pretrain import DEFAULT_MODEL, estimator_info, pretrained_estimator

        model = DEFAULT_MODEL
        ckpt = pretrained_estimator(cache_dir or default_cache_dir(), progress=progress)
        held = estimator_info(ckpt)["heldout"]
        what = (f"the estimator pre-trained on clean shapes-world pairs ({ckpt.name}; held-out R@1 "
                f"i2t {held['i2t_R@1']:.1f}%, t2i {held['t2i_R@1']:.1f}%)")
    sidecar = out / "weights.parquet"
    job = ScoreJob(
        out=str(sidecar),
        shards=[str(shard_dir)],
        estimator=EstimatorSpec(model=model, pretrained=str(ckpt), device="cpu"),
        settings=ScoreSettings(methods=["osa", "sdd", "sps"]),
        workers=1,
        progress=progress,
        argv=["demo"],
    )
    summary = run_score(job)
    table = pq.read_table(sidecar).to_pandas()
    truth = _truth(shard_dir)
    table["clean"] = table["key"].map(truth)
    scored = table[(table.status == "ok") & table.clean.notna()]
    clean = scored.clean.astype(bool).to_numpy()
    verdicts = {
        "OSA (osa_weight > 0)": (scored.osa_weight.to_numpy() > 0, scored.cosine.to_numpy()),
        "SDD (sdd_keep)": (scored.sdd_keep.to_numpy(bool), scored.sdd_w_con.to_numpy()),
        "SPS (partition != noisy)": ((scored.sps_partition != "noisy").to_numpy(), scored.sps_clean_prob.to_numpy()),
    }
    report = {"sidecar": str(sidecar), "rows": int(len(table)), "status_counts": summary.status_counts,
              "beta": summary.fit["beta"]["value"], "methods": {}}
    err = sys.stderr
    print(f"\nsidecar: {sidecar}  ({report['rows']} rows, one per sample)", file=err)
    for status, n in summary.status_counts.items():
        print(f"  {status:16s} {n}", file=err)
    print(f"scored with {what}", file=err)
    print(f"beta ({summary.fit['beta']['source']}): {report['beta']:.4f}", file=err)
    print(f"{'method':28s} {'clean kept':>10s} {'noise caught':>13s} {'AUROC':>7s}", file=err)
    for name, (keep, score) in verdicts.items():
        kept = float(keep[clean].mean()) if clean.any() else float("nan")
        caught = float((~keep[~clean]).mean()) if (~clean).any() else float("nan")
        auc = _auroc(score.astype(float), clean)
        report["methods"][name] = {"clean_kept": kept, "noise_caught": caught, "auroc": auc}
        print(f"{name:28s} {100 * kept:9.1f}% {100 * caught:12.1f}% {auc:7.3f}", file=err)
    print(f"(ground truth: {int((~clean).sum())} of {len(clean)} scorable pairs have a shuffled caption)", file=err)
    print(f"next: nclean report {sidecar} --out {out / 'report'}", file=err)
    return report
