"""What a newcomer hit on a fresh clone, each kept fixed.

- the methods description lives in the repository (docs/methods.md), not in
  a file outside the clone, and every "METHODS §n" the code cites exists;
- ``nclean --version``;
- progress bars written to a log are plain lines, not carriage-return floods;
- ``--model`` comes from the side file beside nclean's own checkpoints;
- the README's pandas snippet for the sidecar runs as written.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, cli_in_process

from cleaner import __version__, progress
from cleaner.errors import ConfigError
from cleaner.estimator.model import DEFAULT_MODEL, load_estimator, model_for
from cleaner.estimator.sidefile import checkpoint_model
from cleaner.progress import progress_bar

ROOT = Path(__file__).resolve().parents[1]
METHODS_DOC = ROOT / "docs" / "methods.md"
OUTSIDE = "../" + "shared"  # split so this file does not match itself


# -- the methods description ---------------------------------------------------


def _text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    for pkg in ("cleaner", "pipelines"):
        files += sorted((ROOT / pkg).rglob("*.py"))
    files += sorted((ROOT / "benchmarks").glob("*.py"))
    files += sorted(p for p in (ROOT / "scripts").glob("*") if p.is_file())
    return [p for p in files if p.is_file()]


def test_no_reference_outside_the_clone():
    hits = [str(p.relative_to(ROOT)) for p in _text_files() if OUTSIDE in p.read_text()]
    assert not hits, f"{OUTSIDE} is not in a clone; referenced by {hits}"


def test_readme_links_the_methods_doc():
    readme = (ROOT / "README.md").read_text()
    assert "](docs/methods.md)" in readme
    assert METHODS_DOC.is_file()


def test_methods_doc_cites_the_papers_and_names_the_columns():
    doc = METHODS_DOC.read_text()
    for cite in ("arXiv:2410.01944", "arXiv:2412.06172", "ACM MM", "IJCAI 2025", "AAAI"):
        assert cite in doc, cite
    for name in ("OSA", "SDD", "SPS", "CLIPCleaner"):
        assert re.search(rf"^## \d\. {name}\b", doc, re.M), name
    from cleaner.methods import catalog

    for method in ("osa", "sdd", "sps", "clipcleaner"):
        for field in catalog.get(method).fields:
            stem = re.sub(r"_(zs|ind)$", "_", field.name)  # per-estimator columns
            assert f"`{field.name}`" in doc or f"`{stem}*`" in doc, field.name


def test_every_cited_methods_section_exists():
    doc = METHODS_DOC.read_text()
    cited = set()
    for path in _text_files():
        for line in path.read_text().splitlines():
            if "METHODS" in line or "methods.md" in line:
                cited |= set(re.findall(r"§\s*(\d+(?:\.\d+)?)", line))
                cited |= set(re.findall(r"(?:METHODS|methods)\.md section (\d+(?:\.\d+)?)", line))
    assert cited, "expected the code to cite sections"
    missing = []
    for sec in sorted(cited):
        top = sec.split(".")[0]
        if not re.search(rf"^## {top}\. ", doc, re.M):
            missing.append(sec)
        elif "." in sec and f"**{sec} " not in doc:
            missing.append(sec)
    assert not missing, f"cited but not in docs/methods.md: {missing}"


def test_benchmarks_point_at_the_methods_doc():
    bare = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        if re.search(r"(?<!docs/)METHODS\.md", path.read_text()):
            bare.append(path.name)
    assert not bare, f"cite docs/methods.md, not METHODS.md: {bare}"


# -- nclean --version ----------------------------------------------------------


def test_version(monkeypatch, capsys):
    from cleaner.cli import main

    monkeypatch.setattr(sys, "argv", ["nclean", "--version"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out == f"nclean {__version__}\n"


# -- progress in logs ----------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_is_lines(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    log = io.StringIO()
    bar = progress_bar(total=50, desc="scan", unit="shard", file=log, leave=False)
    for _ in range(50):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) > 2
    assert "50/50" in lines[-1], lines[-1]  # the final state stays, leave=False or not
    assert len(set(lines)) == len(lines)


def test_progress_in_a_log_is_rate_limited():
    log = io.StringIO()
    bar = progress_bar(total=None, desc="embed", unit="sample", file=log, dynamic_ncols=True)
    t0 = time.monotonic()
    for _ in range(20_000):
        bar.update(1)
    bar.close()
    assert time.monotonic() - t0 < progress.LOG_INTERVAL_S  # else the bound below is loose
    lines = log.getvalue().splitlines()
    assert 1 <= len(lines) <= 3, lines  # the first, maybe one more, the last
    assert "20000" in lines[-1]


def test_progress_on_a_terminal_is_a_bar():
    term = _Terminal()
    bar = progress_bar(range(3), desc="x", file=term)
    list(bar)
    assert "\r" in term.getvalue()


def test_progress_disabled_writes_nothing():
    log = io.StringIO()
    list(progress_bar(range(3), file=log, disable=True))
    assert log.getvalue() == ""


def test_every_progress_bar_goes_through_the_helper():
    import ast

    direct = []
    for pkg in ("cleaner", "pipelines"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "progress.py" and path.parent.name == "cleaner":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                    owner = getattr(getattr(f, "value", None), "id", None)
                    if name == "tqdm" and (isinstance(f, ast.Name) or owner == "tqdm"):
                        direct.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not direct, f"use cleaner.progress.progress_bar: {direct}"


# -- --model from the checkpoint's side file ------------------------------------


def _ckpt(folder: Path, name: str = "model.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"not read by these tests")
    return path


def test_side_file_of_the_demo_estimator_pretraining(tmp_path):
    # what cleaner.estimator.pretrain writes: <stem>.pt and <stem>.json
    ckpt = _ckpt(tmp_path, "nclean-small-shapes-n1-r1.pt")
    info = {"checkpoint": ckpt.name, "model": "nclean-small", "heldout": {}}
    ckpt.with_suffix(".json").write_text(json.dumps(info))
    assert checkpoint_model(str(ckpt)) == ("nclean-small", ckpt.with_suffix(".json"))
    assert model_for(None, str(ckpt)) == "nclean-small"
    assert model_for("ViT-B-16", str(ckpt)) == "ViT-B-16"  # --model given wins


def test_side_file_of_nclean_demo(tmp_path):
    # nclean demo --random-estimator: out/tiny-random.pt + out/weights.estimator.json
    ckpt = _ckpt(tmp_path / "demo_out", "tiny-random.pt")
    side = ckpt.with_name("weights.estimator.json")
    side.write_text(json.dumps({"model": "nclean-tiny", "pretrained": "demo_out/tiny-random.pt"}))
    assert checkpoint_model(str(ckpt)) == ("nclean-tiny", side)
    # one that names another checkpoint says nothing about this one
    other = _ckpt(tmp_path / "demo_out", "other.pt")
    assert checkpoint_model(str(other)) is None


def test_side_file_of_nclean_train_and_your_own(tmp_path):
    run = tmp_path / "run"
    last = _ckpt(run, "last.pt")
    (run / "metrics.json").write_text(
        json.dumps({"config": {"model": "nclean-tiny", "task": "pairs"}, "epochs": []})
    )
    assert checkpoint_model(str(last))[0] == "nclean-tiny"
    assert checkpoint_model(str(_ckpt(run, "epoch_003.pt")))[0] == "nclean-tiny"
    mine = _ckpt(tmp_path, "mine.safetensors")
    Path(str(mine) + ".estimator.json").write_text(json.dumps({"model": "nclean-small"}))
    assert checkpoint_model(str(mine))[0] == "nclean-small"


def test_no_side_file_means_the_old_default(tmp_path):
    ckpt = _ckpt(tmp_path)
    # an open_clip model config beside the checkpoint is not a side file
    ckpt.with_suffix(".json").write_text(json.dumps({"embed_dim": 64, "vision_cfg": {}}))
    assert checkpoint_model(str(ckpt)) is None
    assert model_for(None, str(ckpt)) == DEFAULT_MODEL == "ViT-B-32"
    assert model_for(None, "openai") == DEFAULT_MODEL
    assert model_for(None, None) == DEFAULT_MODEL


def test_side_file_naming_an_unknown_model_is_a_config_error(tmp_path):
    ckpt = _ckpt(tmp_path)
    Path(str(ckpt) + ".estimator.json").write_text(json.dumps({"model": "no-such-model"}))
    with pytest.raises(ConfigError, match="names model 'no-such-model'.*--model"):
        model_for(None, str(ckpt))


def test_wrong_model_error_says_to_pass_model(tiny_ckpt):
    with pytest.raises(ConfigError, match="pass the one it was trained as with --model"):
        load_estimator("nclean-small", str(tiny_ckpt), "cpu", "fp32")


def test_embed_without_model_and_quiet_log(tiny_ckpt, shard_dir, tmp_path, monkeypatch, capsys):
    """The demo's layout: no --model, progress on, stderr a log (not a TTY)."""
    demo = tmp_path / "demo_out"
    demo.mkdir()
    ckpt = demo / "tiny-random.pt"
    shutil.copyfile(tiny_ckpt, ckpt)
    (demo / "weights.estimator.json").write_text(
        json.dumps({"model": TINY, "pretrained": str(ckpt)})
    )
    shards = tmp_path / "shards"
    shards.mkdir()
    first = sorted(shard_dir.glob("*.tar"))[0]
    shutil.copyfile(first, shards / first.name)
    out = tmp_path / "emb"
    code, err = cli_in_process(
        monkeypatch, capsys, "embed", shards, "--out", out, "--pretrained", ckpt, "--workers", "0"
    )
    assert code == 0, err
    assert "\r" not in err
    assert re.search(r"^embed: \d+sample", err, re.M), err
    meta = pq.read_schema(next((out / "metadata").glob("*.parquet"))).metadata
    identity = json.loads(meta[b"nclean_embed"])["identity"]
    assert identity["estimator"]["model"] == TINY


