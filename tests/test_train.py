"""`nclean train`: every method trains end to end on generated shards."""

import json

import pytest
import torch
from conftest import TINY, run_cli

from cleaner import shapes
from cleaner.errors import InputError
from cleaner.train import TrainConfig, retrieval_metrics, train


@pytest.fixture(scope="module")
def scored(shard_dir, tiny_ckpt, tmp_path_factory):
    """A sidecar with permissive SDD/SPS thresholds, so a random estimator
    still leaves every method rows to train on."""
    out = tmp_path_factory.mktemp("train_sidecar") / "w.parquet"
    run_cli(
        "score",
        shard_dir,
        "--out",
        out,
        "--model",
        TINY,
        "--pretrained",
        tiny_ckpt,
        "--workers",
        "0",
        "--no-progress",
        "--beta-samples",
        "16",
        "--sdd-alpha",
        "-50",
        "--sdd-beta-c",
        "-20",
        "--sps-eps1",
        "0.6",
    )
    return out


@pytest.mark.parametrize(
    "method,extra",
    [
        ("none", {}),
        ("osa", {}),
        ("osa", {"osa_form": "code"}),
        ("sdd", {}),
        ("sps", {}),
        ("filter", {"where": "sdd_keep and osa_weight >= 0"}),
    ],
)
def test_pair_methods_train(method, extra, shard_dir, scored, tiny_ckpt, tmp_path):
    cfg = TrainConfig(
        shards=[str(shard_dir)],
        out=str(tmp_path / method),
        sidecar=str(scored),
        method=method,
        eval_shards=[str(shard_dir / "00000.tar")],
        model=TINY,
        pretrained=str(tiny_ckpt),
        batch_size=16,
        max_steps=2,
        progress=False,
        **extra,
    )
    before = {k: v.clone() for k, v in torch.load(tiny_ckpt).items()}
    history = train(cfg)
    assert history[-1]["steps"] == 2 and history[-1]["train_loss"] is not None
    assert {"i2t_R@1", "t2i_R@10", "rsum"} <= set(history[-1])
    saved = torch.load(tmp_path / method / "last.pt")
    assert any(
        not torch.equal(saved[k], before[k]) for k in before if k in saved
    )  # it learned something
    metrics = json.loads((tmp_path / method / "metrics.json").read_text())
    assert metrics["config"]["method"] == method


def test_step_budget_equalises_filtered_runs(shard_dir, scored, tiny_ckpt, tmp_path):
    """--steps: the full set and a filtered subset both make exactly the
    budgeted number of updates; the subset runs more epochs to get there."""
    import pyarrow.parquet as pq

    from cleaner.train import param_groups

    keys = pq.read_table(scored, columns=["key"])["key"].to_pylist()
    half = sorted(keys)[: len(keys) // 2]
    runs = {}
    for name, extra in {
        "all": {"method": "none"},
        "half": {"method": "filter", "where": f"key <= {half[-1]!r}"},
    }.items():
        cfg = TrainConfig(
            shards=[str(shard_dir)],
            out=str(tmp_path / name),
            sidecar=str(scored),
            model=TINY,
            pretrained=str(tiny_ckpt),
            batch_size=8,
            steps=10,
            progress=False,
            **extra,
        )
        runs[name] = train(cfg)
    for name, history in runs.items():
        assert history[-1]["steps"] == 10, name
    rows_all, rows_half = runs["all"][-1]["train_rows"], runs["half"][-1]["train_rows"]
    assert rows_half < rows_all
    assert len(runs["half"]) == -(-10 // (rows_half // 8))  # ceil(steps / steps per epoch)
    assert len(runs["half"]) > len(runs["all"])
    # open_clip's optimiser groups: the temperature and 1-d parameters are not decayed
    from cleaner.estimator import load_estimator

    net = load_estimator(TINY, str(tiny_ckpt), "cpu", precision="fp32").model.requires_grad_(True)
    groups = param_groups(net, 0.2)
    no_decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.2
    assert id(net.logit_scale) in no_decay
    assert all(p.ndim >= 2 for p in groups[1]["params"])


def test_train_cli_and_mismatched_sidecar(shard_dir, scored, tiny_ckpt, tmp_path):
    proc = run_cli(
        "train",
        shard_dir,
        "--sidecar",
        scored,
        "--method",
        "osa",
        "--max-steps",
        "1",
        "--batch-size",
        "16",
        "--model",
        TINY,
        "--pretrained",
        tiny_ckpt,
        "--out",
        tmp_path / "r",
        "--no-progress",
    )
    assert "trained 1 epoch" in proc.stderr
    other = tmp_path / "other"
    shapes.write_shards(shapes.generate(20, seed=99), other, shard_size=20)
    proc = run_cli(
        "train",
        other,
        "--sidecar",
        scored,
        "--method",
        "osa",
        "--max-steps",
        "1",
        "--model",
        TINY,
        "--pretrained",
        tiny_ckpt,
        "--out",
        tmp_path / "r2",
        "--no-progress",
        check=False,
    )
    assert proc.returncode == 3 and "20 of 20 training samples have no row" in proc.stderr


def test_retrieval_metrics_hand_case():
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])
    m = retrieval_metrics(img, txt)
    assert m["i2t_R@1"] == pytest.approx(100 / 3) and m["t2i_R@1"] == pytest.approx(100 / 3)
    assert m["i2t_R@5"] == 100 and m["rsum"] == pytest.approx(2 * (100 / 3 + 100 + 100))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_ckpt):
    root = tmp_path_factory.mktemp("cls")
    data = shapes.generate(120, seed=4)
    noisy, _ = shapes.add_label_noise(data, 0.3, seed=4)
    shapes.write_shards(noisy, root / "train", shard_size=60)
    shapes.write_shards(shapes.generate(40, seed=5), root / "test", shard_size=40)
    (root / "classes.txt").write_text("\n".join(shapes.SHAPES))
    run_cli(
        "score",
        root / "train",
        "--methods",
        "clipcleaner",
        "--classes",
        root / "classes.txt",
        "--folds",
        "2",
        "--out",
        root / "sel.parquet",
        "--model",
        TINY,
        "--pretrained",
        tiny_ckpt,
        "--no-progress",
        "--workers",
        "0",
    )
    return root


@pytest.mark.parametrize("method", ["none", "mixfix"])
def test_classify(method, labelled, tiny_ckpt, tmp_path):
    cfg = TrainConfig(
        shards=[str(labelled / "train")],
        out=str(tmp_path),
        sidecar=str(labelled / "sel.parquet"),
        method=method,
        task="classify",
        classes=str(labelled / "classes.txt"),
        eval_shards=[str(labelled / "test")],
        model=TINY,
        pretrained=str(tiny_ckpt),
        epochs=2,
        batch_size=16,
        lr=1e-2,
        progress=False,
        theta_r=0.3,
        theta_r2=0.4,
    )
    history = train(cfg)
    assert len(history) == 2 and 0 <= history[-1]["accuracy"] <= 100
    if method == "mixfix":
        assert set(history[-1]["mixfix"]) == {"absorbed", "relabelled", "dropped"}
        assert history[0]["train_rows"] <= 120


def test_nothing_selected_is_clear(shard_dir, scored, tiny_ckpt, tmp_path):
    cfg = TrainConfig(
        shards=[str(shard_dir)],
        out=str(tmp_path),
        sidecar=str(scored),
        method="filter",
        where="osa_weight > 5",
        model=TINY,
        pretrained=str(tiny_ckpt),
        progress=False,
    )
    with pytest.raises(InputError, match="training rows"):
        train(cfg)
