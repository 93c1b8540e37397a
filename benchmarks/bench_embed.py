"""End-to-end embedding throughput of ``nclean embed`` against two upper bounds.

For each estimator (the tiny demo config and open_clip's ViT-S-32-alt, both
random-initialised, written with ``save_random_checkpoint`` and loaded with
``load_estimator`` -- the users' code path), on the same web-like JPEG shards:

1. **decode only**: ``cleaner.embed.iter_prepared`` over the shards with the
   same worker count and batch size as end-to-end, no model;
2. **model only**: ``encode_images(normalise_uint8(uint8 batch))`` +
   ``encode_text(tokens)`` on pre-decoded batches held in memory (a pair is
   one image plus one caption), after a warm-up batch, with the torch thread
   count the end-to-end main process uses;
3. **end to end**: ``pipelines.embed_job.run_embed`` (what ``nclean embed``
   runs) into a fresh cache folder, progress off; wall time includes decode
   worker start-up and writing the cache, not loading the model.

Each measurement is repeated and the best run kept (other processes share
the machine); the measurements of one repeat are interleaved so slow phases
of the machine hit all of them alike. The ratio end_to_end / min(decode,
model) is the pipeline's efficiency against the slower stage measured alone.
Both bounds are measured with the whole machine, while end-to-end runs both
stages at once on the same cores, so the table also gives the shared-core
estimate 1 / (1/decode + 1/model) (decode with all cores, i.e. the most
workers tried): the best throughput when the two stages split the cores'
time rather than overlapping on spare ones.

Run: ``python benchmarks/bench_embed.py`` (about 3-5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import md_table, write_section  # noqa: E402

WORK = HERE / "_work" / "embed"
MODELS = ("nclean-tiny", "ViT-S-32-alt")


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (decode workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def make_shards(n: int, image_size: int, shard_size: int, seed: int = 0) -> list[Path]:
    """Shapes-world JPEG shards in benchmarks/_work (reused when the settings match)."""
    from cleaner import shapes

    out = WORK / f"shards_{image_size}px_{shard_size}per"
    manifest = out / "manifest.json"
    want = {"n": n, "image_size": image_size, "shard_size": shard_size, "seed": seed}
    if manifest.exists() and json.loads(manifest.read_text()) == want:
        return sorted(out.glob("*.tar"))
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    shapes.write_shards(shapes.iter_samples(n, seed, image_size=image_size), out, shard_size=shard_size)
    manifest.write_text(json.dumps(want))
    print(f"wrote {n} samples ({image_size}px JPEG) to {out} in {time.perf_counter() - t0:.1f} s", flush=True)
    return sorted(out.glob("*.tar"))


@dataclass
class Timing:
    """Best (highest-throughput) of several runs of one measurement."""

    samples: int = 0
    best_s: float = float("inf")
    cpu_s: float = 0.0  # CPU seconds of the best run (process + workers)
    runs: list[float] = field(default_factory=list)

    def add(self, samples: int, wall: float, cpu: float) -> None:
        self.runs.append(samples / wall)
        if wall < self.best_s:
            self.samples, self.best_s, self.cpu_s = samples, wall, cpu

    @property
    def rate(self) -> float:
        return self.samples / self.best_s

    def util(self, ncpu: int) -> float:
        """Share of the machine's CPU time used during the best run."""
        return self.cpu_s / (self.best_s * ncpu)


def timed(fn):
    gc.collect()
    c0, t0 = cpu_seconds(), time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0, cpu_seconds() - c0


