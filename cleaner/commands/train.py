"""``nclean train``: the thin trainer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from cleaner.commands.options import (
    DebugOpt,
    DeviceOpt,
    ImageKeyOpt,
    ProgressOpt,
    TextKeyOpt,
    set_debug,
)


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
        help='Row filter, only with --method filter, e.g. "sdd_keep and osa_weight > 0".',
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
    set_debug(debug)
    from cleaner.train.trainer import TrainConfig
    from cleaner.train.trainer import train as run_train

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
