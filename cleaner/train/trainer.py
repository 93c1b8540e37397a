"""The thin trainer: fine-tune an open_clip model on shards using a sidecar.

A readable loop, no framework, to show the verdicts paying off. It holds
the (small) training set in memory, decoded at the model's input size,
because SDD's memory bank and SPS's proxies need random access to *other*
samples by key. Web-scale trainers should use :mod:`cleaner.train.weights`
instead.

Methods (``--method``), each per METHODS.md:

- ``none``    plain symmetric InfoNCE on every scorable pair;
- ``filter``  plain InfoNCE on the rows matching ``--where``;
- ``osa``     per-sample InfoNCE x OSA weight, batch mean (the weight from
  the sidecar, or the released code's per-batch form on the curve the
  sidecar records: the paper's cubic, or ``monotone`` from ``--thresholds auto``);
- ``sdd``     rows with ``sdd_keep``; loss x w_con x w_sig, w_sig from a
  siamese step on the memory-bank pairs the sidecar names;
- ``sps``     reliable / quasi-clean / noisy batches: L_re + L_qc + L_n +
  lambda1 L_cro + lambda2 L_met, with soft labels and proxy captions.

With ``weight`` (an expression over the sidecar, e.g. ``match_clean_prob``),
``none`` and ``filter`` weight each pair's InfoNCE by it, as OSA does with
its weight: any method's score can weight training.

``--task classify`` trains a linear head on the frozen image tower with
MixFix on CLIPCleaner selections (or plain CE on all labels with
``--method none``).

This module is the entry point (:func:`train`) and keeps the names other
code imports from it; the parts live beside it: :mod:`~cleaner.train.config`
(settings and validation), :mod:`~cleaner.train.data` (decoded shards),
:mod:`~cleaner.train.sidecar` (checking and joining the sidecar),
:mod:`~cleaner.train.run` (shared setup), :mod:`~cleaner.train.model`,
:mod:`~cleaner.train.objectives` and :mod:`~cleaner.train.pairs` (pair
training), :mod:`~cleaner.train.classify` (MixFix) and
:mod:`~cleaner.train.metrics` (retrieval metrics).
"""

from __future__ import annotations

from cleaner.train.classify import train_classifier
from cleaner.train.config import CLASSIFY_METHODS, PAIR_METHODS, TrainConfig, validate
from cleaner.train.data import Split, load_split
from cleaner.train.metrics import retrieval_metrics
from cleaner.train.model import Model, embed_split, param_groups
from cleaner.train.pairs import train_pairs
from cleaner.train.sidecar import join_sidecar, read_train_sidecar

__all__ = [
    "CLASSIFY_METHODS",
    "PAIR_METHODS",
    "Model",
    "Split",
    "TrainConfig",
    "embed_split",
    "join_sidecar",
    "load_split",
    "param_groups",
    "read_train_sidecar",
    "retrieval_metrics",
    "train",
    "train_classifier",
]


def train(cfg: TrainConfig) -> list[dict]:
    """Run training; return the per-epoch metrics (also in ``out/metrics.json``)."""
    validate(cfg)
    if cfg.task == "classify":
        return train_classifier(cfg)
    return train_pairs(cfg)
