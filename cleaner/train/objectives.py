"""The pair-training methods: each turns a batch of row indices into a loss.

:class:`PairObjective` picks the rows an epoch walks over (every scorable
pair, the ``--where`` rows, SDD's kept rows or SPS's reliable rows) and
computes a batch's loss per METHODS.md: plain symmetric InfoNCE, OSA's
weighted form, SDD's ``w_con x w_sig`` (with a siamese step on the memory-bank
pairs the sidecar names) or SPS's sum over reliable, quasi-clean and noisy
batches.

A module of its own because this is where the methods differ; the loop that
drives it (:mod:`cleaner.train.pairs`) is the same for all of them.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from cleaner.errors import ConfigError
from cleaner.methods import losses as L
from cleaner.train.config import PAIR_METHODS, TrainConfig
from cleaner.train.data import Split
from cleaner.train.model import Model, param_groups
from cleaner.train.sidecar import checked_weights, expression_weights, osa_form_of, where_mask


class PairObjective:
    """Chooses the rows an epoch walks over and the loss of a batch."""

    def __init__(self, cfg: TrainConfig, model: Model, split: Split, side, meta: dict):
        self.cfg, self.model, self.split, self.side, self.meta = cfg, model, split, side, meta
        m = cfg.method
        if m != "none" and side is None:
            raise ConfigError(f"--method {m} needs --sidecar")
        self.rows = self._select_rows()
        if len(self.rows) < 2:
            raise ConfigError(
                f"--method {m}: only {len(self.rows)} training rows selected; nothing to train on"
                + (f" (--where {cfg.where!r})" if m == "filter" else "")
            )
        self.weights = self._checked_weights()
        self.rng = np.random.default_rng(cfg.seed + 1)

    def _select_rows(self) -> np.ndarray:
        """The rows an epoch walks over; also sets what the method keeps beside."""
        cfg, side, split, m = self.cfg, self.side, self.split, self.cfg.method
        if m in ("none", "osa"):
            return np.arange(len(split))
        if m == "filter":
            if not cfg.where:
                raise ConfigError("--method filter needs --where EXPR")
            return np.flatnonzero(where_mask(side, cfg.where))
        if m == "sdd":
            rows = np.flatnonzero(side["sdd_keep"].fillna(False).to_numpy(bool))
            self.key_pos = {k: i for i, k in enumerate(split.keys)}
            # one persistent siamese module, refreshed from the model every step
            # (cheaper than a deep copy per step; same semantics)
            self.siamese = copy.deepcopy(self.model.net)
            return rows
        if m == "sps":
            part = side["sps_partition"].fillna("").to_numpy(object)
            self.reliable = np.flatnonzero(part == "reliable")
            self.quasi = np.flatnonzero(part == "quasi")
            self.noisy = np.flatnonzero(part == "noisy")
            self.key_pos = {k: i for i, k in enumerate(split.keys)}
            return self.reliable
        raise ConfigError(f"unknown --method {m!r}; choose from {', '.join(PAIR_METHODS)}")

    def _checked_weights(self) -> dict[str, np.ndarray]:
        """The sidecar numbers the method trains with, checked once up front
        (:func:`~cleaner.train.sidecar.checked_weights`): never NaN."""
        cfg, side, m = self.cfg, self.side, self.cfg.method
        if m in ("none", "filter") and cfg.weight:
            return {"w": expression_weights(side, cfg.weight, self.rows, m)}
        if m == "osa" and cfg.osa_form == "code":
            beta = (self.meta.get("beta") or {}).get("value")
            if not isinstance(beta, (int, float)) or not np.isfinite(beta):
                raise ConfigError(
                    f"--osa-form code: beta in {cfg.sidecar} is {beta!r}, not a number"
                )
            # the curve the sidecar was scored with (auto: monotone), so the
            # per-batch form never weights a pair below a noisier one there
            self.osa_curve = osa_form_of(self.meta, cfg.sidecar)
            ok = side["status"].eq("ok").to_numpy(bool) if "status" in side else None
            cos = checked_weights(side, "cosine", self.rows, m, negative_ok=True)
            return {"cosine": cos, "ok": np.ones(len(cos), bool) if ok is None else ok}
        if m == "osa":
            col = "osa_weight_norm" if cfg.osa_form == "paper-norm" else "osa_weight"
            return {"w": checked_weights(side, col, self.rows, m)}
        if m == "sdd":
            return {"w_con": checked_weights(side, "sdd_w_con", self.rows, m)}
        if m == "sps":
            proxied = self.noisy[
                [isinstance(k, str) for k in side["sps_proxy_key"].to_numpy(object)[self.noisy]]
            ]
            return {
                "soft": checked_weights(side, "sps_soft_label", self.quasi, m),
                "proxy": checked_weights(side, "sps_proxy_label", proxied, m),
            }
        return {}

    def batch(self, idx: np.ndarray):
        return self.split.images[idx], self.split.tokens[idx]

    def loss(self, idx: np.ndarray, epoch: int, optimizer) -> tuple[torch.Tensor, dict]:
        """The batch's loss and what to log about it (mean weights, SPS parts);
        a loss that is not finite stops the run (ConfigError) before any step on it."""
        value, logs = self._loss(idx, epoch, optimizer)
        if not bool(torch.isfinite(value.detach())):
            raise ConfigError(
                f"--method {self.cfg.method}: the training loss became {float(value)} at epoch "
                f"{epoch}; nothing was trained on it -- lower --lr, or check the sidecar"
            )
        return value, logs

    def _loss(self, idx: np.ndarray, epoch: int, optimizer) -> tuple[torch.Tensor, dict]:
        m = self.cfg.method
        if m == "sps":
            return self._sps(idx, epoch)
        images, tokens = self.batch(idx)
        img, txt, scale = self.model.encode(self.model.net, images, tokens)
        if m in ("none", "filter"):
            per = L.symmetric_infonce(img, txt, scale)
            if "w" in self.weights:  # --weight: OSA's weighted mean, any expression's weights
                w = torch.as_tensor(self.weights["w"][idx]).to(per.device)
                return L.osa_loss(per, w), {"mean_weight": float(w.mean())}
            return per.mean(), {}
        if m == "osa":
            return self._osa(idx, img, txt, scale)
        return self._sdd(idx, images, tokens, img, txt, scale, optimizer)

    def _osa(self, idx: np.ndarray, img, txt, scale) -> tuple[torch.Tensor, dict]:
        per = L.symmetric_infonce(img, txt, scale)
        if self.cfg.osa_form == "code":
            cos = torch.as_tensor(self.weights["cosine"][idx])
            w = L.osa_weight_code(cos, float(self.meta["beta"]["value"]), form=self.osa_curve)
            w = w * torch.as_tensor(self.weights["ok"][idx])  # unscored rows: weight 0
        else:
            w = torch.as_tensor(self.weights["w"][idx])
        w = w.to(per.device)
        return L.osa_loss(per, w), {"mean_weight": float(w.mean())}

    def _sdd(
        self, idx: np.ndarray, images, tokens, img, txt, scale, optimizer
    ) -> tuple[torch.Tensor, dict]:
        w_con = torch.as_tensor(self.weights["w_con"][idx]).to(img.device)
        mb_i = self._positions(self.side["sdd_mb_image_key"].to_numpy(object)[idx], idx)
        mb_t = self._positions(self.side["sdd_mb_text_key"].to_numpy(object)[idx], idx)
        w_sig = L.siamese_significance(
            self.model.net,
            lambda siamese: torch.optim.AdamW(
                param_groups(siamese, self.cfg.weight_decay),
                lr=optimizer.param_groups[0]["lr"],
                betas=(0.9, 0.98),
                eps=1e-6,
            ),
            images,
            tokens,
            w_con,
            self.split.images[mb_i],
            self.split.tokens[mb_i],
            self.model.encode_fn(),
            mb_t2i_images=self.split.images[mb_t],
            mb_t2i_texts=self.split.tokens[mb_t],
            optimizer_state=optimizer.state_dict(),
            siamese=self.siamese,
        ).to(img.device)
        per = L.symmetric_infonce(img, txt, scale)
        return L.sdd_loss(per, w_con, w_sig), {
            "mean_w_sig": float(w_sig.mean()),
            "mean_w_con": float(w_con.mean()),
        }

    def _positions(self, keys: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        """Row positions of memory-bank/proxy keys; a sample without one uses
        itself (its w_sig ratio is then its own before/after)."""
        return np.array(
            [self.key_pos.get(k, f) if isinstance(k, str) else f for k, f in zip(keys, fallback)]
        )

    def _sps(self, idx: np.ndarray, epoch: int):
        net, cfg = self.model.net, self.cfg
        img, txt, scale = self.model.encode(net, *self.batch(idx))
        kw = {}
        if epoch >= cfg.sps_qc_from_epoch and len(self.quasi) >= 2:
            kw.update(self._sps_quasi(len(idx)))
        if epoch >= cfg.sps_noisy_from_epoch and len(self.noisy) >= 2:
            kw.update(self._sps_noisy(len(idx)))
        parts = L.sps_total(img, txt, scale, lambda1=cfg.sps_lambda1, lambda2=cfg.sps_lambda2, **kw)
        return parts["total"], {k: float(v.detach()) for k, v in parts.items() if k != "total"}

    def _sps_quasi(self, bs: int) -> dict:
        """A batch of quasi-clean pairs with their soft labels."""
        q = self.rng.choice(self.quasi, size=min(bs, len(self.quasi)), replace=False)
        qi, qt, _ = self.model.encode(self.model.net, *self.batch(q))
        labels = torch.as_tensor(self.weights["soft"][q])
        return {"qc_img": qi, "qc_txt": qt, "qc_labels": labels.to(qi.device)}

    def _sps_noisy(self, bs: int) -> dict:
        """A batch of noisy images with their proxy captions, or nothing when
        fewer than two of the drawn rows have a proxy."""
        net, side = self.model.net, self.side
        nz = self.rng.choice(self.noisy, size=min(bs, len(self.noisy)), replace=False)
        has_proxy = side["sps_proxy_key"].to_numpy(object)[nz]
        nz = nz[[isinstance(k, str) for k in has_proxy]]
        if len(nz) < 2:
            return {}
        proxy = self._positions(side["sps_proxy_key"].to_numpy(object)[nz], nz)
        ni = net.encode_image(self.model.pixels(self.split.images[nz]))
        pt = net.encode_text(self.split.tokens[proxy].to(self.model.est.device))
        labels = torch.as_tensor(self.weights["proxy"][nz]).to(ni.device)
        return {"noisy_img": ni, "proxy_txt": pt, "proxy_labels": labels}
