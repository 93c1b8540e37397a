"""Retrieval metrics on held-out pairs: R@1/5/10 both ways and rSum.

A module of its own because the pair loop reports these per epoch and the
pretraining script evaluates checkpoints with them, without either needing
the other.
"""

from __future__ import annotations

import torch


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
    """R@1/5/10 (in %) both ways and rSum, pair i <-> i."""
    sim = img @ txt.T
    n = sim.shape[0]
    target = torch.arange(n)
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        rank = (s > s[target, target][:, None]).sum(dim=1)  # how many beat the true partner
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = float((rank < k).float().mean() * 100)
    out["rsum"] = sum(v for k, v in out.items() if "_R@" in k)
    return out
