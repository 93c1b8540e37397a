"""How well a pre-trained shapes-world checkpoint knows its world (held-out metrics).

Zero-shot retrieval on held-out clean pairs and zero-shot shape
classification of single-object images, each with the checkpoint loaded the
way users load it. Kept apart from :mod:`cleaner.estimator.pretrain` (which
records these numbers next to the checkpoint it trains) because benchmarks
also use them on their own, and the training recipe reads better without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def shape_prompts() -> tuple[list[str], np.ndarray]:
    """Zero-shot prompts for the shape classes in the estimator's own words:
    "a large {colour} {shape}" for every colour, grouped by class
    (:data:`cleaner.worlds.shapes.SHAPES` order); returns (texts, class of each)."""
    from cleaner.worlds.shapes import COLOURS, SHAPES

    texts = [f"a large {c} {s}" for s in SHAPES for c in COLOURS]
    return texts, np.repeat(np.arange(len(SHAPES)), len(COLOURS))


def shape_zero_shot_accuracy(checkpoint: str | Path, model: str, n: int, seed: int) -> float:
    """Zero-shot shape accuracy (%) on ``n`` clean single-object images of the
    default domain: CLIPCleaner's zero-shot rule (sum over a class's
    prompts of exp(cos / 0.07)) with :func:`shape_prompts`."""
    import torch

    from cleaner.estimator.model import load_estimator
    from cleaner.methods.clipcleaner.scorer import zero_shot_probs
    from cleaner.worlds import shapes

    est = load_estimator(model, str(checkpoint), "cpu", precision="fp32")
    samples = shapes.generate(n, seed=seed, max_objects=1)
    pixels = torch.stack(
        [torch.from_numpy(np.array(est.pil_transform(s["image"]))) for s in samples]
    )
    image = torch.cat(
        [est.encode_images(est.normalise_uint8(pixels[i : i + 256])) for i in range(0, n, 256)]
    ).numpy()
    texts, cop = shape_prompts()
    prompt = est.encode_text(torch.as_tensor(est.tokenizer(texts))).numpy()
    pred = zero_shot_probs(image, prompt, cop, n_classes=len(shapes.SHAPES)).argmax(1)
    return float(100 * np.mean(pred == np.array([s["label"] for s in samples])))


def held_out_retrieval(checkpoint: str | Path, model: str, shard_dir: str | Path) -> dict:
    """Zero-shot R@1/5/10 both ways on the (clean) pairs of ``shard_dir``,
    with the checkpoint loaded the way users load it (:func:`load_estimator`)."""
    import torch

    from cleaner.estimator.model import load_estimator
    from cleaner.io.decode import SampleSpec
    from cleaner.train.trainer import load_split, retrieval_metrics

    est = load_estimator(model, str(checkpoint), "cpu", precision="fp32")
    split = load_split([str(shard_dir)], est, SampleSpec(), workers=0)
    imgs, txts = [], []
    for s in range(0, len(split), 256):
        imgs.append(est.encode_images(est.normalise_uint8(split.images[s : s + 256])))
        txts.append(est.encode_text(split.tokens[s : s + 256]))
    metrics = retrieval_metrics(torch.cat(imgs), torch.cat(txts))
    metrics["n"] = len(split)
    return metrics
