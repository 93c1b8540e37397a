"""End-to-end embedding throughput of ``nclean embed`` against two upper bounds.

For each estimator (the tiny demo config at 64 px and open_clip's
ViT-S-32-alt at 224 px, both random-initialised, written with
``save_random_checkpoint`` and loaded with ``load_estimator``, the users'
code path), on web-like JPEG shards of the seeded shapes world (the ViT
gets the first samples of the same stream, in smaller shards, as it is ~100x
slower); each estimator's three measurements use the same shards:

1. **decode only**: ``cleaner.estimator.embed.iter_prepared`` over the shards with the
   same worker count and batch size as end-to-end, no model;
2. **model only**: ``encode_images(normalise_uint8(uint8 batch))`` +
   ``encode_text(tokens)`` on the same batches pre-decoded and held in memory
   (a sample is one image plus one caption), after a warm-up batch, with the
   torch thread count the end-to-end main process uses;
3. **end to end**: ``pipelines.embed_job.run_embed`` (what ``nclean embed``
   runs) into a fresh cache folder, progress off. Wall time includes starting
   the decode workers and writing the cache, not loading the model.

Every measurement is repeated and the fastest run kept (other processes may
share the machine); one repeat runs all measurements back to back, so a busy
spell slows all of them alike. CPU seconds (this process plus its reaped
decode workers) are recorded with each run.

The ratio end_to_end / min(decode, model) is the pipeline's efficiency
against the slower stage run alone. Both bounds were measured with the whole
machine to themselves, while end-to-end runs both stages at once on the same
cores; so the table also gives the shared-core estimate 1/(1/decode + 1/model)
(decode at its fastest worker count): the throughput when the two stages split
the cores' time without losing any of it. For the estimators named in
``--one-thread`` the end-to-end run is repeated with ``torch.set_num_threads(1)``
in the main process, to show what the model's threads competing with decode
workers for the cores costs. For the estimators named in ``--passive`` the
whole measurement is repeated in a child process started with
``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of spinning while
they wait), to separate OpenMP spin-waiting from the pipeline itself.

Run: ``python benchmarks/bench_embed.py`` (about 2-4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import md_table, write_section  # noqa: E402

WORK = HERE / "_work" / "embed"
TARGET = 0.9


@dataclass
class Plan:
    """What one estimator is measured on."""

    model: str
    samples: int
    shard_size: int
    batch_size: int
    repeats: int
    budget_s: float  # no further repeat is started when it would end past this


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (decode workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def make_shards(n: int, image_size: int, shard_size: int, seed: int = 0) -> list[Path]:
    """Shapes-world JPEG shards in benchmarks/_work (reused when the settings match).

    Samples depend only on (seed, index), so shard sets of other sizes made
    with the same seed hold the same images and captions.
    """
    from cleaner.worlds import shapes

    out = WORK / f"shards_{image_size}px_{n}x_{shard_size}per"
    manifest = out / "manifest.json"
    want = {"n": n, "image_size": image_size, "shard_size": shard_size, "seed": seed}
    if manifest.exists() and json.loads(manifest.read_text()) == want:
        return sorted(out.glob("*.tar"))
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    shapes.write_shards(
        shapes.iter_samples(n, seed, image_size=image_size), out, shard_size=shard_size
    )
    manifest.write_text(json.dumps(want))
    print(
        f"wrote {n} samples ({image_size}px JPEG) to {out} in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return sorted(out.glob("*.tar"))


@dataclass
class Timing:
    """Fastest of several runs of one measurement."""

    samples: int = 0
    best_s: float = float("inf")
    cpu_s: float = 0.0  # CPU seconds of the fastest run (process + decode workers)
    runs: list[float] = field(default_factory=list)

    def add(self, samples: int, wall: float, cpu: float) -> None:
        self.runs.append(samples / wall)
        if wall < self.best_s:
            self.samples, self.best_s, self.cpu_s = samples, wall, cpu

    @property
    def rate(self) -> float:
        return self.samples / self.best_s

    @property
    def cpu_ms(self) -> float:
        """CPU milliseconds per sample."""
        return 1e3 * self.cpu_s / self.samples

    def util(self, ncpu: int) -> float:
        """Share of the machine's CPU time this run used."""
        return self.cpu_s / (self.best_s * ncpu)


