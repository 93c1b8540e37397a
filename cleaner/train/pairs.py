"""The pair-training loop: fine-tune the dual encoder, one method at a time.

:func:`train_pairs` walks the rows the method selects in shuffled full
batches, with AdamW, linear warm-up then cosine decay, CLIP's temperature
clamp, an optional fixed step budget (``--steps``, DataComp-style equal
compute), retrieval metrics on ``--eval`` shards and a checkpoint plus
``metrics.json`` after every epoch.

A module of its own because the loop is the same for every method: what
differs lives in :mod:`cleaner.train.objectives`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from cleaner.io.atomic import write_json
from cleaner.progress import progress_bar
from cleaner.train.config import TrainConfig
from cleaner.train.metrics import retrieval_metrics
from cleaner.train.model import Model, embed_split, param_groups
from cleaner.train.objectives import PairObjective
from cleaner.train.run import RunInputs, atomic_save, load_inputs, warn_small


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Learning rate of ``step``: linear warm-up, then cosine decay to 0 at ``total``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def schedule(cfg: TrainConfig, n_rows: int) -> tuple[int, int, int]:
    """(steps per epoch, epochs, total steps) for ``n_rows`` selected rows."""
    steps_per_epoch = max(1, n_rows // cfg.batch_size)
    epochs = cfg.epochs if cfg.steps is None else math.ceil(cfg.steps / steps_per_epoch)
    total = cfg.steps if cfg.steps is not None else steps_per_epoch * epochs
    if cfg.max_steps is not None:
        total = min(cfg.max_steps, total)
    return steps_per_epoch, epochs, total


@dataclass
class _PairLoop:
    """The state one epoch advances: the step count runs across epochs."""

    cfg: TrainConfig
    model: Model
    objective: PairObjective
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    epochs: int
    total: int
    bar: tqdm
    step: int = 0

    def run_epoch(self, epoch: int, order: np.ndarray) -> list[float]:
        """Train on the batches of one epoch (until the budget); their losses."""
        cfg, net, losses = self.cfg, self.model.net, []
        for b in range(self.steps_per_epoch):
            if self.step >= self.total:
                break
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            for g in self.optimizer.param_groups:
                g["lr"] = lr_at(self.step, cfg, self.total)
            loss, _ = self.objective.loss(idx, epoch, self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():  # CLIP keeps the temperature in a sane range
                net.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            self.step += 1
            self.bar.update(1)
            # refresh=False: a log gets a line every few seconds, not one per step
            self.bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        return losses


def _fix_temperature(model: Model, logit_scale: float | None) -> None:
    """With ``logit_scale`` set, the temperature is that constant, not learned."""
    if logit_scale is not None:
        with torch.no_grad():
            model.net.logit_scale.fill_(math.log(logit_scale))
        model.net.logit_scale.requires_grad_(False)


def _start(cfg: TrainConfig, inputs: RunInputs) -> _PairLoop:
    """Model, objective, optimiser and step budget, ready for the first epoch."""
    model = Model(inputs.est)
    _fix_temperature(model, cfg.logit_scale)
    objective = PairObjective(cfg, model, inputs.split, inputs.side, inputs.meta)
    optimizer = torch.optim.AdamW(
        param_groups(model.net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    warn_small(len(objective.rows), cfg.batch_size)
    steps_per_epoch, epochs, total = schedule(cfg, len(objective.rows))
    bar = progress_bar(
        total=total,
        desc=f"train {cfg.method}",
        unit="step",
        disable=not cfg.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    return _PairLoop(cfg, model, objective, optimizer, steps_per_epoch, epochs, total, bar)


def _end_epoch(loop: _PairLoop, inputs: RunInputs, epoch: int, losses, history: list) -> None:
    """Record the epoch (with retrieval metrics on --eval), save, write metrics."""
    cfg, out = loop.cfg, inputs.out
    record = {
        "epoch": epoch,
        "steps": loop.step,
        "train_loss": float(np.mean(losses)) if losses else None,
        "train_rows": int(len(loop.objective.rows)),
    }
    if inputs.evals is not None:
        record.update(retrieval_metrics(*embed_split(loop.model, inputs.evals)))
    history.append(record)
    state = loop.model.net.state_dict()
    if cfg.save_every_epoch:
        atomic_save(state, out / f"epoch_{epoch:03d}.pt")
    atomic_save(state, out / "last.pt")
    write_json(
        out / "metrics.json",
        {"config": asdict(cfg), "epochs": history, "skipped": inputs.split.skipped},
    )


def train_pairs(cfg: TrainConfig) -> list[dict]:
    """Fine-tune on pairs (``cfg`` already validated); the per-epoch metrics."""
    inputs = load_inputs(cfg)
    loop = _start(cfg, inputs)
    history: list[dict] = []
    rng = np.random.default_rng(cfg.seed)
    for epoch in range(loop.epochs):
        order = rng.permutation(loop.objective.rows)
        losses = loop.run_epoch(epoch, order)
        _end_epoch(loop, inputs, epoch, losses, history)
        if loop.step >= loop.total:
            break
    loop.bar.close()
    return history