def bench_estimator(model: str, shards: list[Path], batch_size: int, workers: list[int], repeats: int) -> dict:
    import torch

    from cleaner.decode import SampleSpec
    from cleaner.embcache import EmbeddingCache
    from cleaner.embed import iter_prepared
    from cleaner.estimator import save_random_checkpoint
    from pipelines.embed_job import EstimatorSpec, run_embed

    ckpt = save_random_checkpoint(model, WORK / "checkpoints" / f"{model}.safetensors")
    spec = EstimatorSpec(model=model, pretrained=str(ckpt), device="cpu", precision="auto")
    t0 = time.perf_counter()
    est = spec.get()  # load_estimator(model, ckpt, "cpu", "auto"); run_embed reuses it
    load_s = time.perf_counter() - t0
    sample_spec = SampleSpec()
    threads = torch.get_num_threads()

    # Pre-decoded batches (same batch composition as end-to-end) for the model-only bound.
    batches = [
        (b.images, b.tokens)
        for b in iter_prepared(shards, sample_spec, est, batch_size, max(workers))
        if b.images is not None
    ]
    n_ok = sum(len(img) for img, _ in batches)

    def model_pass():
        for images, tokens in batches:
            est.encode_images(est.normalise_uint8(images)).cpu().numpy()
            est.encode_text(tokens).cpu().numpy()
        return n_ok

    def decode_pass(w):
        n = 0
        for b in iter_prepared(shards, sample_spec, est, batch_size, w):
            n += sum(r.status == "ok" for r in b.rows)
        return n

    def e2e_pass(w):
        cache_dir = WORK / "cache" / f"{model}_w{w}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        report = run_embed(shards, EmbeddingCache(cache_dir), spec, sample_spec, batch_size, w, progress=False)
        if len(report.embedded) != len(shards) or report.fatal:
            raise RuntimeError(f"run_embed embedded {len(report.embedded)} of {len(shards)} shards: {report.fatal}")
        return report.samples

    images, tokens = batches[0]  # warm-up
    est.encode_images(est.normalise_uint8(images))
    est.encode_text(tokens)

    mod = Timing()
    dec = {w: Timing() for w in workers}
    e2e = {w: Timing() for w in workers}
    for r in range(repeats):
        mod.add(*timed(model_pass))
        for w in workers:
            dec[w].add(*timed(lambda: decode_pass(w)))
            e2e[w].add(*timed(lambda: e2e_pass(w)))
        print(
            f"  {model} repeat {r + 1}/{repeats}: model {mod.runs[-1]:.1f}/s; "
            + "; ".join(f"w={w} decode {dec[w].runs[-1]:.1f}/s e2e {e2e[w].runs[-1]:.1f}/s" for w in workers),
            flush=True,
        )
    return {
        "model": model,
        "image_size": est.image_size,
        "samples": n_ok,
        "shards": len(shards),
        "threads": threads,
        "load_s": load_s,
        "model_only": mod,
        "decode": dec,
        "e2e": e2e,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=256, help="side of the JPEGs in the shards")
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128, help="nclean's CPU default")
    ap.add_argument("--workers", default="1,2", help="decode worker counts to try, comma-separated")
    ap.add_argument("--tiny-samples", type=int, default=2048)
    ap.add_argument("--vit-samples", type=int, default=512)
    ap.add_argument("--tiny-repeats", type=int, default=3)
    ap.add_argument("--vit-repeats", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-write", action="store_true", help="print only; do not write the results section")
    args = ap.parse_args()

    started = time.time()
    ncpu = os.cpu_count() or 1
    workers = sorted({int(w) for w in args.workers.split(",")})
    load_before = os.getloadavg()[0]
    n_tiny = -(-args.tiny_samples // args.shard_size) * args.shard_size
    n_vit = -(-args.vit_samples // args.shard_size) * args.shard_size
    all_shards = make_shards(max(n_tiny, n_vit), args.image_size, args.shard_size)
    plan = {"nclean-tiny": (n_tiny, args.tiny_repeats), "ViT-S-32-alt": (n_vit, args.vit_repeats)}

    results = []
    for model in args.models.split(","):
        n, repeats = plan[model]
        shards = all_shards[: n // args.shard_size]
        if len(shards) < 2 * max(workers):
            raise SystemExit(f"{model}: {len(shards)} shards, fewer than 2x the largest worker count")
        print(f"{model}: {n} samples in {len(shards)} shards, batch {args.batch_size}, workers {workers}", flush=True)
        results.append(bench_estimator(model, shards, args.batch_size, workers, repeats))
    load_after = os.getloadavg()[0]

    headers = [
        "estimator", "input px", "samples", "workers", "decode only /s", "model only /s",
        "end to end /s", "e2e CPU use", "e2e / min(bounds)", "shared-core est. /s", "e2e / shared-core",
    ]
    rows = []
    sentences = []
    for res in results:
        mod = res["model_only"].rate
        dec_all = max(t.rate for t in res["decode"].values())
        shared = 1.0 / (1.0 / dec_all + 1.0 / mod)
        best_w, best = None, None
        for w in workers:
            dec, e2e = res["decode"][w].rate, res["e2e"][w]
            ratio = e2e.rate / min(dec, mod)
            rows.append([
                res["model"], res["image_size"], res["samples"], w, round(dec, 1), round(mod, 1),
                round(e2e.rate, 1), f"{e2e.util(ncpu):.0%}", round(ratio, 3), round(shared, 1),
                round(e2e.rate / shared, 3),
            ])
            if best is None or e2e.rate > best[0].rate:
                best_w, best = w, (e2e, dec, ratio)
        e2e, dec, ratio = best
        slower = "decode" if dec < mod else "the model"
        text = (
            f"**{res['model']}**: best end-to-end {e2e.rate:.1f} samples/s with {best_w} worker(s), "
            f"{ratio:.2f}x the slower stage alone ({slower}, {min(dec, mod):.1f}/s) "
            f"({'meets' if ratio >= 0.9 else 'below'} the 0.9 target)"
        )
        if ratio < 0.9:
            text += (
                f"; against the shared-core estimate {shared:.1f}/s (decode with all cores {dec_all:.1f}/s and "
                f"model {mod:.1f}/s taking turns on the same {ncpu} cores) it reaches {e2e.rate / shared:.2f}x, "
                f"with the machine {e2e.util(ncpu):.0%} busy"
            )
        sentences.append(text + ".")

    body = md_table(headers, rows) + "\n"
    body += (
        f"Shapes-world JPEGs {args.image_size}x{args.image_size}, {args.shard_size} samples per shard, "
        f"batch {args.batch_size}, fp32 on CPU, torch threads in the main process "
        f"{results[0]['threads'] if results else '?'}; random-initialised checkpoints loaded with "
        "`load_estimator`. Rates are samples (image + caption pairs) per second, best of "
        f"{args.tiny_repeats} (tiny) / {args.vit_repeats} (ViT-S-32-alt) interleaved runs; "
        "end to end is `run_embed` into a fresh cache, including worker start-up and cache writes. "
        "Decode only uses the row's worker count; the shared-core estimate is 1/(1/decode + 1/model) with "
        "decode at the most workers tried. CPU use = process + worker CPU seconds / (wall x cores). "
        f"Load average (1 min) {load_before:.2f} before, {load_after:.2f} after: other processes may share the cores.\n\n"
    )
    body += "\n\n".join(sentences) + "\n"
    print(body)
    if not args.no_write:
        cmd = "python benchmarks/bench_embed.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
        path = write_section("embed_throughput", "Embedding throughput (nclean embed)", body, started, cmd)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
