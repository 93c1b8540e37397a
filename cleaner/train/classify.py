"""Classification with MixFix: a linear head on the frozen image tower.

:func:`train_classifier` computes the image features once, then trains a
linear head with mixup cross-entropy and a class-balanced sampler, on every
label (``--method none``), on CLIPCleaner's selection or the ``--where``
rows (``filter``), or with MixFix (``mixfix``): starting from CLIPCleaner's
selection, confident non-selected samples are absorbed or relabelled after
each epoch (METHODS.md section 3.5).

A module of its own because it shares nothing with the pair loop but the
inputs: a different model (a head on frozen features), loss and schedule.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from cleaner.errors import ConfigError
from cleaner.io.atomic import write_json
from cleaner.methods import losses as L
from cleaner.train.config import CLASSIFY_METHODS, TrainConfig, validate
from cleaner.train.model import Model, embed_split
from cleaner.train.run import atomic_save, load_inputs, warn_small
from cleaner.train.sidecar import where_mask


def _selection(cfg: TrainConfig, side, n_rows: int) -> np.ndarray:
    """The rows the head starts from: all, the ``--where`` rows or CLIPCleaner's."""
    if cfg.method == "none":
        return np.ones(n_rows, bool)
    if cfg.method in ("mixfix", "filter"):
        if side is None:
            raise ConfigError(f"--method {cfg.method} needs --sidecar with CLIPCleaner columns")
        if cfg.method == "filter" and cfg.where:
            return where_mask(side, cfg.where)
        return side["cc_selected"].fillna(False).to_numpy(bool)
    raise ConfigError(f"--task classify supports --method {', '.join(CLASSIFY_METHODS)}")


def _budget(cfg: TrainConfig) -> int | None:
    """Steps to stop at: --steps, capped by --max-steps; None runs --epochs.

    With --steps the loop runs as many epochs as the budget needs (MixFix
    changes the rows per epoch, so epochs are not counted up front).
    """
    budget = cfg.steps
    if cfg.max_steps is not None:
        budget = cfg.max_steps if budget is None else min(budget, cfg.max_steps)
    return budget


class _HeadRun:
    """The head, its optimiser and the (MixFix-updated) labels and rows in use."""

    def __init__(self, cfg: TrainConfig, k: int, feats, labels, selected: np.ndarray):
        self.cfg, self.k, self.feats, self.labels, self.selected = cfg, k, feats, labels, selected
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.head = torch.nn.Linear(feats.shape[1], k)
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=cfg.lr, weight_decay=1e-4)
        self.use = torch.as_tensor(np.array(selected, dtype=bool))
        self.train_labels = labels.clone()
        self.step = 0

    def run_epoch(self, epoch: int, budget: int | None) -> dict:
        """One class-balanced pass over the rows in use (until the budget)."""
        cfg, k = self.cfg, self.k
        rows = torch.nonzero(self.use).flatten()
        if len(rows) < 2:
            raise ConfigError(
                f"--method {cfg.method}: only {len(rows)} training rows selected"
                + (f" in epoch {epoch}" if epoch else "")
                + "; nothing to train on"
            )
        if epoch == 0:
            warn_small(len(rows), cfg.batch_size)
        w = L.class_balanced_weights(self.train_labels[rows], k)
        drawn = torch.multinomial(w, num_samples=len(rows), replacement=True, generator=self.gen)
        order = rows[drawn]
        for s in range(0, len(order), cfg.batch_size):
            if budget is not None and self.step >= budget:
                break
            idx = order[s : s + cfg.batch_size]
            y = F.one_hot(self.train_labels[idx], k).float()
            xm, ym, _ = L.mixup(self.feats[idx], y, alpha=cfg.mixup_alpha, generator=self.gen)
            loss = L.mixup_cross_entropy(self.head(xm), ym)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.step += 1
        return {"epoch": epoch, "steps": self.step, "train_rows": int(self.use.sum())}

    def mixfix(self) -> dict[str, int]:
        """Absorb / relabel / drop by the head's confidence; the counts of each."""
        with torch.no_grad():
            probs = torch.softmax(self.head(self.feats), dim=1)
        new_labels, use_mask, decision = L.mixfix_decisions(
            probs,
            self.labels,
            torch.as_tensor(np.array(self.selected, dtype=bool)),
            self.cfg.theta_r,
            self.cfg.theta_r2,
        )
        self.train_labels, self.use = torch.as_tensor(new_labels), torch.as_tensor(use_mask)
        return {
            name: int((torch.as_tensor(decision) == code).sum())
            for name, code in (
                ("absorbed", L.MIXFIX_ABSORB),
                ("relabelled", L.MIXFIX_RELABEL),
                ("dropped", L.MIXFIX_DROP),
            )
        }

    def accuracy(self, eval_feats, eval_labels: np.ndarray) -> float:
        """Top-1 accuracy (in %) on the held-out samples that have a label."""
        with torch.no_grad():
            pred = self.head(eval_feats).argmax(1).numpy()
        valid = eval_labels >= 0
        return float((pred[valid] == eval_labels[valid]).mean() * 100)


def train_classifier(cfg: TrainConfig) -> list[dict]:
    """A linear head on the frozen image tower (features computed once),
    trained with mixup CE and a class-balanced sampler; ``--method mixfix``
    starts from CLIPCleaner's selection and absorbs / relabels confident
    non-selected samples after each epoch (METHODS.md section 3.5)."""
    from cleaner.estimator.prompts import load_classes

    validate(cfg)
    k = len(load_classes(cfg.classes))
    inputs = load_inputs(cfg, n_classes=k)
    model = Model(inputs.est)
    model.net.eval().requires_grad_(False)
    feats, _ = embed_split(model, inputs.split)
    evals = inputs.evals
    eval_feats = embed_split(model, evals)[0] if evals is not None else None
    labels = torch.as_tensor(inputs.split.labels)
    run = _HeadRun(cfg, k, feats, labels, _selection(cfg, inputs.side, len(inputs.split)))
    budget = _budget(cfg)
    history, epoch = [], 0
    while (cfg.steps is not None or epoch < cfg.epochs) and (budget is None or run.step < budget):
        record = run.run_epoch(epoch, budget)
        if cfg.method == "mixfix":
            record["mixfix"] = run.mixfix()
        if eval_feats is not None:
            record["accuracy"] = run.accuracy(eval_feats, evals.labels)
        history.append(record)
        atomic_save(run.head.state_dict(), inputs.out / "head_last.pt")
        write_json(inputs.out / "metrics.json", {"config": asdict(cfg), "epochs": history})
        epoch += 1
    return history
