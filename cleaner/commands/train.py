"""``nclean train``: the thin trainer.

The command only declares its options; :func:`cleaner.train.config.config_from_options`
turns them into a :class:`~cleaner.train.config.TrainConfig` by name and the
trainer validates it, so a new setting is one option here and one field there.
The options are module constants so the command's signature stays one line
per option.
"""

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

# the summary line shows these of the last epoch's metrics
_SHOWN_METRICS = ("train_loss", "rsum", "i2t_R@1", "t2i_R@1", "accuracy")

_SHARDS = typer.Argument(..., help="Training shards (directory, glob, brace pattern or paths).")

_OUT = typer.Option(
    ...,
    "--out",
    "-o",
    help="Run folder: last.pt (every epoch), metrics.json; epoch_NNN.pt with --save-every-epoch.",
)

_SIDECAR = typer.Option(
    None, "--sidecar", "--weights", help="Sidecar from nclean score for these shards."
)

_METHOD = typer.Option(
    "none",
    "--method",
    help="pairs: none | filter | osa | sdd | sps; classify: none | mixfix | filter.",
)

_TASK = typer.Option(
    "pairs",
    "--task",
    help="pairs (fine-tune the dual encoder) or classify (linear head on the frozen image tower).",
)

_WHERE = typer.Option(
    None,
    "--where",
    help='Row filter, only with --method filter, e.g. "sdd_keep and osa_weight > 0".',
)

_WEIGHT = typer.Option(
    None,
    "--weight",
    help='Per-pair loss weight, any sidecar expression (with --method none or filter), '
    'e.g. "match_clean_prob".',
)

_EVAL_SHARDS = typer.Option(
    None,
    "--eval",
    help="Clean held-out shards: R@1/5/10 both ways and rSum (pairs) or accuracy (classify) per epoch.",
)

_MODEL = typer.Option(
    "nclean-tiny", "--model", help="open_clip model name or config .json of the model to train."
)

_PRETRAINED = typer.Option(
    None,
    "--pretrained",
    help="Initial weights: a local checkpoint or open_clip tag; none = random init.",
)

_EPOCHS = typer.Option(1, "--epochs", help="Passes over the (selected) rows; see --steps.")

_BATCH_SIZE = typer.Option(64, "--batch-size", help="Pairs (or images) per step.")

_LR = typer.Option(1e-4, "--lr", help="Peak AdamW learning rate (cosine decay).")

_WEIGHT_DECAY = typer.Option(
    0.2, "--weight-decay", help="AdamW weight decay (not on gains, biases, temperature)."
)

_WARMUP_STEPS = typer.Option(0, "--warmup-steps", help="Linear warm-up steps.")

_MAX_STEPS = typer.Option(None, "--max-steps", help="Stop after this many steps (smoke runs).")

_STEPS = typer.Option(
    None,
    "--steps",
    help="Fixed step budget instead of --epochs (DataComp-style equal compute): a filtered set runs as many epochs as it needs to reach it. Also for --task classify; with --max-steps the smaller wins.",
)

_SAVE_EVERY_EPOCH = typer.Option(
    False,
    "--save-every-epoch",
    help="Also keep a checkpoint per epoch (epoch_NNN.pt); by default only last.pt is kept.",
)

_SEED = typer.Option(0, "--seed")

_WORKERS = typer.Option(0, "--workers", help="Decoding processes while loading the shards.")

_OSA_FORM = typer.Option(
    "paper",
    "--osa-form",
    help="OSA weight: paper (osa_weight), paper-norm (osa_weight_norm) or code (the released per-batch form from cosine and beta).",
)

_SPS_LAMBDA1 = typer.Option(25.0, "--sps-lambda1", help="SPS weight of L_cro.")

_SPS_LAMBDA2 = typer.Option(25.0, "--sps-lambda2", help="SPS weight of L_met.")

_SPS_QC_FROM_EPOCH = typer.Option(
    0, "--sps-qc-from-epoch", help="First epoch using quasi-clean pairs (released code: 10)."
)

_SPS_NOISY_FROM_EPOCH = typer.Option(
    0,
    "--sps-noisy-from-epoch",
    help="First epoch using noisy pairs with proxies (released code: 15).",
)

_CLASSES = typer.Option(None, "--classes", help="classify: class names file.")

_THETA_R = typer.Option(0.8, "--theta-r", help="MixFix absorb threshold.")

_THETA_R2 = typer.Option(0.9, "--theta-r2", help="MixFix relabel threshold (>= theta_r).")

_MIXUP_ALPHA = typer.Option(1.0, "--mixup-alpha")

_LABEL_KEY = typer.Option("cls", "--label-key", help="classify: label member or json:<field>.")


def train(
    shards: list[str] = _SHARDS,
    out: Path = _OUT,
    sidecar: Path = _SIDECAR,
    method: str = _METHOD,
    task: str = _TASK,
    where: str = _WHERE,
    weight: str = _WEIGHT,
    eval_shards: list[str] = _EVAL_SHARDS,
    model: str = _MODEL,
    pretrained: str = _PRETRAINED,
    device: str = DeviceOpt,
    epochs: int = _EPOCHS,
    batch_size: int = _BATCH_SIZE,
    lr: float = _LR,
    weight_decay: float = _WEIGHT_DECAY,
    warmup_steps: int = _WARMUP_STEPS,
    max_steps: int = _MAX_STEPS,
    steps: int = _STEPS,
    save_every_epoch: bool = _SAVE_EVERY_EPOCH,
    seed: int = _SEED,
    workers: int = _WORKERS,
    osa_form: str = _OSA_FORM,
    sps_lambda1: float = _SPS_LAMBDA1,
    sps_lambda2: float = _SPS_LAMBDA2,
    sps_qc_from_epoch: int = _SPS_QC_FROM_EPOCH,
    sps_noisy_from_epoch: int = _SPS_NOISY_FROM_EPOCH,
    classes: Path = _CLASSES,
    theta_r: float = _THETA_R,
    theta_r2: float = _THETA_R2,
    mixup_alpha: float = _MIXUP_ALPHA,
    image_key: str = ImageKeyOpt,
    text_key: str = TextKeyOpt,
    label_key: str = _LABEL_KEY,
    progress: bool = ProgressOpt,
    debug: bool = DebugOpt,
):
    """Fine-tune an open_clip model on shards using a sidecar's verdicts (a
    thin, readable loop; holds the training set in memory).

    Example: nclean train shards/ --sidecar w.parquet --method osa --eval test/ --out run/
    """
    options = dict(locals())  # first, so it holds exactly the options
    set_debug(debug)
    from cleaner.train.config import config_from_options
    from cleaner.train.trainer import train as run_train

    history = run_train(config_from_options(options))
    last = history[-1] if history else {}
    shown = {k: v for k, v in last.items() if k in _SHOWN_METRICS}
    print(
        f"trained {len(history)} epoch(s); last: {json.dumps(shown)}; run folder: {out}",
        file=sys.stderr,
    )