def timed(fn) -> tuple[int, float, float]:
    gc.collect()
    c0, t0 = cpu_seconds(), time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0, cpu_seconds() - c0


def bench_estimator(plan: Plan, shards: list[Path], workers: list[int], one_thread: bool) -> dict:
    import torch

    from cleaner.estimator.embed import iter_prepared
    from cleaner.estimator.model import save_random_checkpoint
    from cleaner.io.decode import SampleSpec
    from cleaner.io.embcache import EmbeddingCache
    from pipelines.embed_job import EstimatorSpec, run_embed

    ckpt = save_random_checkpoint(plan.model, WORK / "checkpoints" / f"{plan.model}.safetensors")
    spec = EstimatorSpec(model=plan.model, pretrained=str(ckpt), device="cpu", precision="auto")
    t0 = time.perf_counter()
    est = spec.get()  # load_estimator(model, ckpt, "cpu", "auto"); run_embed reuses this one
    load_s = time.perf_counter() - t0
    sample_spec = SampleSpec()
    bs = plan.batch_size
    threads = torch.get_num_threads()  # what run_embed's main process computes with

    # The end-to-end batches, decoded once and kept in memory, for the model-only bound.
    batches = [
        (b.images, b.tokens)
        for b in iter_prepared(shards, sample_spec, est, bs, max(workers))
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
        for b in iter_prepared(shards, sample_spec, est, bs, w):
            n += sum(r.status == "ok" for r in b.rows)
        return n

    def e2e_pass(w, main_threads):
        cache_dir = WORK / "cache" / f"{plan.model}_w{w}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        torch.set_num_threads(main_threads)
        try:
            report = run_embed(
                shards, EmbeddingCache(cache_dir), spec, sample_spec, bs, w, progress=False
            )
        finally:
            torch.set_num_threads(threads)
        if len(report.embedded) != len(shards) or report.fatal:
            raise RuntimeError(
                f"run_embed embedded {len(report.embedded)} of {len(shards)} shards: {report.fatal}"
            )
        return report.samples

    images, tokens = batches[0]  # warm-up
    est.encode_images(est.normalise_uint8(images))
    est.encode_text(tokens)

    variants = [(w, threads) for w in workers]
    if one_thread and threads != 1:
        variants += [(w, 1) for w in workers]
    mod = Timing()
    dec = {w: Timing() for w in workers}
    e2e = {v: Timing() for v in variants}
    t_start = time.perf_counter()
    for r in range(plan.repeats):
        t_repeat = time.perf_counter()
        mod.add(*timed(model_pass))
        for w in workers:
            dec[w].add(*timed(lambda w=w: decode_pass(w)))
        for w, th in variants:
            e2e[w, th].add(*timed(lambda w=w, th=th: e2e_pass(w, th)))
        print(
            f"  {plan.model} repeat {r + 1}/{plan.repeats}: model {mod.runs[-1]:.1f}/s; "
            + "; ".join(f"decode w={w} {dec[w].runs[-1]:.1f}/s" for w in workers)
            + "; "
            + "; ".join(f"e2e w={w} t={th} {e2e[w, th].runs[-1]:.1f}/s" for w, th in variants),
            flush=True,
        )
        now = time.perf_counter()
        if r + 1 < plan.repeats and now - t_start + (now - t_repeat) > plan.budget_s:
            print(
                f"  {plan.model}: stopping after {r + 1} repeats (time budget {plan.budget_s:.0f} s)",
                flush=True,
            )
            break
    return {
        "omp": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "plan": plan,
        "image_size": est.image_size,
        "samples": n_ok,
        "shards": len(shards),
        "threads": threads,
        "load_s": load_s,
        "model_only": mod,
        "decode": dec,
        "e2e": e2e,
        "variants": variants,
        "repeats_done": len(mod.runs),
    }


def to_json(res: dict) -> dict:
    out = dict(res, plan=asdict(res["plan"]), model_only=asdict(res["model_only"]))
    out["decode"] = [[w, asdict(t)] for w, t in res["decode"].items()]
    out["e2e"] = [[w, th, asdict(t)] for (w, th), t in res["e2e"].items()]
    out["variants"] = [list(v) for v in res["variants"]]
    return out


def from_json(d: dict) -> dict:
    out = dict(d, plan=Plan(**d["plan"]), model_only=Timing(**d["model_only"]))
    out["decode"] = {w: Timing(**t) for w, t in d["decode"]}
    out["e2e"] = {(w, th): Timing(**t) for w, th, t in d["e2e"]}
    out["variants"] = [tuple(v) for v in d["variants"]]
    return out


def run_passive_child(model: str) -> dict | None:
    """The same measurement in a fresh process with OMP_WAIT_POLICY=PASSIVE
    (read by OpenMP when torch loads, so it cannot be switched in-process)."""
    out = WORK / f"passive_{model}.json"
    out.unlink(missing_ok=True)
    argv = [a for a in sys.argv[1:] if a != "--no-write"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        *argv,
        "--child",
        model,
        "--child-out",
        str(out),
    ]
    if subprocess.run(cmd, env=env).returncode != 0 or not out.exists():
        print(
            f"{model}: the OMP_WAIT_POLICY=PASSIVE child failed; its rows are left out", flush=True
        )
        return None
    return from_json(json.loads(out.read_text()))


def summarise(res: dict, ncpu: int) -> tuple[list[list], str]:
    """Table rows and the sentences for one estimator, all computed from its numbers."""
    plan: Plan = res["plan"]
    label = plan.model if res["omp"] == "unset" else f"{plan.model}, OMP_WAIT_POLICY={res['omp']}"
    mod = res["model_only"]
    dec_all_w = max(res["decode"], key=lambda w: res["decode"][w].rate)
    dec_all = res["decode"][dec_all_w]
    shared = 1.0 / (1.0 / dec_all.rate + 1.0 / mod.rate)
    rows = []
    for w, th in res["variants"]:
        dec, e2e = res["decode"][w], res["e2e"][w, th]
        rows.append(
            [
                plan.model,
                res["omp"],
                res["image_size"],
                f"{res['samples']} ({res['shards']}x{plan.shard_size})",
                plan.batch_size,
                w,
                th,
                round(dec.rate, 1),
                round(mod.rate, 1),
                round(e2e.rate, 1),
                round(e2e.rate / min(dec.rate, mod.rate), 3),
                round(shared, 1),
                round(e2e.rate / shared, 3),
                f"{dec.cpu_ms:.2f} + {mod.cpu_ms:.2f} -> {e2e.cpu_ms:.2f}",
                f"{e2e.util(ncpu):.0%}",
            ]
        )

    default = [v for v in res["variants"] if v[1] == res["threads"]]
    w, th = max(default, key=lambda v: res["e2e"][v].rate)
    e2e, dec = res["e2e"][w, th], res["decode"][w]
    bound = min(dec.rate, mod.rate)
    ratio = e2e.rate / bound
    slower = "decode" if dec.rate < mod.rate else "model"
    text = (
        f"**{label}**: best end-to-end {e2e.rate:.1f} samples/s ({w} worker(s), {th} torch thread(s) in the "
        f"main process) = {ratio:.2f}x the slower stage alone ({slower} only, {bound:.1f}/s): "
        f"{'meets' if ratio >= TARGET else 'misses'} the {TARGET} target."
    )
    if ratio < TARGET:
        text += (
            f" Against the shared-core estimate {shared:.1f}/s (decode {dec_all.rate:.1f}/s with {dec_all_w} "
            f"worker(s) and model {mod.rate:.1f}/s taking turns on the same {ncpu} cores) it reaches "
            f"{e2e.rate / shared:.2f}x."
        )
        alone_ms = dec.cpu_ms + mod.cpu_ms
        extra = e2e.cpu_ms / alone_ms - 1.0
        text += (
            f" Per sample, end-to-end used {e2e.cpu_ms:.2f} ms of CPU against {alone_ms:.2f} ms for decode + model "
            f"run apart ({extra:+.0%}), with the cores {e2e.util(ncpu):.0%} busy: "
        )
        if extra > 0.15:
            text += "the stages slow each other down on shared cores (extra CPU per sample)"
        else:
            text += (
                "no extra work per sample, so the loss is idle core time: the stages waiting on each other, "
                "or the cores held by other processes"
            )
        text += "."
        one = [v for v in res["variants"] if v[1] == 1 and v[1] != res["threads"]]
        if one:
            w1, _ = max(one, key=lambda v: res["e2e"][v].rate)
            e1 = res["e2e"][w1, 1]
            text += (
                f" With 1 torch thread in the main process the best end-to-end run is {e1.rate:.1f}/s "
                f"({w1} worker(s), {e1.cpu_ms:.2f} ms CPU per sample, cores {e1.util(ncpu):.0%} busy), "
                f"{e1.rate / e2e.rate:.2f}x the default."
            )
    return rows, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=256, help="side of the JPEGs in the shards")
    ap.add_argument("--workers", default="1,2", help="decode worker counts to try, comma-separated")
    ap.add_argument("--tiny-samples", type=int, default=2048)
    ap.add_argument("--tiny-shard-size", type=int, default=256)
    ap.add_argument("--tiny-batch-size", type=int, default=128, help="nclean's CPU default")
    ap.add_argument("--tiny-repeats", type=int, default=3)
    ap.add_argument("--tiny-budget-s", type=float, default=90.0)
    ap.add_argument("--vit-samples", type=int, default=256)
    ap.add_argument("--vit-shard-size", type=int, default=64)
    ap.add_argument("--vit-batch-size", type=int, default=64)
    ap.add_argument("--vit-repeats", type=int, default=2)
    ap.add_argument("--vit-budget-s", type=float, default=150.0)
    ap.add_argument("--models", default="nclean-tiny,ViT-S-32-alt")
    ap.add_argument(
        "--one-thread",
        default="nclean-tiny",
        help="estimators also run end to end with 1 main torch thread",
    )
    ap.add_argument(
        "--passive",
        default="nclean-tiny",
        help="estimators also measured in a child process with OMP_WAIT_POLICY=PASSIVE",
    )
    ap.add_argument("--quick", action="store_true", help="nclean-tiny only, 1024 samples, 1 repeat (make bench-quick)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument(
        "--no-write", action="store_true", help="print only; do not write the results section"
    )
    args = ap.parse_args()
    if args.quick:
        args.models, args.tiny_samples, args.tiny_repeats = "nclean-tiny", 1024, 1

    started = time.time()
    ncpu = os.cpu_count() or 1
    workers = sorted({int(w) for w in args.workers.split(",")})
    plans = {
        "nclean-tiny": Plan(
            "nclean-tiny",
            args.tiny_samples,
            args.tiny_shard_size,
            args.tiny_batch_size,
            args.tiny_repeats,
            args.tiny_budget_s,
        ),
        "ViT-S-32-alt": Plan(
            "ViT-S-32-alt",
            args.vit_samples,
            args.vit_shard_size,
            args.vit_batch_size,
            args.vit_repeats,
            args.vit_budget_s,
        ),
    }
    one_thread = set(filter(None, args.one_thread.split(",")))
    passive = set(filter(None, args.passive.split(",")))
    models = [args.child] if args.child else args.models.split(",")
    load_before = os.getloadavg()[0]

    results = []
    for model in models:
        plan = plans[model]
        shards = make_shards(plan.samples, args.image_size, plan.shard_size)
        if len(shards) < 2 * max(workers):
            raise SystemExit(
                f"{model}: {len(shards)} shards, fewer than 2x the largest worker count"
            )
        print(
            f"{model}: {plan.samples} samples in {len(shards)} shards, batch {plan.batch_size}, workers {workers}",
            flush=True,
        )
        if args.child:
            res = bench_estimator(plan, shards, workers, one_thread=False)
            Path(args.child_out).write_text(json.dumps(to_json(res)))
            return
        results.append(bench_estimator(plan, shards, workers, model in one_thread))
        if model in passive and os.environ.get("OMP_WAIT_POLICY") is None:
            print(f"{model}: again in a child process with OMP_WAIT_POLICY=PASSIVE", flush=True)
            child = run_passive_child(model)
            if child is not None:
                results.append(child)
    load_after = os.getloadavg()[0]

    headers = [
        "estimator",
        "OMP_WAIT_POLICY",
        "input px",
        "samples (shards)",
        "batch",
        "workers",
        "main threads",
        "decode only /s",
        "model only /s",
        "end to end /s",
        "e2e / min(bounds)",
        "shared-core est. /s",
        "e2e / shared-core",
        "CPU ms/sample: decode + model -> e2e",
        "e2e cores busy",
    ]
    rows, sentences = [], []
    best_unset = {}  # model -> best end-to-end rate with OMP_WAIT_POLICY unset (default threads)
    for res in results:
        r, s = summarise(res, ncpu)
        rows += r
        best = max(t.rate for (w, th), t in res["e2e"].items() if th == res["threads"])
        if res["omp"] == "unset":
            best_unset[res["plan"].model] = best
        elif res["plan"].model in best_unset:
            s += (
                f" That is {best / best_unset[res['plan'].model]:.2f}x the best end-to-end rate "
                "with OMP_WAIT_POLICY unset."
            )
        sentences.append(s)

    body = md_table(headers, rows) + "\n"
    repeats = " / ".join(
        f"{res['repeats_done']} ({res['plan'].model}{'' if res['omp'] == 'unset' else ', ' + res['omp']})"
        for res in results
    )
    body += (
        f"Shapes-world JPEGs {args.image_size}x{args.image_size} (web-like input; decoded with JPEG draft to the "
        "model size, then resized and cropped), fp32 on CPU, random-initialised checkpoints loaded with "
        f"`load_estimator`. Rates are samples (image + caption) per second, fastest of {repeats} runs "
        "(each run of one repeat back to back with the others). End to end is `run_embed` into a fresh cache, worker "
        "start-up and cache writes included. Decode only uses the row's worker count; model only uses the "
        "default torch threads of the main process; the shared-core estimate is 1/(1/decode + 1/model) with "
        "decode at its fastest worker count. CPU ms/sample counts this process plus its decode workers; cores "
        f"busy = that CPU time / (wall time x {ncpu} cores). Load average (1 min) {load_before:.2f} before and "
        f"{load_after:.2f} after the run: other processes shared the cores. OMP_WAIT_POLICY=PASSIVE rows come "
        "from a child process started with that variable (OpenMP threads sleep instead of spinning when idle). "
        "Since this benchmark first showed the spin-wait cost, the `nclean` command sets OMP_WAIT_POLICY=PASSIVE "
        "at start-up unless the environment sets it: the PASSIVE rows are what `nclean embed` runs with; "
        "`unset` rows show the cost without it.\n\n"
    )
    body += "\n\n".join(sentences) + "\n"
    print(body)
    if not args.no_write:
        cmd = "python benchmarks/bench_embed.py" + (
            "" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:])
        )
        path = write_section(
            "embed_throughput", "Embedding throughput (nclean embed)", body, started, cmd
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