# -- the sidecar in pandas -------------------------------------------------------


def _small_sidecar(path: Path) -> None:
    """Three rows: two scored (one in SDD's clean set), one decode error."""
    from cleaner.io import schema as S
    from cleaner.io.sidecar import atomic_write_table, build_part

    methods = ["osa", "sdd"]
    meta = pa.table(
        {
            "key": ["a", "b", "c"],
            "shard": ["s.tar"] * 3,
            "index": [5, 6, 7],  # not 0..2, so w.index and w["index"] differ
            "uid": [None, None, None],
            "status": ["ok", "decode_error", "ok"],
            "error": [None, "broken jpeg", None],
        }
    )
    ok = np.array([True, False, True])
    f32 = np.float32
    columns = {
        "cosine": np.array([0.4, 0.25], f32),
        "osa_weight": np.array([0.05, 0.01], f32),
        "osa_weight_norm": np.array([0.3, 0.07], f32),
        "sdd_keep": np.array([True, True]),
        "sdd_w_con": np.array([0.9, 0.4], f32),
        "sdd_clean": np.array([True, False]),
        "sdd_mb_image_key": np.array(["c", "a"], object),
        "sdd_mb_text_key": np.array(["c", "a"], object),
    }
    metadata = {"schema_version": S.SCHEMA_VERSION, "methods": methods}
    atomic_write_table(build_part(meta, ok, columns, methods, metadata), path)


def _readme_pandas_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The sidecar", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    snippet = next(b for b in blocks if "read_parquet" in b)
    assert "dtype_backend" in snippet and 'w["index"]' in snippet
    return snippet


def test_readme_pandas_snippet_runs(tmp_path, monkeypatch):
    _small_sidecar(tmp_path / "weights.parquet")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_readme_pandas_snippet(), scope)
    w = scope["w"]
    assert list(scope["keep"]["key"]) == ["a", "c"]
    assert list(scope["clean_set"]["key"]) == ["a"]  # the null of row b is not selected
    assert list(scope["positions"]) == [5, 6, 7]
    assert list(w.index) == [0, 1, 2]  # the trap the README warns about
    assert str(w["sdd_clean"].dtype) == "boolean"


def test_default_pandas_read_is_the_trap_documented(tmp_path):
    import pandas as pd

    _small_sidecar(tmp_path / "weights.parquet")
    w = pd.read_parquet(tmp_path / "weights.parquet")
    assert w["sdd_clean"].dtype == object  # why the README reads with nullable dtypes
    with pytest.raises((ValueError, TypeError)):
        w[w["sdd_clean"]]
