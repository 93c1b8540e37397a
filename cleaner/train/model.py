"""The model being trained: input conversion, embedding a split, optimiser groups.

:class:`Model` wraps the estimator's open_clip network with its pixel
normalisation, :func:`embed_split` computes normalised embeddings of a whole
split (for evaluation, and the classifier's frozen features), and
:func:`param_groups` gives open_clip's weight-decay groups.

A module of its own because the pair objectives, the pair loop and the
classifier all use the same wrapper, and it holds no loop of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cleaner.train.data import Split


class Model:
    """The model being trained plus its input conversion."""

    def __init__(self, est):
        self.est = est
        self.net = est.model.train().requires_grad_(True)

    def pixels(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.est.normalise_uint8(images_uint8)

    def encode(self, net, images_uint8, tokens):
        img = net.encode_image(self.pixels(images_uint8))
        txt = net.encode_text(tokens.to(self.est.device))
        return img, txt, net.logit_scale.exp()

    def encode_fn(self):
        """For :func:`cleaner.methods.losses.siamese_significance` (works on copies)."""
        return lambda net, images, tokens: self.encode(net, images, tokens)


@torch.no_grad()
def embed_split(
    model: Model, split: Split, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised (image, text) embeddings of every sample of ``split``, on
    the CPU, computed in eval mode (the net's mode is restored after)."""
    net = model.net
    was_training = net.training
    net.eval()
    imgs, txts = [], []
    for s in range(0, len(split), batch_size):
        i, t, _ = model.encode(
            net, split.images[s : s + batch_size], split.tokens[s : s + batch_size]
        )
        imgs.append(F.normalize(i.float(), dim=-1).cpu())
        txts.append(F.normalize(t.float(), dim=-1).cpu())
    net.train(was_training)
    return torch.cat(imgs), torch.cat(txts)


def param_groups(net: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's optimiser groups: no weight decay on gains, biases and
    the temperature (1-d parameters and ``logit_scale``). Decaying
    ``logit_scale`` pulls CLIP's learned temperature multiplier towards 1
    every step, so it never grows to the 100 CLIP ends at; with it the
    cosine scale of a trained model drifts away from CLIP's (the published
    OSA/SDD thresholds are in CLIP's cosine units)."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_scale" in name or "bias" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]
