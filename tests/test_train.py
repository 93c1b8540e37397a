"""`nclean train`: every method trains end to end on generated shards."""

import json

import pytest
import torch
from conftest import TINY, run_cli, tiny_args

from cleaner.errors import ConfigError, InputError
from cleaner.train.trainer import TrainConfig, retrieval_metrics, train
from cleaner.train.weights import SidecarMismatchError
from cleaner.worlds import shapes


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
        *tiny_args(tiny_ckpt),
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

    from cleaner.train.trainer import param_groups

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
    from cleaner.estimator.model import load_estimator

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
    # a sidecar of other shards is the same mistake as in `nclean filter`: exit 2 there and here
    assert proc.returncode == SidecarMismatchError.exit_code == 2, proc.stderr
    assert "20 of 20 training samples have no row" in proc.stderr


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
        *tiny_args(tiny_ckpt),
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
    # the data is readable; the option selects nothing: a configuration error (exit 2)
    with pytest.raises(ConfigError, match="0 training rows selected"):
        train(cfg)
    assert not (tmp_path / "last.pt").exists()


def _cfg(shard_dir, scored, tiny_ckpt, out, **kw):
    base = dict(
        shards=[str(shard_dir)],
        out=str(out),
        sidecar=str(scored),
        model=TINY,
        pretrained=str(tiny_ckpt),
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def test_small_selection_keeps_last_checkpoint_only(shard_dir, scored, tiny_ckpt, tmp_path, capsys):
    """5 rows at batch 64 under a step budget run one short epoch per step:
    only last.pt (and metrics.json) by default, epoch_NNN.pt when asked, and
    one warning that the selection is smaller than a batch."""
    import pyarrow.parquet as pq

    five = sorted(pq.read_table(scored, columns=["key"])["key"].to_pylist())[4]
    where = f"status == 'ok' and key <= {five!r}"
    run = tmp_path / "default"
    history = train(
        _cfg(shard_dir, scored, tiny_ckpt, run, method="filter", where=where, batch_size=64, steps=4)
    )
    assert len(history) == 4 and history[-1]["steps"] == 4 and history[-1]["train_rows"] == 5
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "metrics.json"]
    assert torch.load(run / "last.pt")  # a loadable state dict
    err = capsys.readouterr().err
    assert err.count("5 rows selected, fewer than one batch of 64") == 1, err

    kept = tmp_path / "every"
    train(
        _cfg(shard_dir, scored, tiny_ckpt, kept, method="filter", where=where, batch_size=64,
             steps=2, save_every_epoch=True)
    )
    assert sorted(p.name for p in kept.iterdir()) == [
        "epoch_000.pt", "epoch_001.pt", "last.pt", "metrics.json"
    ]


def test_max_steps_caps_step_budget(shard_dir, scored, tiny_ckpt, tmp_path):
    history = train(
        _cfg(shard_dir, scored, tiny_ckpt, tmp_path, method="none", batch_size=16, steps=5, max_steps=2)
    )
    assert history[-1]["steps"] == 2


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"steps": -3}, "--steps"),
        ({"steps": 0}, "--steps"),
        ({"max_steps": 0}, "--max-steps"),
        ({"batch_size": 0}, "--batch-size"),
        ({"batch_size": -4}, "--batch-size"),
        ({"epochs": 0}, "--epochs"),
        ({"lr": 0.0}, "--lr"),
        ({"lr": -1.0}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"warmup_steps": -1}, "--warmup-steps"),
        ({"logit_scale": 0.0}, "logit_scale"),
        ({"logit_scale": 150.0}, "logit_scale"),
        ({"method": "osa", "where": "sdd_keep"}, "only used with --method filter"),
        ({"method": "none", "where": "sdd_keep"}, "only used with --method filter"),
        ({"method": "filter", "where": "nocol > 1"}, "unknown column 'nocol'"),
        ({"method": "filter", "where": "sps_partition"}, "gives text"),
        ({"method": "filter", "where": "osa_weight"}, "must be true/false"),
        ({"method": "filter", "where": "osa_weight >"}, "not valid"),
        ({"method": "osa", "task": "classify", "classes": "x.txt"}, "--task classify supports"),
    ],
)
def test_bad_settings_are_config_errors(bad, match, shard_dir, scored, tiny_ckpt, tmp_path):
    """Rejected up front: nothing loaded, no run folder made."""
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        train(_cfg(shard_dir, scored, tiny_ckpt, out, **bad))
    assert not out.exists()


def test_sidecar_without_method_columns(shard_dir, labelled, tiny_ckpt, tmp_path):
    """A CLIPCleaner sidecar cannot drive --method sdd: a clear ConfigError, not a KeyError."""
    with pytest.raises(ConfigError, match="needs sidecar column"):
        train(_cfg(shard_dir, labelled / "sel.parquet", tiny_ckpt, tmp_path / "r", method="sdd"))


@pytest.mark.parametrize("kind", ["missing", "not_parquet"])
def test_unreadable_sidecar_is_input_error(kind, shard_dir, tiny_ckpt, tmp_path):
    path = tmp_path / "nope.parquet" if kind == "missing" else tiny_ckpt
    with pytest.raises(InputError, match="--sidecar: cannot read sidecar"):
        train(_cfg(shard_dir, path, tiny_ckpt, tmp_path / "r", method="osa"))


def test_bad_train_options_exit_cleanly(shard_dir, scored, tiny_ckpt, tmp_path):
    """Through the CLI: one line, the documented exit code, no traceback."""
    common = ["--model", TINY, "--pretrained", tiny_ckpt, "--no-progress"]
    cases = [
        (["--steps", "0"], 2, "--steps must be"),
        (["--batch-size", "0"], 2, "--batch-size must be"),
        (["--sidecar", scored, "--method", "filter", "--where", "nocol > 1"], 2, "unknown column"),
        (["--sidecar", tmp_path / "missing.parquet", "--method", "osa"], 3, "cannot read sidecar"),
    ]
    for i, (args, code, text) in enumerate(cases):
        proc = run_cli("train", shard_dir, *args, *common, "--out", tmp_path / f"r{i}", check=False)
        assert proc.returncode == code, (args, proc.stderr)
        assert text in proc.stderr and "Traceback" not in proc.stderr
        assert "internal error" not in proc.stderr


def test_classify_step_budget(labelled, tiny_ckpt, tmp_path):
    """--steps drives the classifier too: exactly that many updates, over as
    many epochs as it takes; max_steps caps it."""
    base = dict(
        shards=[str(labelled / "train")],
        task="classify",
        classes=str(labelled / "classes.txt"),
        model=TINY,
        pretrained=str(tiny_ckpt),
        method="none",
        batch_size=16,
        lr=1e-2,
        progress=False,
    )
    history = train(TrainConfig(out=str(tmp_path / "a"), steps=20, **base))
    # 120 rows at batch 16: 8 updates per epoch, so 20 steps take 3 epochs
    assert history[-1]["steps"] == 20 and len(history) == 3
    history = train(TrainConfig(out=str(tmp_path / "b"), steps=20, max_steps=5, **base))
    assert history[-1]["steps"] == 5 and len(history) == 1
