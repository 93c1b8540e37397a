"""What both training tasks do around their loop: load inputs, save, warn.

:func:`load_inputs` reads and checks the sidecar (before any shard is
decoded, so a wrong sidecar fails fast), seeds, loads the estimator, decodes
the training and evaluation shards and joins the sidecar rows to them.
:func:`atomic_save` writes checkpoints so a killed run never leaves half a
file, and :func:`warn_small` flags a selection smaller than one batch.

A module of its own because the pair loop and the classifier share these
steps in the same order; keeping them in one place keeps the order the same.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cleaner.estimator.model import load_estimator
from cleaner.io.atomic import atomic_path
from cleaner.io.decode import SampleSpec
from cleaner.train.config import TrainConfig
from cleaner.train.data import Split, load_split
from cleaner.train.sidecar import check_sidecar, join_sidecar, read_train_sidecar


@dataclass
class RunInputs:
    """Everything a loop needs before its first step."""

    est: object  # the loaded estimator (model, preprocessing, device)
    out: Path  # the run folder (created)
    split: Split  # the training samples
    side: object  # pandas frame of sidecar rows aligned to ``split``, or None
    meta: dict  # the sidecar's nclean metadata ({} without a sidecar)
    evals: Split | None  # the held-out samples of --eval, if any


def setup(cfg: TrainConfig) -> tuple[object, SampleSpec, Path]:
    """Seed, load the estimator, and make the run folder."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    est = load_estimator(cfg.model, cfg.pretrained, cfg.device, precision="fp32")
    keys = tuple(k for k in cfg.image_key.replace(",", ";").split(";") if k)
    spec = SampleSpec(
        image_keys=keys,
        text_key=cfg.text_key,
        label_key=cfg.label_key if cfg.task == "classify" else None,
        text_required=cfg.task != "classify",
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return est, spec, out


def load_inputs(cfg: TrainConfig, n_classes: int | None = None) -> RunInputs:
    """The sidecar checked, then the shards decoded and joined to it.

    ``n_classes`` (classification) bounds the labels the decoder accepts.
    """
    loaded = read_train_sidecar(cfg.sidecar) if cfg.sidecar else None
    if loaded is not None:
        check_sidecar(cfg, loaded)
    est, spec, out = setup(cfg)
    if n_classes is not None:
        spec.n_classes = n_classes
    if loaded is not None and loaded[1].get("join") == "uid":
        spec.uid_field = "uid"  # DataComp's field: the sidecar finds samples by it
    split = load_split(cfg.shards, est, spec, cfg.workers)
    side, meta = join_sidecar(split, cfg.sidecar, loaded) if loaded is not None else (None, {})
    del loaded  # the joined rows are all the loop needs; free the whole table first
    evals = load_split(cfg.eval_shards, est, spec, cfg.workers) if cfg.eval_shards else None
    return RunInputs(est=est, out=out, split=split, side=side, meta=meta, evals=evals)


def atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def warn_small(n_rows: int, batch_size: int) -> None:
    if n_rows < batch_size:
        print(
            f"nclean: warning: {n_rows} rows selected, fewer than one batch of {batch_size}",
            file=sys.stderr,
            flush=True,
        )
