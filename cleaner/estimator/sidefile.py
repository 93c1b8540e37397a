"""Which open_clip model a local checkpoint was made as, from the files beside it.

A ``.pt`` state dict does not say its architecture, and open_clip cannot
guess it: loaded into the wrong model it only fails with a wall of size
mismatches. nclean's own checkpoints leave a JSON beside them that names the
model, so ``--model`` can be left out for them (:func:`checkpoint_model`);
``<checkpoint>.estimator.json`` with ``{"model": "<name>"}`` does the same
for anyone's checkpoint. Kept apart from :mod:`cleaner.estimator.model` so
reading the side files needs neither torch nor open_clip.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Side file anyone can write beside a checkpoint: {"model": "<open_clip name>"}.
SIDE_SUFFIX = ".estimator.json"


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _side_file_model(ckpt: Path, side: Path) -> str | None:
    """The model ``side`` says ``ckpt`` was made as, if it speaks of ``ckpt``."""
    doc = _read_json(side) if side.is_file() else None
    if doc is None:
        return None
    if side.name == "metrics.json":  # nclean train's run folder: last.pt, epoch_NNN.pt
        config = doc.get("config")
        if not isinstance(config, dict) or config.get("task", "pairs") != "pairs":
            return None
        doc = config
    elif side.name == "weights.estimator.json":  # nclean demo: the checkpoint it scored with
        if Path(str(doc.get("pretrained", ""))).name != ckpt.name:
            return None
    elif "checkpoint" in doc and doc["checkpoint"] != ckpt.name:  # the pre-training's <stem>.json
        return None
    model = doc.get("model")
    return model if isinstance(model, str) and model else None


def checkpoint_model(pretrained: str | None) -> tuple[str, Path] | None:
    """(model name, side file) for a local checkpoint, or None when no side file names one.

    Looked for beside the checkpoint, first found wins: ``<checkpoint>.estimator.json``
    (``{"model": ...}``, for your own checkpoints); ``<stem>.json`` with a ``model``
    (the demo estimator's pre-training); ``weights.estimator.json`` naming the
    checkpoint (``nclean demo --random-estimator``); ``metrics.json`` of an
    ``nclean train`` run (``last.pt``, ``epoch_NNN.pt``).
    """
    if not pretrained or pretrained.lower() == "none" or not Path(pretrained).is_file():
        return None
    ckpt = Path(pretrained)
    sides = [ckpt.with_name(ckpt.name + SIDE_SUFFIX), ckpt.with_suffix(".json")]
    sides += [ckpt.with_name("weights.estimator.json")]
    if ckpt.name == "last.pt" or (ckpt.name.startswith("epoch_") and ckpt.suffix == ".pt"):
        sides.append(ckpt.with_name("metrics.json"))
    for side in sides:
        model = _side_file_model(ckpt, side)
        if model is not None:
            return model, side
    return None


def file_digest(path: str | Path, limit: int = 1 << 22) -> str:
    """A cheap identity for a checkpoint: sha1 of size + first/last 4 MiB."""
    path = Path(path)
    h = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(limit))
        if path.stat().st_size > limit:
            fh.seek(-limit, 2)
            h.update(fh.read(limit))
    return h.hexdigest()[:16]


__all__ = ["SIDE_SUFFIX", "checkpoint_model", "file_digest"]
