"""The thin trainer: fine-tune an open_clip model on shards using a sidecar.

A readable loop, no framework, to show the verdicts paying off. It holds
the (small) training set in memory, decoded at the model's input size,
because SDD's memory bank and SPS's proxies need random access to *other*
samples by key. Web-scale trainers should use :mod:`cleaner.train.weights`
instead.

Methods (``--method``), each per METHODS.md:

- ``none``    plain symmetric InfoNCE on every scorable pair;
- ``filter``  plain InfoNCE on the rows matching ``--where``;
- ``osa``     per-sample InfoNCE x OSA weight, batch mean (paper weight from
  the sidecar, or the released code's per-batch form);
- ``sdd``     rows with ``sdd_keep``; loss x w_con x w_sig, w_sig from a
  siamese step on the memory-bank pairs the sidecar names;
- ``sps``     reliable / quasi-clean / noisy batches: L_re + L_qc + L_n +
  lambda1 L_cro + lambda2 L_met, with soft labels and proxy captions.

``--task classify`` trains a linear head on the frozen image tower with
MixFix on CLIPCleaner selections (or plain CE on all labels with
``--method none``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cleaner.errors import ConfigError, InputError
from cleaner.estimator.embed import iter_prepared
from cleaner.estimator.model import load_estimator
from cleaner.io.atomic import atomic_path, write_json
from cleaner.io.decode import SampleSpec
from cleaner.io.shards import expand_shards
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


# ---------------------------------------------------------------------------
# data


@dataclass
class Split:
    """Decoded samples held in memory, in shard order."""

    shards: np.ndarray  # object: shard file name
    keys: np.ndarray  # object
    images: torch.Tensor  # uint8 (n, H, W, 3)
    tokens: torch.Tensor  # int64 (n, L)
    labels: np.ndarray  # int64, -1 where missing
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def load_split(
    shard_specs: list[str], est, spec: SampleSpec, workers: int, batch_size: int = 256
) -> Split:
    """Decode every scorable sample of the shards (bad ones are counted, not
    kept: a trainer cannot use them). Uses the embedding stage's decoder."""
    paths = expand_shards(shard_specs)
    shards, keys, imgs, toks, labels = [], [], [], [], []
    skipped: dict[str, int] = {}
    for batch in iter_prepared(paths, spec, est, batch_size, workers):
        if batch.fatal:
            raise InputError(batch.fatal)
        ok = [r for r in batch.rows if r.status == "ok"]
        for r in batch.rows:
            if r.status != "ok":
                skipped[r.status] = skipped.get(r.status, 0) + 1
        name = paths[batch.shard_pos].name
        shards += [name] * len(ok)
        keys += [r.key for r in ok]
        labels += [(-1 if r.label is None else r.label) for r in ok]
        if ok:
            imgs.append(batch.images)
            toks.append(batch.tokens)
    if not keys:
        raise InputError(f"no usable sample in {', '.join(shard_specs)}")
    return Split(
        shards=np.array(shards, dtype=object),
        keys=np.array(keys, dtype=object),
        images=torch.cat(imgs),
        tokens=torch.cat(toks),
        labels=np.array(labels, dtype=np.int64),
        skipped=skipped,
    )


def read_train_sidecar(sidecar_path: str):
    """``(table, meta)`` of a sidecar, or the one-line InputError (exit 3)
    ``nclean filter`` gives for a missing, non-Parquet or invalid sidecar."""
    import pyarrow as pa

    from cleaner.io.schema import SchemaError
    from cleaner.io.sidecar import read_sidecar

    try:
        return read_sidecar(sidecar_path)
    except SchemaError as exc:
        raise InputError(f"--sidecar: {exc}") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"--sidecar: cannot read sidecar ({exc})") from None


