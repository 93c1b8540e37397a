"""What a training run is told: :class:`TrainConfig`, and its validation.

:func:`validate` rejects settings that cannot work before anything is
loaded or written (a one-line :class:`~cleaner.errors.ConfigError`, exit 2),
and :func:`config_from_options` builds the config from ``nclean train``'s
options by field name, so the command does not list every field twice.

A module of its own because the CLI, the pretraining script and both
training loops need the config, and none of them should pull in another's
code to get it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleaner.errors import ConfigError
from cleaner.methods import losses as L

PAIR_METHODS = ("none", "filter", "osa", "sdd", "sps")
CLASSIFY_METHODS = ("none", "mixfix", "filter")


@dataclass
class TrainConfig:
    shards: list[str]
    out: str
    sidecar: str | None = None
    method: str = "none"
    task: str = "pairs"  # pairs | classify
    where: str | None = None
    # pairs, --method none/filter: a loss weight per row from an expression
    # over the sidecar (e.g. match_clean_prob): OSA's weighted mean, any score
    weight: str | None = None
    eval_shards: list[str] | None = None
    model: str = "nclean-tiny"
    pretrained: str | None = None
    device: str = "auto"
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.2
    warmup_steps: int = 0
    max_steps: int | None = None  # stop early (tests, smoke runs)
    # A fixed step budget (DataComp's fixed samples-seen): overrides epochs,
    # so a filtered set of half the rows runs twice the epochs and every
    # method gets the same number of updates. A step is one optimiser update
    # (pairs: full batches only, or one partial batch when fewer rows than
    # batch_size are selected; classify: the last batch of an epoch may be
    # partial). With both set, max_steps caps: min(steps, max_steps) updates,
    # the learning-rate schedule still spanning the smaller of the two.
    steps: int | None = None
    # last.pt is always written (atomically, after every epoch); True also
    # keeps epoch_NNN.pt per epoch (a small filtered set under a step budget
    # runs many short epochs: one full checkpoint each adds up fast).
    save_every_epoch: bool = False
    # A fixed temperature multiplier (e.g. 100, where CLIP's learned one
    # ends); None learns it from the checkpoint's value, clamped at 100.
    logit_scale: float | None = None
    seed: int = 0
    workers: int = 0
    osa_form: str = "paper"  # paper | paper-norm | code
    sps_lambda1: float = L.SPS_LAMBDA1
    sps_lambda2: float = L.SPS_LAMBDA2
    sps_qc_from_epoch: int = 0  # released code: quasi-clean from epoch 10
    sps_noisy_from_epoch: int = 0  # released code: noisy from epoch 15
    classes: str | None = None
    theta_r: float = 0.8
    theta_r2: float = 0.9
    mixup_alpha: float = 1.0
    image_key: str = "jpg;jpeg;png;webp"
    text_key: str = "txt"
    label_key: str = "cls"
    progress: bool = True


def config_from_options(options: dict) -> TrainConfig:
    """A :class:`TrainConfig` from the ``nclean train`` options of the same
    names (others, e.g. ``debug``, are ignored): paths become strings,
    sequences lists, and an empty sequence for an optional field ``None``."""
    values = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name not in options:
            continue
        value = options[field.name]
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple)):
            value = list(value) if value or field.default is not None else None
        values[field.name] = value
    return TrainConfig(**values)


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, not {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Reject settings that cannot work, before anything is loaded or written
    (ConfigError, exit 2: one line, never a traceback or a silent no-op)."""
    _check_choices(cfg)
    _check_numbers(cfg)
    _check_inputs(cfg)


def _check_choices(cfg: TrainConfig) -> None:
    if cfg.task not in ("pairs", "classify"):
        raise ConfigError("--task must be pairs or classify")
    methods = PAIR_METHODS if cfg.task == "pairs" else CLASSIFY_METHODS
    if cfg.method not in methods:
        if cfg.task == "pairs":
            raise ConfigError(
                f"unknown --method {cfg.method!r}; choose from {', '.join(PAIR_METHODS)}"
            )
        raise ConfigError(f"--task classify supports --method {', '.join(CLASSIFY_METHODS)}")
    if cfg.osa_form not in ("paper", "paper-norm", "code"):
        raise ConfigError("--osa-form must be paper, paper-norm or code")


def _check_numbers(cfg: TrainConfig) -> None:
    _positive_int("--epochs", cfg.epochs)
    _positive_int("--batch-size", cfg.batch_size)
    _positive_int("--steps", cfg.steps, allow_none=True)
    _positive_int("--max-steps", cfg.max_steps, allow_none=True)
    if cfg.warmup_steps != 0:  # 0 is the default; anything else as a count of steps
        _positive_int("--warmup-steps", cfg.warmup_steps)
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"--lr must be a finite number > 0, not {cfg.lr!r}")
    if not (
        isinstance(cfg.weight_decay, (int, float))
        and math.isfinite(cfg.weight_decay)
        and cfg.weight_decay >= 0
    ):
        raise ConfigError(f"--weight-decay must be a finite number >= 0, not {cfg.weight_decay!r}")
    if cfg.logit_scale is not None and not (
        isinstance(cfg.logit_scale, (int, float)) and 0 < cfg.logit_scale <= 100
    ):
        raise ConfigError(
            f"logit_scale must be in (0, 100] (CLIP clamps at 100), not {cfg.logit_scale!r}"
        )


def _check_inputs(cfg: TrainConfig) -> None:
    if cfg.where is not None and cfg.method != "filter":
        raise ConfigError("--where is only used with --method filter")
    if cfg.weight is not None and (cfg.task != "pairs" or cfg.method not in ("none", "filter")):
        raise ConfigError("--weight is only used with --method none or filter (pairs)")
    if cfg.task == "pairs":
        if cfg.weight is not None and not cfg.sidecar:
            raise ConfigError("--weight needs --sidecar")
        if cfg.method == "filter" and not cfg.where:
            raise ConfigError("--method filter needs --where EXPR")
        if cfg.method != "none" and not cfg.sidecar:
            raise ConfigError(f"--method {cfg.method} needs --sidecar")
    else:
        if not cfg.classes:
            raise ConfigError("--task classify needs --classes")
        if cfg.method != "none" and not cfg.sidecar:
            raise ConfigError(f"--method {cfg.method} needs --sidecar with CLIPCleaner columns")
