"""``nclean``: the command-line face of the pipelines (kept thin on purpose).

Exit codes: 0 success (some bad samples are fine: they are status rows);
2 configuration error; 3 unreadable input; 4 nothing could be scored;
5 finished, but some shards could not be read at all (named on stderr;
rerun to retry them); 1 unexpected internal error; 130 interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

# Before torch is imported: idle OpenMP threads must sleep, not spin. The
# model's threads otherwise busy-wait on the cores the decode workers need
# (measured: end-to-end embedding 6x slower on 2 cores with the default).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from .decode import DEFAULT_IMAGE_KEYS, SampleSpec  # noqa: E402
from .errors import ConfigError, NcleanError  # noqa: E402

app = typer.Typer(
    name="nclean",
    help=(
        "Score noisy image-text pairs once with a frozen open_clip estimator and write "
        "per-sample verdicts (OSA weights, SDD drop masks, SPS partitions, CLIPCleaner "
        "selections) as Parquet sidecars keyed by (shard, key) and uid.\n\n"
        "Exit codes: 0 ok, 2 bad configuration, 3 unreadable input, 4 nothing scored, "
        "5 some shards unreadable, 1 internal error, 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_DEBUG = {"on": False}

# -- shared options ----------------------------------------------------------
ModelOpt = typer.Option(
    "ViT-B-32", "--model", help="open_clip model name, or a path to a model config .json."
)
PretrainedOpt = typer.Option(
    "openai",
    "--pretrained",
    help="open_clip pretrained tag (fetched from a hub: online only), a local .pt/.safetensors "
    "checkpoint (loaded with weights_only), or 'none' for random weights.",
)
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda")
PrecisionOpt = typer.Option(
    "auto", "--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16"
)
BatchOpt = typer.Option(
    None, "--batch-size", help="Images per forward pass [default: 1024 on CUDA, 128 on CPU]."
)
WorkersOpt = typer.Option(
    2,
    "--workers",
    help="Decoding processes (each reads whole shards). 0 = decode in the main process.",
)
ImageKeyOpt = typer.Option(
    ";".join(DEFAULT_IMAGE_KEYS),
    "--image-key",
    help="Image member extensions, first present wins (';'-separated).",
)
TextKeyOpt = typer.Option(
    "txt",
    "--text-key",
    help="Caption member extension, or json:<field> to read a field of the .json member.",
)
UidOpt = typer.Option(
    None, "--uid-field", help="Field of the .json member to record as uid (e.g. DataComp's 'uid')."
)
OverwriteOpt = typer.Option(False, "--overwrite", help="Redo everything instead of resuming.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr.")
DebugOpt = typer.Option(False, "--debug", help="Show full tracebacks on internal errors.")


def _spec(
    image_key: str, text_key: str, uid_field: str | None, label_key: str | None = None
) -> SampleSpec:
    keys = tuple(k.strip().lower() for k in image_key.replace(",", ";").split(";") if k.strip())
    if not keys:
        raise ConfigError("--image-key needs at least one extension")
    if text_key.startswith("json:") and len(text_key) == 5:
        raise ConfigError("--text-key json:<field> needs a field name")
    return SampleSpec(image_keys=keys, text_key=text_key, uid_field=uid_field, label_key=label_key)


def _estimator(model, pretrained, device, precision):
    from pipelines.embed_job import EstimatorSpec

    return EstimatorSpec(model=model, pretrained=pretrained, device=device, precision=precision)


def _print_summary(summary) -> None:
    err = sys.stderr
    print(
        f"rows: {summary.rows}  (parts written {summary.parts_written}, reused {summary.parts_skipped})",
        file=err,
    )
    for status, n in summary.status_counts.items():
        print(f"  {status:16s} {n}", file=err)
    beta = summary.fit.get("beta", {})
    if beta:
        print(
            f"beta: {beta['value']:.4f} ({beta['source']}, K={beta['k']}, se {beta['se']:.5f})",
            file=err,
        )
    for stem, msg in summary.fatal_shards.items():
        print(f"unreadable shard {stem}: {msg}", file=err)
    print(f"parts: {summary.parts_dir}", file=err)
    if summary.merged:
        print(
            f"sidecar: {summary.merged}{'' if summary.merged_written else ' (unchanged)'}", file=err
        )


def _check_clipcleaner_options(
    prompt_aggregate, induced, folds, theta_cons, theta_gmm, estimators, selectors, combine
):
    from cleaner.scorers.clipcleaner import CLIPCleanerScorer

    try:
        CLIPCleanerScorer(
            2,
            theta_cons=theta_cons,
            theta_gmm=theta_gmm,
            prompt_aggregate=prompt_aggregate,
            induced=induced,
            n_folds=folds,
            estimators=[x.strip() for x in estimators.split(",") if x.strip()],
            selectors=[x.strip() for x in selectors.split(",") if x.strip()],
            combine=combine,
        )
    except ValueError as exc:
        raise ConfigError(f"CLIPCleaner option: {exc}") from None


@app.command()
def score(
    ctx: typer.Context,
    shards: list[str] = typer.Argument(
        None,
        help="Shards: a directory, a glob, a brace pattern (data-{000000..000099}.tar) or paths.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Output folder of per-shard parts, or a .parquet file (parts go to <name>.parts/ and are merged).",
    ),
    embeddings: Path = typer.Option(
        None,
        "--embeddings",
        help="Score precomputed embeddings (nclean embed or clip-retrieval layout) instead of shards.",
    ),
    methods: str = typer.Option(
        "osa,sdd,sps",
        "--methods",
        help="Comma-separated: osa, sdd, sps, clipcleaner (the last needs labelled shards and --classes).",
    ),
    model: str = ModelOpt,
    pretrained: str = PretrainedOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    batch_size: int = BatchOpt,
    workers: int = WorkersOpt,
    image_key: str = ImageKeyOpt,
    text_key: str = TextKeyOpt,
    uid_field: str = UidOpt,
    cache: Path = typer.Option(
        None, "--cache", help="Embedding cache folder [default: <out>/_nclean/embeddings]."
    ),
    beta_source: str = typer.Option(
        "noise",
        "--beta-source",
        help="OSA beta from 'noise' (K noise images x K random token sequences; needs the model) or 'shuffled' (K real mismatched pairs).",
    ),
    beta_samples: int = typer.Option(
        None,
        "--beta-samples",
        help="K for the beta estimate [default: 64 for noise, 10000 for shuffled].",
    ),
    beta: float = typer.Option(
        None, "--beta", help="Set beta by hand (cosine units); skips estimation."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed for every random choice (beta sampling, fit samples, batches)."
    ),
    sdd_alpha: float = typer.Option(
        20.0, "--sdd-alpha", help="SDD self-drop: keep a pair if 100*cosine > alpha."
    ),
    sdd_beta_c: float = typer.Option(
        30.0, "--sdd-beta-c", help="SDD clean set (memory-bank pool): 100*cosine > beta_c."
    ),
    sps_batch_size: int = typer.Option(
        128,
        "--sps-batch-size",
        help="SPS: rows per shuffled InfoNCE batch for the per-sample loss.",
    ),
    sps_eps1: float = typer.Option(
        0.99,
        "--sps-eps1",
        help="SPS: reliable if clean probability > eps1 (paper 0.99; released code 0.6).",
    ),
    sps_eps2: float = typer.Option(
        0.5, "--sps-eps2", help="SPS: noisy if clean probability <= eps2."
    ),
    sps_proxy_label: str = typer.Option(
        "code",
        "--sps-proxy-label",
        help="SPS proxy label: 'code' (match prob x image cosine, 0 below 0.5) or 'paper' (1/(gamma+exp(-b*S))).",
    ),
    sps_gamma: float = typer.Option(1.0, "--sps-gamma", help="gamma of the paper's proxy label."),
    sps_b: float = typer.Option(5.0, "--sps-b", help="b of the paper's proxy label."),
    fit_sample: int = typer.Option(
        1_000_000,
        "--fit-sample",
        help="Rows used for global fits (GMMs); a seeded uniform sample when there are more.",
    ),
    exact_threshold: int = typer.Option(
        200_000,
        "--exact-threshold",
        help="Nearest neighbours: exact faiss search up to this many pool rows, IVF above (recall logged).",
    ),
    classes: Path = typer.Option(
        None,
        "--classes",
        help="CLIPCleaner: class names, one per line (line number = label id), or a JSON list.",
    ),
    prompts: Path = typer.Option(
        None,
        "--prompts",
        help="CLIPCleaner: JSON mapping class name -> list of prompts [default: built-in CLIP templates].",
    ),
    label_key: str = typer.Option(
        None,
        "--label-key",
        help="CLIPCleaner: label member ('cls', an integer) or json:<field> [default: cls].",
    ),
    prompt_aggregate: str = typer.Option(
        "sum",
        "--prompt-aggregate",
        help="CLIPCleaner: combine a class's prompts by 'sum' (released code) or 'mean'.",
    ),
    induced: str = typer.Option(
        "oof",
        "--induced",
        help="CLIPCleaner induced classifier: 'oof' (out-of-fold) or 'in-sample' (released code).",
    ),
    folds: int = typer.Option(5, "--folds", help="CLIPCleaner: folds for out-of-fold predictions."),
    theta_cons: float = typer.Option(
        0.8, "--theta-cons", help="CLIPCleaner consistency threshold p(y|x)/max_k p(k|x)."
    ),
    theta_gmm: float = typer.Option(
        0.5, "--theta-gmm", help="CLIPCleaner per-class GMM clean-posterior threshold."
    ),
    cc_estimators: str = typer.Option(
        "zs,ind", "--cc-estimators", help="CLIPCleaner estimators that vote: zs, ind."
    ),
    cc_selectors: str = typer.Option(
        "consistency,gmm", "--cc-selectors", help="CLIPCleaner selectors: consistency, gmm."
    ),
    cc_combine: str = typer.Option(
        "intersection",
        "--cc-combine",
        help="CLIPCleaner: 'intersection' (conservative) or 'union' of the verdicts.",
    ),
    cc_fit_sample: int = typer.Option(
        200_000,
        "--cc-fit-sample",
        help="CLIPCleaner: labelled rows to fit on (stratified sample above).",
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local (this machine) or ray (one task per shard on a Ray cluster).",
    ),
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        help="Ray cluster address [default: $RAY_ADDRESS, else start a local Ray].",
    ),
    overwrite: bool = OverwriteOpt,
    progress: bool = ProgressOpt,
    debug: bool = DebugOpt,
):
    """Score samples and write sidecar parts (embedding them first when given shards).

    Resumable: rerun the same command after a kill and finished shards are
    kept. Exit codes: 0 ok (bad samples are status rows), 2 bad options, 3
    unreadable input, 4 nothing scorable, 5 some shards unreadable (named;
    rerun to retry), 1 internal error, 130 interrupted.

    Example: nclean score shards/ --out weights.parquet --model ViT-B-32 --pretrained ./vitb32.pt
    """
    _DEBUG["on"] = debug
    from cleaner.schema import parse_methods
    from pipelines.methods import MethodSettings
    from pipelines.score_job import ScoreJob, ScoreSettings, run_score

    try:
        method_list = parse_methods(methods)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    job = ScoreJob(
        out=str(out),
        shards=list(shards) if shards else None,
        embeddings=str(embeddings) if embeddings else None,
        cache=str(cache) if cache else None,
        estimator=_estimator(model, pretrained, device, precision),
        sample_spec=_spec(image_key, text_key, uid_field, label_key),
        settings=ScoreSettings(
            methods=method_list,
            beta_source=beta_source,
            beta_samples=beta_samples,
            beta=beta,
            seed=seed,
            method=MethodSettings(
                sdd_alpha=sdd_alpha,
                sdd_beta_c=sdd_beta_c,
                sps_batch_size=sps_batch_size,
                sps_eps1=sps_eps1,
                sps_eps2=sps_eps2,
                sps_proxy_label=sps_proxy_label,
                sps_gamma=sps_gamma,
                sps_b=sps_b,
                fit_sample=fit_sample,
                exact_threshold=exact_threshold,
                cc_classes=str(classes) if classes else None,
                cc_prompts=str(prompts) if prompts else None,
                cc_prompt_aggregate=prompt_aggregate,
                cc_induced=induced,
                cc_folds=folds,
                cc_theta_cons=theta_cons,
                cc_theta_gmm=theta_gmm,
                cc_estimators=tuple(x.strip() for x in cc_estimators.split(",") if x.strip()),
                cc_selectors=tuple(x.strip() for x in cc_selectors.split(",") if x.strip()),
                cc_combine=cc_combine,
                cc_fit_sample=cc_fit_sample,
            ),
        ),
        batch_size=batch_size,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
        engine=engine,
        ray_address=ray_address,
        argv=sys.argv[1:],
        beta_source_explicit=ctx.get_parameter_source("beta_source").name == "COMMANDLINE",
    )
    if "clipcleaner" in method_list:
        _check_clipcleaner_options(
            prompt_aggregate,
            induced,
            folds,
            theta_cons,
            theta_gmm,
            cc_estimators,
            cc_selectors,
            cc_combine,
        )
    elif classes or prompts or label_key:
        raise ConfigError("--classes/--prompts/--label-key apply to --methods clipcleaner")
    if sps_proxy_label not in ("code", "paper"):
        raise ConfigError("--sps-proxy-label must be code or paper")
    if not 0 <= sps_eps2 <= sps_eps1 <= 1:
        raise ConfigError("need 0 <= --sps-eps2 <= --sps-eps1 <= 1")
    if fit_sample < 2 or sps_batch_size < 2:
        raise ConfigError("--fit-sample and --sps-batch-size must be at least 2")
    if not job.shards and not job.embeddings:
        raise ConfigError("give shards to score, or --embeddings DIR")
    summary = run_score(job)
    _print_summary(summary)
    if summary.fatal_shards:
        raise typer.Exit(5)


@app.command()
def embed(
    shards: list[str] = typer.Argument(
        ..., help="Shards: a directory, a glob, a brace pattern or paths."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Embedding folder (img_emb/, text_emb/, metadata/ as clip-retrieval writes them).",
    ),
    model: str = ModelOpt,
    pretrained: str = PretrainedOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    batch_size: int = BatchOpt,
    workers: int = WorkersOpt,
    image_key: str = ImageKeyOpt,
    text_key: str = TextKeyOpt,
    uid_field: str = UidOpt,
    engine: str = typer.Option(
        "local", "--engine", help="local, or ray (an actor pool, one shard per call)."
    ),
    ray_address: str = typer.Option(
        None, "--ray-address", help="Ray cluster address [default: $RAY_ADDRESS, else a local Ray]."
    ),
    overwrite: bool = OverwriteOpt,
    progress: bool = ProgressOpt,
    debug: bool = DebugOpt,
):
    """Embed shards into a clip-retrieval compatible folder (resumable), for
    later `nclean score --embeddings`.

    Example: nclean embed 'data-{000000..000099}.tar' --out emb/ --pretrained ./vitb32.pt
    """
    _DEBUG["on"] = debug
    from cleaner.embcache import EmbeddingCache
    from cleaner.shards import expand_shards
    from pipelines.embed_job import run_embed

    paths = expand_shards(shards)
    out.mkdir(parents=True, exist_ok=True)
    report = run_embed(
        paths,
        EmbeddingCache(out),
        _estimator(model, pretrained, device, precision),
        _spec(image_key, text_key, uid_field),
        batch_size,
        workers,
        overwrite=overwrite,
        progress=progress,
        engine=engine,
        ray_address=ray_address,
    )
    print(
        f"embedded {len(report.embedded)} shards ({report.samples} samples), reused {len(report.skipped)}; folder: {out}",
        file=sys.stderr,
    )
    for stem, msg in report.fatal.items():
        print(f"unreadable shard {stem}: {msg}", file=sys.stderr)
    if report.fatal:
        raise typer.Exit(5)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Folder for the generated shards and the sidecar."),
    samples: int = typer.Option(600, "--samples", help="Samples to generate."),
    noise: float = typer.Option(0.4, "--noise", help="Fraction of captions shuffled, in [0, 1); a rerun with other --samples/--noise regenerates the data."),
    random_estimator: bool = typer.Option(False, "--random-estimator", help="Skip pre-training: score with random weights (verdicts at chance)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Where the pre-trained demo estimator is cached [default: $NCLEAN_CACHE or ~/.cache/nclean]."),
    progress: bool = ProgressOpt,
    debug: bool = DebugOpt,
):
    """Offline end to end: generate a noisy shapes-world dataset (with a few
    corrupt samples), pre-train a small estimator on clean pairs (cached;
    minutes the first time), score, and print clean kept / noise caught per
    method."""
    _DEBUG["on"] = debug
    from .demo import run_demo

    run_demo(out, samples=samples, noise=noise, progress=progress, random_estimator=random_estimator, cache_dir=cache_dir)


@app.command()
def train(
    shards: list[str] = typer.Argument(
        ..., help="Training shards (directory, glob, brace pattern or paths)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Run folder: last.pt (every epoch), metrics.json; epoch_NNN.pt with --save-every-epoch.",
    ),
    sidecar: Path = typer.Option(
        None, "--sidecar", "--weights", help="Sidecar from nclean score for these shards."
    ),
    method: str = typer.Option(
        "none",
        "--method",
        help="pairs: none | filter | osa | sdd | sps; classify: none | mixfix | filter.",
    ),
    task: str = typer.Option(
        "pairs",
        "--task",
        help="pairs (fine-tune the dual encoder) or classify (linear head on the frozen image tower).",
    ),
    where: str = typer.Option(
        None,
        "--where",
        help='Row filter, only with --method filter, e.g. "sdd_keep and osa_weight > 0".'
    ),
    eval_shards: list[str] = typer.Option(
        None,
        "--eval",
        help="Clean held-out shards: R@1/5/10 both ways and rSum (pairs) or accuracy (classify) per epoch.",
    ),
    model: str = typer.Option(
        "nclean-tiny", "--model", help="open_clip model name or config .json of the model to train."
    ),
    pretrained: str = typer.Option(
        None,
        "--pretrained",
        help="Initial weights: a local checkpoint or open_clip tag; none = random init.",
    ),
    device: str = DeviceOpt,
    epochs: int = typer.Option(1, "--epochs", help="Passes over the (selected) rows; see --steps."),
    batch_size: int = typer.Option(64, "--batch-size", help="Pairs (or images) per step."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak AdamW learning rate (cosine decay)."),
    weight_decay: float = typer.Option(
        0.2, "--weight-decay", help="AdamW weight decay (not on gains, biases, temperature)."
    ),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear warm-up steps."),
    max_steps: int = typer.Option(
        None, "--max-steps", help="Stop after this many steps (smoke runs)."
    ),
    steps: int = typer.Option(
        None,
        "--steps",
        help="Fixed step budget instead of --epochs (DataComp-style equal compute): a filtered set runs as many epochs as it needs to reach it. Also for --task classify; with --max-steps the smaller wins.",
    ),
    save_every_epoch: bool = typer.Option(
        False,
        "--save-every-epoch",
        help="Also keep a checkpoint per epoch (epoch_NNN.pt); by default only last.pt is kept.",
    ),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(
        0, "--workers", help="Decoding processes while loading the shards."
    ),
    osa_form: str = typer.Option(
        "paper",
        "--osa-form",
        help="OSA weight: paper (osa_weight), paper-norm (osa_weight_norm) or code (the released per-batch form from cosine and beta).",
    ),
    sps_lambda1: float = typer.Option(25.0, "--sps-lambda1", help="SPS weight of L_cro."),
    sps_lambda2: float = typer.Option(25.0, "--sps-lambda2", help="SPS weight of L_met."),
    sps_qc_from_epoch: int = typer.Option(
        0, "--sps-qc-from-epoch", help="First epoch using quasi-clean pairs (released code: 10)."
    ),
    sps_noisy_from_epoch: int = typer.Option(
        0,
        "--sps-noisy-from-epoch",
        help="First epoch using noisy pairs with proxies (released code: 15).",
    ),
    classes: Path = typer.Option(None, "--classes", help="classify: class names file."),
    theta_r: float = typer.Option(0.8, "--theta-r", help="MixFix absorb threshold."),
    theta_r2: float = typer.Option(
        0.9, "--theta-r2", help="MixFix relabel threshold (>= theta_r)."
    ),
    mixup_alpha: float = typer.Option(1.0, "--mixup-alpha"),
    image_key: str = ImageKeyOpt,
    text_key: str = TextKeyOpt,
    label_key: str = typer.Option(
        "cls", "--label-key", help="classify: label member or json:<field>."
    ),
    progress: bool = ProgressOpt,
    debug: bool = DebugOpt,
):
    """Fine-tune an open_clip model on shards using a sidecar's verdicts (a
    thin, readable loop; holds the training set in memory).

    Example: nclean train shards/ --sidecar w.parquet --method osa --eval test/ --out run/
    """
    _DEBUG["on"] = debug
    from .train import TrainConfig
    from .train import train as run_train

    cfg = TrainConfig(
        shards=list(shards),
        out=str(out),
        sidecar=str(sidecar) if sidecar else None,
        method=method,
        task=task,
        where=where,
        eval_shards=list(eval_shards) if eval_shards else None,
        model=model,
        pretrained=pretrained,
        device=device,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        max_steps=max_steps,
        steps=steps,
        save_every_epoch=save_every_epoch,
        seed=seed,
        workers=workers,
        osa_form=osa_form,
        sps_lambda1=sps_lambda1,
        sps_lambda2=sps_lambda2,
        sps_qc_from_epoch=sps_qc_from_epoch,
        sps_noisy_from_epoch=sps_noisy_from_epoch,
        classes=str(classes) if classes else None,
        theta_r=theta_r,
        theta_r2=theta_r2,
        mixup_alpha=mixup_alpha,
        image_key=image_key,
        text_key=text_key,
        label_key=label_key,
        progress=progress,
    )
    history = run_train(cfg)
    last = history[-1] if history else {}
    shown = {
        k: v
        for k, v in last.items()
        if k in ("train_loss", "rsum", "i2t_R@1", "t2i_R@1", "accuracy")
    }
    print(
        f"trained {len(history)} epoch(s); last: {json.dumps(shown)}; run folder: {out}",
        file=sys.stderr,
    )


def _register_commands() -> None:
    # commands that live in their own modules (cleaner/commands/)
    from .commands.filter import filter_cmd
    from .commands.report import report_cmd

    app.command("filter")(filter_cmd)
    app.command("report")(report_cmd)


_register_commands()


def main() -> None:
    """Console entry point: one-line errors, never a traceback for user errors."""
    try:
        # standalone_mode=False: click returns typer.Exit's code instead of exiting
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except NcleanError as exc:
        print(f"nclean: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("nclean: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in _PATH_ERRNOS or _DEBUG["on"]:
            _internal_error(exc)
        # a path the user gave cannot be used (a file where a folder is
        # expected, no permission, read-only): a configuration error
        where = f": {exc.filename}" if exc.filename else ""
        print(f"nclean: error: {exc.strerror or exc}{where}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - last line of defence
        # Usage errors come as click exceptions -- from click itself or from
        # the copy of click that newer typer releases vendor (typer._click),
        # whose classes are not click's: match them by class name.
        kinds = {c.__name__ for c in type(exc).__mro__}
        if "Abort" in kinds:
            print("nclean: interrupted", file=sys.stderr)
            sys.exit(130)
        if "ClickException" in kinds and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        _internal_error(exc)


_PATH_ERRNOS = {
    errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS
}


def _internal_error(exc: BaseException) -> None:
    if _DEBUG["on"]:
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(
        f"nclean: internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
