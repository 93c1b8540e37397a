"""``nclean score``: the main job, thin over :mod:`pipelines.score_job`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cleaner.commands.options import (
    BatchOpt,
    DebugOpt,
    DeviceOpt,
    ImageKeyOpt,
    ModelOpt,
    OverwriteOpt,
    PrecisionOpt,
    PretrainedOpt,
    ProgressOpt,
    TextKeyOpt,
    UidOpt,
    WorkersOpt,
    _check_clipcleaner_options,
    _estimator,
    _print_summary,
    _spec,
    set_debug,
)
from cleaner.errors import ConfigError


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
    set_debug(debug)
    from cleaner.io.schema import parse_methods
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
