"""``nclean demo``: an offline end-to-end run on generated data.

Generates shapes-world shards with a fraction of shuffled captions and a few
planted corrupt samples, writes a random-initialised tiny open_clip
checkpoint, scores the shards through the same pipeline users run (loading
the checkpoint from its file), and prints the summary plus how the verdicts
line up with the planted noise. A random estimator cannot tell matched from
mismatched pairs, so those figures sit near chance until an estimator is
pre-trained (the benchmarks do that); the demo shows the machinery.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

from . import shapes
from .estimator import save_random_checkpoint

TINY_MODEL = "nclean-tiny"


def make_demo_shards(
    out: Path, samples: int, noise: float, seed: int = 0, shard_size: int = 100
) -> list[str]:
    data = shapes.generate(samples, seed=seed)
    data, _ = shapes.add_caption_noise(data, noise, seed=seed)
    return shapes.write_shards(data, out, shard_size=shard_size, plant_corrupt=True)


def run_demo(out: Path, samples: int = 400, noise: float = 0.4, progress: bool = True) -> dict:
    from pipelines.embed_job import EstimatorSpec
    from pipelines.score_job import ScoreJob, ScoreSettings, run_score

    out = Path(out)
    shard_dir = out / "shards"
    if not any(shard_dir.glob("*.tar")):
        make_demo_shards(shard_dir, samples, noise)
    ckpt = out / "tiny-random.pt"
    if not ckpt.exists():
        save_random_checkpoint(TINY_MODEL, ckpt)
    sidecar = out / "weights.parquet"
    job = ScoreJob(
        out=str(sidecar),
        shards=[str(shard_dir)],
        estimator=EstimatorSpec(model=TINY_MODEL, pretrained=str(ckpt), device="cpu"),
        settings=ScoreSettings(methods=["osa"]),
        workers=1,
        progress=progress,
        argv=["demo"],
    )
    summary = run_score(job)
    table = pq.read_table(sidecar).to_pandas()
    truth = _truth(shard_dir)
    table["clean"] = table["key"].map(truth)
    scored = table[(table.status == "ok") & table.clean.notna()]
    clean = scored.clean.astype(bool)
    kept = scored.osa_weight > 0
    report = {
        "sidecar": str(sidecar),
        "rows": int(len(table)),
        "status_counts": summary.status_counts,
        "beta": summary.fit["beta"]["value"],
        "osa_clean_kept": float(kept[clean].mean()) if clean.any() else float("nan"),
        "osa_noise_caught": float((~kept[~clean]).mean()) if (~clean).any() else float("nan"),
    }
    err = sys.stderr
    print(f"\nsidecar: {sidecar}  ({report['rows']} rows)", file=err)
    for status, n in summary.status_counts.items():
        print(f"  {status:16s} {n}", file=err)
    print(f"beta ({summary.fit['beta']['source']}): {report['beta']:.4f}", file=err)
    print(
        f"OSA: clean kept {100 * report['osa_clean_kept']:.1f}%, noise caught {100 * report['osa_noise_caught']:.1f}% "
        "(random-initialised estimator: expect chance level)",
        file=err,
    )
    return report


def _truth(shard_dir: Path) -> dict[str, bool]:
    """key -> True if the pair is clean, from the generator's json member."""
    import tarfile

    truth: dict[str, bool] = {}
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    try:
                        doc = json.loads(tf.extractfile(m).read())
                    except ValueError:
                        continue
                    if "clean" in doc:
                        truth[m.name.rsplit("/", 1)[-1].split(".", 1)[0]] = bool(doc["clean"])
    return truth
