"""The trainer's weights come from the sidecar's own rules (issue 15).

- OSA's per-batch form (``--osa-form code``) uses the weight curve the sidecar
  was scored with: ``monotone`` on a ``--thresholds auto`` sidecar (the batch's
  best pairs held at the peak), the paper's curve on a ``paper`` one (the
  batch's best pair weighted 0). The weights checked are the ones the loss
  receives, against the formula computed here from the sidecar's cosines.
- ``weight=EXPR`` (``--method none|filter``) trains with the expression's
  value per row as OSA-style loss weights, and refuses negative ones.
"""

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli, tiny_args

from cleaner.errors import ConfigError
from cleaner.methods import losses as L
from cleaner.train.config import TrainConfig
from cleaner.train.model import Model
from cleaner.train.objectives import PairObjective
from cleaner.train.run import load_inputs
from cleaner.train.trainer import train


@pytest.fixture(scope="module")
def sidecars(shard_dir, tiny_ckpt, tmp_path_factory):
    """The same shards scored with paper and with auto thresholds (real model, real shards)."""
    root = tmp_path_factory.mktemp("train_forms")
    out = {}
    for mode in ("paper", "auto"):
        out[mode] = root / f"{mode}.parquet"
        # auto maps beta itself; paper estimates it from 16 noise inputs
        beta = ["--beta-samples", "16"] if mode == "paper" else []
        run_cli(
            "score", shard_dir, "--out", out[mode], *tiny_args(tiny_ckpt),
            "--methods", "osa,sdd", *beta, "--thresholds", mode,
        )  # fmt: skip
    return out


def _objective(cfg: TrainConfig) -> PairObjective:
    inputs = load_inputs(cfg)
    return PairObjective(cfg, Model(inputs.est), inputs.split, inputs.side, inputs.meta)


def _cfg(shard_dir, tiny_ckpt, tmp_path, sidecar, **kw) -> TrainConfig:
    return TrainConfig(
        shards=[str(shard_dir)], out=str(tmp_path / "run"), sidecar=str(sidecar), model=TINY,
        pretrained=str(tiny_ckpt), batch_size=16, max_steps=1, progress=False, **kw,
    )  # fmt: skip


def _loss_weights(obj: PairObjective, idx: np.ndarray, monkeypatch) -> np.ndarray:
    """The weights the objective hands to the weighted loss for batch ``idx``."""
    seen = []
    real = L.osa_loss

    def spy(per, w):
        seen.append(w.detach().cpu().numpy().copy())
        return real(per, w)

    monkeypatch.setattr(L, "osa_loss", spy)
    obj.loss(idx, 0, None)
    assert len(seen) == 1
    return seen[0]


def _code_form(cos: np.ndarray, beta: float, monotone: bool) -> np.ndarray:
    """The released per-batch form, computed here from the cosines."""
    d = cos.astype(np.float64) - beta
    x = d / d.max()
    if monotone:
        x = np.minimum(x, 2**-0.5)
    return np.where(d > 0, x * x * (1 - x * x), 0.0)


@pytest.mark.parametrize("mode,form", [("auto", "monotone"), ("paper", "paper")])
def test_code_form_uses_the_sidecars_curve(mode, form, sidecars, shard_dir, tiny_ckpt, tmp_path,
                                           monkeypatch):  # fmt: skip
    cfg = _cfg(shard_dir, tiny_ckpt, tmp_path, sidecars[mode], method="osa", osa_form="code")
    obj = _objective(cfg)
    assert obj.meta["params"]["osa"]["form"] == form
    beta = float(obj.meta["beta"]["value"])
    cos = obj.side["cosine"].to_numpy(np.float64)
    ok = np.flatnonzero(obj.side["status"].eq("ok").to_numpy(bool) & (cos > beta))
    # a batch of pairs above the boundary, so both curves have work to do
    idx = ok[np.argsort(-cos[ok])][:8]
    used = _loss_weights(obj, idx, monkeypatch)
    np.testing.assert_allclose(used, _code_form(cos[idx], beta, form == "monotone"), atol=1e-6)
    best = int(np.argmax(cos[idx]))
    if form == "monotone":  # the batch's best pair is held at the peak, never below a worse one
        assert used[best] == pytest.approx(0.25, abs=1e-6)
        order = np.argsort(cos[idx])
        assert np.all(np.diff(used[order]) >= -1e-7)
    else:  # the paper's curve weights the batch's best pair 0
        assert used[best] == pytest.approx(0.0, abs=1e-7)


def test_column_forms_read_the_sidecars_weights(sidecars, shard_dir, tiny_ckpt, tmp_path,
                                                monkeypatch):  # fmt: skip
    """``paper-norm`` trains with the sidecar's own ``osa_weight_norm``,
    whatever curve the sidecar was scored with."""
    cfg = _cfg(shard_dir, tiny_ckpt, tmp_path, sidecars["auto"], method="osa", osa_form="paper-norm")
    obj = _objective(cfg)
    idx = np.arange(10)
    used = _loss_weights(obj, idx, monkeypatch)
    np.testing.assert_allclose(used, obj.side["osa_weight_norm"].to_numpy(np.float64)[idx], atol=1e-7)


def test_weight_expression_is_what_the_loss_gets(sidecars, shard_dir, tiny_ckpt, tmp_path,
                                                 monkeypatch):  # fmt: skip
    expr = "osa_weight_norm * 2 + sdd_keep"
    cfg = _cfg(shard_dir, tiny_ckpt, tmp_path, sidecars["auto"], method="none", weight=expr)
    obj = _objective(cfg)
    side = obj.side
    ok = np.flatnonzero(side["status"].eq("ok").to_numpy(bool))
    idx = ok[:12]
    used = _loss_weights(obj, idx, monkeypatch)
    expected = 2 * side["osa_weight_norm"].to_numpy(np.float64) + side["sdd_keep"].to_numpy(float)
    np.testing.assert_allclose(used, expected[idx], rtol=1e-6)
    assert len(set(np.round(used, 6))) > 1  # not a constant: the rows' own values
    # and it trains end to end
    history = train(cfg)
    assert history[-1]["steps"] == 1 and np.isfinite(history[-1]["train_loss"])


@pytest.mark.parametrize(
    "kw,words",
    [
        ({"method": "none", "weight": "cosine - 2"}, "negative"),
        ({"method": "none", "weight": "no_such_column"}, "--weight"),
        ({"method": "osa", "weight": "cosine"}, "only used with --method none or filter"),
    ],
)
def test_weight_expression_refusals(kw, words, sidecars, shard_dir, tiny_ckpt, tmp_path):
    cfg = _cfg(shard_dir, tiny_ckpt, tmp_path, sidecars["auto"], **kw)
    with pytest.raises(ConfigError, match=words):
        train(cfg)
    assert not torch.cuda.is_initialized()  # nothing heavier was started