def join_sidecar(split: Split, sidecar_path: str, loaded=None):
    """Sidecar rows aligned to ``split`` (a pandas frame), or a clear error
    with counts when the sidecar does not describe these shards
    (:class:`~cleaner.train.weights.SidecarMismatchError`, exit 2, as in
    ``nclean filter``). ``loaded``: ``(table, meta)`` already read."""
    from cleaner.train.weights import SidecarMismatchError

    table, meta = loaded if loaded is not None else read_train_sidecar(sidecar_path)
    frame = table.to_pandas()
    frame.index = list(zip(frame["shard"], frame["key"]))
    wanted = list(zip(split.shards, split.keys))
    missing = [w for w in wanted if w not in frame.index]
    if missing:
        shards = sorted({s for s, _ in missing})
        raise SidecarMismatchError(
            f"{len(missing)} of {len(wanted)} training samples have no row in {sidecar_path} "
            f"(shards: {', '.join(shards[:5])}{' ...' if len(shards) > 5 else ''}); "
            "was the sidecar made from these shards?"
        )
    return frame.loc[wanted].reset_index(drop=True), meta


# ---------------------------------------------------------------------------
# model helpers


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


def _lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------
# the pair-training methods: each turns a batch of row indices into a loss


class PairObjective:
    """Chooses the rows an epoch walks over and the loss of a batch."""

    def __init__(self, cfg: TrainConfig, model: Model, split: Split, side, meta: dict):
        self.cfg, self.model, self.split, self.side, self.meta = cfg, model, split, side, meta
        m = cfg.method
        if m != "none" and side is None:
            raise ConfigError(f"--method {m} needs --sidecar")
        n = len(split)
        if m in ("none", "osa"):
            self.rows = np.arange(n)
        elif m == "filter":
            if not cfg.where:
                raise ConfigError("--method filter needs --where EXPR")
            self.rows = np.flatnonzero(_where(side, cfg.where))
        elif m == "sdd":
            self.rows = np.flatnonzero(side["sdd_keep"].fillna(False).to_numpy(bool))
            self.key_pos = {k: i for i, k in enumerate(split.keys)}
            # one persistent siamese module, refreshed from the model every step
            # (cheaper than a deep copy per step; same semantics)
            import copy

            self.siamese = copy.deepcopy(model.net)
        elif m == "sps":
            part = side["sps_partition"].fillna("").to_numpy(object)
            self.reliable = np.flatnonzero(part == "reliable")
            self.quasi = np.flatnonzero(part == "quasi")
            self.noisy = np.flatnonzero(part == "noisy")
            self.rows = self.reliable
            self.key_pos = {k: i for i, k in enumerate(split.keys)}
        else:
            raise ConfigError(f"unknown --method {m!r}; choose from {', '.join(PAIR_METHODS)}")
        if len(self.rows) < 2:
            raise ConfigError(
                f"--method {m}: only {len(self.rows)} training rows selected; nothing to train on"
                + (f" (--where {cfg.where!r})" if m == "filter" else "")
            )
        self.rng = np.random.default_rng(cfg.seed + 1)

    def batch(self, idx: np.ndarray):
        return self.split.images[idx], self.split.tokens[idx]

    def loss(self, idx: np.ndarray, epoch: int, optimizer) -> tuple[torch.Tensor, dict]:
        m = self.cfg.method
        net = self.model.net
        images, tokens = self.batch(idx)
        if m == "sps":
            return self._sps(idx, epoch)
        img, txt, scale = self.model.encode(net, images, tokens)
        if m in ("none", "filter"):
            per = L.symmetric_infonce(img, txt, scale)
            return per.mean(), {}
        if m == "osa":
            per = L.symmetric_infonce(img, txt, scale)
            if self.cfg.osa_form == "code":
                cos = torch.as_tensor(self.side["cosine"].to_numpy(np.float32)[idx])
                w = L.osa_weight_code(cos, float(self.meta["beta"]["value"]))
            else:
                col = "osa_weight_norm" if self.cfg.osa_form == "paper-norm" else "osa_weight"
                w = torch.as_tensor(self.side[col].to_numpy(np.float32)[idx])
            w = w.to(per.device)
            return L.osa_loss(per, w), {"mean_weight": float(w.mean())}
        # sdd
        w_con = torch.as_tensor(self.side["sdd_w_con"].fillna(0).to_numpy(np.float32)[idx]).to(
            img.device
        )
        mb_i = self._positions(self.side["sdd_mb_image_key"].to_numpy(object)[idx], idx)
        mb_t = self._positions(self.side["sdd_mb_text_key"].to_numpy(object)[idx], idx)
        w_sig = L.siamese_significance(
            net,
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
        net, cfg, side = self.model.net, self.cfg, self.side
        bs = len(idx)
        img, txt, scale = self.model.encode(net, *self.batch(idx))
        kw = {}
        if epoch >= cfg.sps_qc_from_epoch and len(self.quasi) >= 2:
            q = self.rng.choice(self.quasi, size=min(bs, len(self.quasi)), replace=False)
            qi, qt, _ = self.model.encode(net, *self.batch(q))
            kw.update(
                qc_img=qi,
                qc_txt=qt,
                qc_labels=torch.as_tensor(side["sps_soft_label"].to_numpy(np.float32)[q]).to(
                    qi.device
                ),
            )
        if epoch >= cfg.sps_noisy_from_epoch and len(self.noisy) >= 2:
            nz = self.rng.choice(self.noisy, size=min(bs, len(self.noisy)), replace=False)
            has_proxy = side["sps_proxy_key"].to_numpy(object)[nz]
            nz = nz[[isinstance(k, str) for k in has_proxy]]
            if len(nz) >= 2:
                proxy = self._positions(side["sps_proxy_key"].to_numpy(object)[nz], nz)
                ni = net.encode_image(self.model.pixels(self.split.images[nz]))
                pt = net.encode_text(self.split.tokens[proxy].to(self.model.est.device))
                labels = torch.as_tensor(
                    np.nan_to_num(side["sps_proxy_label"].to_numpy(np.float32)[nz])
                ).to(ni.device)
                kw.update(noisy_img=ni, proxy_txt=pt, proxy_labels=labels)
        parts = L.sps_total(img, txt, scale, lambda1=cfg.sps_lambda1, lambda2=cfg.sps_lambda2, **kw)
        return parts["total"], {k: float(v.detach()) for k, v in parts.items() if k != "total"}


def _where(side, expr: str) -> np.ndarray:
    """Keep mask of ``--where`` over sidecar rows (a pandas frame or a
    pyarrow table); bad expressions are a ConfigError (exit 2) as in
    ``nclean filter``: unknown columns, text or numeric results, syntax."""
    from cleaner.train.weights import evaluate

    try:
        value = evaluate(side, expr)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--where: {exc}") from None
    if value.dtype != bool:
        raise ConfigError(
            f"--where: a keep/drop expression must be true/false, {expr!r} is a number "
            f"(compare it, e.g. {expr} > 0)"
        )
    return value


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, not {value!r}")


def _validate(cfg: TrainConfig) -> None:
    """Reject settings that cannot work, before anything is loaded or written
    (ConfigError, exit 2: one line, never a traceback or a silent no-op)."""
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
    if cfg.where is not None and cfg.method != "filter":
        raise ConfigError("--where is only used with --method filter")
    if cfg.task == "pairs":
        if cfg.method == "filter" and not cfg.where:
            raise ConfigError("--method filter needs --where EXPR")
        if cfg.method != "none" and not cfg.sidecar:
            raise ConfigError(f"--method {cfg.method} needs --sidecar")
    else:
        if not cfg.classes:
            raise ConfigError("--task classify needs --classes")
        if cfg.method != "none" and not cfg.sidecar:
            raise ConfigError(f"--method {cfg.method} needs --sidecar with CLIPCleaner columns")


def _required_columns(cfg: TrainConfig) -> list[str]:
    """Sidecar columns the chosen method reads (``--where`` is checked on its own)."""
    if cfg.task == "classify":
        return ["cc_selected"] if cfg.method == "mixfix" or (cfg.method == "filter" and not cfg.where) else []
    if cfg.method == "osa":
        return [{"paper": "osa_weight", "paper-norm": "osa_weight_norm", "code": "cosine"}[cfg.osa_form]]
    if cfg.method == "sdd":
        return ["sdd_keep", "sdd_w_con", "sdd_mb_image_key", "sdd_mb_text_key"]
    if cfg.method == "sps":
        return ["sps_partition", "sps_soft_label", "sps_proxy_key", "sps_proxy_label"]
    return []


def _check_sidecar(cfg: TrainConfig, loaded) -> None:
    """Fail before decoding any shard: the method's columns must be there
    and ``--where`` must be a valid true/false expression over the sidecar."""
    table, meta = loaded
    absent = [c for c in _required_columns(cfg) if c not in table.column_names]
    if absent:
        raise ConfigError(
            f"--method {cfg.method} needs sidecar column(s) {', '.join(absent)}, which "
            f"{cfg.sidecar} lacks; score it with the method (nclean score --methods ...)"
        )
    if cfg.task == "pairs" and cfg.method == "osa" and cfg.osa_form == "code" and "beta" not in meta:
        raise ConfigError(f"--osa-form code needs beta in the metadata of {cfg.sidecar}")
    if cfg.method == "filter" and cfg.where:
        keep = _where(table, cfg.where)
        if "status" in table.column_names:  # the trainer only sees scorable samples
            import pyarrow.compute as pc

            ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
            keep &= ok.to_numpy(zero_copy_only=False).astype(bool)
        if keep.sum() < 2:  # fail before decoding the shards (checked again after the join)
            raise ConfigError(
                f"--method filter: only {int(keep.sum())} training rows selected; nothing to "
                f"train on (--where {cfg.where!r})"
            )


def _warn_small(n_rows: int, batch_size: int) -> None:
    if n_rows < batch_size:
        print(
            f"nclean: warning: {n_rows} rows selected, fewer than one batch of {batch_size}",
            file=sys.stderr,
            flush=True,
        )


# ---------------------------------------------------------------------------
# the loops


def _setup(cfg: TrainConfig):
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


def train(cfg: TrainConfig) -> list[dict]:
    """Run training; return the per-epoch metrics (also in ``out/metrics.json``)."""
    _validate(cfg)
    if cfg.task == "classify":
        return train_classifier(cfg)
    loaded = read_train_sidecar(cfg.sidecar) if cfg.sidecar else None
    if loaded is not None:
        _check_sidecar(cfg, loaded)
    est, spec, out = _setup(cfg)
    split = load_split(cfg.shards, est, spec, cfg.workers)
    side, meta = join_sidecar(split, cfg.sidecar, loaded) if loaded is not None else (None, {})
    del loaded
    evals = load_split(cfg.eval_shards, est, spec, cfg.workers) if cfg.eval_shards else None
    model = Model(est)
    if cfg.logit_scale is not None:
        with torch.no_grad():
            model.net.logit_scale.fill_(math.log(cfg.logit_scale))
        model.net.logit_scale.requires_grad_(False)
    objective = PairObjective(cfg, model, split, side, meta)
    optimizer = torch.optim.AdamW(
        param_groups(model.net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    _warn_small(len(objective.rows), cfg.batch_size)
    steps_per_epoch = max(1, len(objective.rows) // cfg.batch_size)
    epochs = cfg.epochs if cfg.steps is None else math.ceil(cfg.steps / steps_per_epoch)
    total = cfg.steps if cfg.steps is not None else steps_per_epoch * epochs
    if cfg.max_steps is not None:
        total = min(cfg.max_steps, total)
    history: list[dict] = []
    rng = np.random.default_rng(cfg.seed)
    step = 0
    bar = tqdm(
        total=total,
        desc=f"train {cfg.method}",
        unit="step",
        disable=not cfg.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for epoch in range(epochs):
        order = rng.permutation(objective.rows)
        losses = []
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            for g in optimizer.param_groups:
                g["lr"] = _lr_at(step, cfg, total)
            loss, info = objective.loss(idx, epoch, optimizer)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # CLIP keeps the temperature in a sane range
                model.net.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        record = {
            "epoch": epoch,
            "steps": step,
            "train_loss": float(np.mean(losses)) if losses else None,
            "train_rows": int(len(objective.rows)),
        }
        if evals is not None:
            record.update(retrieval_metrics(*embed_split(model, evals)))
        history.append(record)
        state = model.net.state_dict()
        if cfg.save_every_epoch:
            _atomic_save(state, out / f"epoch_{epoch:03d}.pt")
        _atomic_save(state, out / "last.pt")
        write_json(
            out / "metrics.json",
            {"config": asdict(cfg), "epochs": history, "skipped": split.skipped},
        )
        if step >= total:
            break
    bar.close()
    return history


# ---------------------------------------------------------------------------
# classification with MixFix


def train_classifier(cfg: TrainConfig) -> list[dict]:
    """A linear head on the frozen image tower (features computed once),
    trained with mixup CE and a class-balanced sampler; ``--method mixfix``
    starts from CLIPCleaner's selection and absorbs / relabels confident
    non-selected samples after each epoch (METHODS.md section 3.5)."""
    from cleaner.estimator.prompts import load_classes

    _validate(cfg)
    classes = load_classes(cfg.classes)
    k = len(classes)
    loaded = read_train_sidecar(cfg.sidecar) if cfg.sidecar else None
    if loaded is not None:
        _check_sidecar(cfg, loaded)
    est, spec, out = _setup(cfg)
    spec.n_classes = k
    split = load_split(cfg.shards, est, spec, cfg.workers)
    side, _ = join_sidecar(split, cfg.sidecar, loaded) if loaded is not None else (None, {})
    del loaded
    evals = load_split(cfg.eval_shards, est, spec, cfg.workers) if cfg.eval_shards else None
    model = Model(est)
    model.net.eval().requires_grad_(False)
    feats, _ = embed_split(model, split)
    eval_feats = embed_split(model, evals)[0] if evals is not None else None
    labels = torch.as_tensor(split.labels)
    if cfg.method == "none":
        selected = np.ones(len(split), bool)
    elif cfg.method in ("mixfix", "filter"):
        if side is None:
            raise ConfigError(f"--method {cfg.method} needs --sidecar with CLIPCleaner columns")
        selected = (
            _where(side, cfg.where)
            if cfg.method == "filter" and cfg.where
            else side["cc_selected"].fillna(False).to_numpy(bool)
        )
    else:
        raise ConfigError(f"--task classify supports --method {', '.join(CLASSIFY_METHODS)}")
    gen = torch.Generator().manual_seed(cfg.seed)
    head = torch.nn.Linear(feats.shape[1], k)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    use = torch.as_tensor(np.array(selected, dtype=bool))
    train_labels = labels.clone()
    history = []
    # --steps: as many epochs as the budget needs (MixFix changes the rows
    # per epoch, so epochs are not counted up front); --max-steps caps.
    budget = cfg.steps
    if cfg.max_steps is not None:
        budget = cfg.max_steps if budget is None else min(budget, cfg.max_steps)
    step, epoch = 0, 0
    while (cfg.steps is not None or epoch < cfg.epochs) and (budget is None or step < budget):
        rows = torch.nonzero(use).flatten()
        if len(rows) < 2:
            raise ConfigError(
                f"--method {cfg.method}: only {len(rows)} training rows selected"
                + (f" in epoch {epoch}" if epoch else "")
                + "; nothing to train on"
            )
        if epoch == 0:
            _warn_small(len(rows), cfg.batch_size)
        w = L.class_balanced_weights(train_labels[rows], k)
        sampler = torch.multinomial(w, num_samples=len(rows), replacement=True, generator=gen)
        order = rows[sampler]
        for s in range(0, len(order), cfg.batch_size):
            if budget is not None and step >= budget:
                break
            idx = order[s : s + cfg.batch_size]
            x = feats[idx]
            y = F.one_hot(train_labels[idx], k).float()
            xm, ym, _ = L.mixup(x, y, alpha=cfg.mixup_alpha, generator=gen)
            loss = L.mixup_cross_entropy(head(xm), ym)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        record = {"epoch": epoch, "steps": step, "train_rows": int(use.sum())}
        if cfg.method == "mixfix":
            with torch.no_grad():
                probs = torch.softmax(head(feats), dim=1)
            new_labels, use_mask, decision = L.mixfix_decisions(
                probs,
                labels,
                torch.as_tensor(np.array(selected, dtype=bool)),
                cfg.theta_r,
                cfg.theta_r2,
            )
            train_labels, use = torch.as_tensor(new_labels), torch.as_tensor(use_mask)
            record["mixfix"] = {
                name: int((torch.as_tensor(decision) == code).sum())
                for name, code in (
                    ("absorbed", L.MIXFIX_ABSORB),
                    ("relabelled", L.MIXFIX_RELABEL),
                    ("dropped", L.MIXFIX_DROP),
                )
            }
        if eval_feats is not None:
            with torch.no_grad():
                pred = head(eval_feats).argmax(1).numpy()
            valid = evals.labels >= 0
            record["accuracy"] = float((pred[valid] == evals.labels[valid]).mean() * 100)
        history.append(record)
        _atomic_save(head.state_dict(), out / "head_last.pt")
        write_json(out / "metrics.json", {"config": asdict(cfg), "epochs": history})
        epoch += 1
    return history
