"""`nclean demo` into an existing folder: new data settings regenerate the
shards (and their verdicts), the same settings reuse them, bad settings are
a one-line ConfigError."""

import json

import pytest
from conftest import run_cli

from cleaner.errors import ConfigError
from cleaner.worlds import demo
from cleaner.worlds.demo import SETTINGS_FILE, _truth, run_demo


def _run(out, samples, noise):
    return run_demo(out, samples=samples, noise=noise, progress=False, random_estimator=True)


def _shuffled(shard_dir):
    return sum(not clean for clean in _truth(shard_dir).values())


def test_rerun_with_other_settings_regenerates(tmp_path):
    out = tmp_path / "demo"
    first = _run(out, 60, 0.4)
    shard_dir = out / "shards"
    assert len(_truth(shard_dir)) == 60 and _shuffled(shard_dir) == 24
    planted = first["rows"] - 60  # the corrupt samples planted on top

    second = _run(out, 30, 0.1)
    assert len(_truth(shard_dir)) == 30 and _shuffled(shard_dir) == 3
    # the sidecar describes the new shards only (no stale parts or embeddings)
    assert second["rows"] == 30 + planted
    settings = json.loads((shard_dir / SETTINGS_FILE).read_text())
    assert settings["samples"] == 30 and settings["noise"] == 0.1
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp folders left

    # same settings again: the shards are reused, not rewritten
    before = {p.name: p.stat().st_mtime_ns for p in shard_dir.iterdir()}
    third = _run(out, 30, 0.1)
    assert {p.name: p.stat().st_mtime_ns for p in shard_dir.iterdir()} == before
    assert third["rows"] == second["rows"]


def test_shards_without_settings_are_regenerated(tmp_path):
    """Shards from before settings were stored cannot be trusted: regenerate."""
    out = tmp_path / "demo"
    _run(out, 20, 0.0)
    (out / "shards" / SETTINGS_FILE).unlink()
    assert _run(out, 20, 0.0)["rows"] > 20
    assert (out / "shards" / SETTINGS_FILE).exists()


def test_interrupted_regeneration_keeps_old_shards(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    _run(out, 20, 0.0)
    shard_dir = out / "shards"
    before = sorted(p.name for p in shard_dir.iterdir())

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo.shapes, "write_shards", boom)
    with pytest.raises(KeyboardInterrupt):
        _run(out, 30, 0.1)
    assert sorted(p.name for p in shard_dir.iterdir()) == before
    assert json.loads((shard_dir / SETTINGS_FILE).read_text())["samples"] == 20
    assert (out / "weights.parquet").exists()  # nothing removed before the new shards exist
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "samples,noise,match",
    [
        (0, 0.4, "--samples"),
        (-5, 0.4, "--samples"),
        (60, 1.0, "--noise"),
        (60, 1.5, "--noise"),
        (60, -0.1, "--noise"),
        (60, float("nan"), "--noise"),
        (30, 0.03, "single caption"),  # round(0.9) = 1 caption cannot be shuffled
    ],
)
def test_bad_demo_settings_are_config_errors(samples, noise, match, tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(ConfigError, match=match):
        _run(out, samples, noise)
    assert not out.exists()


def test_bad_demo_settings_exit_2(tmp_path):
    proc = run_cli(
        "demo", "--out", tmp_path / "d", "--noise", "1", "--random-estimator", "--no-progress",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--noise must be a fraction in [0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


def test_rerun_with_other_estimator_rescores(tmp_path, monkeypatch):
    """--random-estimator first, then the pre-trained one: the embedding
    cache of the first must not block the second (demo has no --overwrite)."""
    from cleaner.estimator import pretrain
    from cleaner.estimator.model import save_random_checkpoint

    out = tmp_path / "demo"
    _run(out, 20, 0.0)
    other = save_random_checkpoint("nclean-tiny", tmp_path / "other.pt", seed=7)
    monkeypatch.setattr(pretrain, "DEFAULT_MODEL", "nclean-tiny")
    asked = []
    monkeypatch.setattr(pretrain, "pretrained_estimator", lambda *a, **k: asked.append(k) or other)
    held = {"i2t_R@1": 0.0, "t2i_R@1": 0.0}
    monkeypatch.setattr(pretrain, "estimator_info", lambda ckpt: {"heldout": held})
    report = run_demo(out, samples=20, noise=0.0, progress=False, random_estimator=False)
    assert report["rows"] > 20
    # the demo's own (smaller) recipe, not the benchmarks' default
    assert asked and {k: asked[0].get(k) for k in demo.DEMO_RECIPE} == demo.DEMO_RECIPE
    assert json.loads((out / "weights.estimator.json").read_text())["pretrained"] == str(other)
