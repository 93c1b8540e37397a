"""open_clip's own trainer on ``nclean filter`` output: the README recipe, run.

The README's "Train with open_clip after nclean" block is read from the
README and run in bash as written, with webdataset 0.2.86 first on the path
(what ``pip install 'open_clip_torch[training]'`` brings in) and a few
substitutions that make it small: a random-initialised ``nclean-tiny`` model
given to open_clip as a ``local-dir:`` config, one epoch of two batches, no
loader workers, CPU. It runs twice: on the ``--where`` output as written and
on ``--upsample`` output. A run must end with open_clip's epoch checkpoint
and its training log.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WDS_LEGACY
from packaging.requirements import Requirement
from test_weights import sidecar_for

from cleaner.estimator.model import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
HEADING = "### Train with open_clip after nclean"
WHERE = '--where "sdd_keep and osa_weight > 0"'
UPSAMPLE = "--where \"status == 'ok'\" --upsample osa_weight_norm"
BATCH = 64

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("open_clip_train") is None,
    reason="open_clip_train ships with open_clip_torch 3.x",
)


def readme_recipe() -> str:
    """The first bash block under the recipe's heading."""
    text = (ROOT / "README.md").read_text()
    assert HEADING in text, f"README lacks {HEADING!r}"
    block = re.search(r"```bash\n(.*?)```", text.split(HEADING, 1)[1], flags=re.S)
    assert block, "no bash block under the recipe heading"
    return block.group(1)


def small(recipe: str, model_dir: Path, upsample: bool) -> str:
    """The recipe made tiny; every replaced piece must be in it, so drift fails here."""
    lines = recipe.splitlines()
    assert lines[0] == "pip install 'open_clip_torch[training]'", lines[0]
    # the install is what wds_legacy_env stands for; check that it does
    check = f"python -c \"import webdataset as w; assert w.__version__ == '{WDS_LEGACY}'\""
    script = "\n".join([check, *lines[1:]])
    swaps = {
        "python -m open_clip_train.main": "python -m open_clip_train.main --device cpu --precision fp32",
        "--model ViT-B-32": f"--model local-dir:{model_dir}",
        "--batch-size 256": f"--batch-size {BATCH}",
        "--epochs 10": "--epochs 1",
        "--workers 4": "--workers 0",
    }
    if upsample:
        swaps[WHERE] = UPSAMPLE
    for old, new in swaps.items():
        assert script.count(old) == 1, f"README recipe no longer has {old!r}"
        script = script.replace(old, new)
    return script


def test_training_extra_pins_the_legacy_line():
    reqs = [Requirement(r) for r in importlib.metadata.requires("open_clip_torch") or []]
    pins = [r for r in reqs if r.name == "webdataset" and r.marker and "training" in str(r.marker)]
    assert pins, "open_clip_torch[training] no longer requires webdataset"
    assert WDS_LEGACY in pins[0].specifier and "1.0.2" not in pins[0].specifier


@pytest.fixture(scope="module")
def workdir(shard_dir, tmp_path_factory) -> Path:
    """A folder laid out as the recipe expects: shards/, weights.parquet, the tiny model."""
    work = tmp_path_factory.mktemp("openclip")
    (work / "shards").symlink_to(shard_dir, target_is_directory=True)
    sidecar_for(shard_dir, work / "weights.parquet", seed=7)
    cfg = json.loads((CONFIG_DIR / "nclean-tiny.json").read_text())
    (work / "tiny").mkdir()
    (work / "tiny" / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return work


@pytest.fixture(scope="module")
def recipe_runs(workdir, wds_legacy_env, tmp_path_factory) -> dict[bool, tuple[Path, str]]:
    """Both variants, started together (each is mostly imports): upsample -> (folder, output)."""
    env = {
        **wds_legacy_env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
    }
    procs = {}
    for upsample in (False, True):
        run = tmp_path_factory.mktemp("upsample" if upsample else "where")
        for name in ("shards", "weights.parquet", "tiny"):
            (run / name).symlink_to(workdir / name)
        script = small(readme_recipe(), run / "tiny", upsample)
        cmd = ["bash", "-euo", "pipefail", "-c", script]
        procs[upsample] = (
            run,
            subprocess.Popen(
                cmd, cwd=run, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ),
        )
    done = {}
    for upsample, (run, proc) in procs.items():
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += "\n(killed after 300 s)"
        done[upsample] = (run, out if proc.returncode == 0 else f"exit {proc.returncode}\n{out}")
    return done


@pytest.mark.parametrize("upsample", [False, True], ids=["where", "upsample"])
def test_readme_recipe_trains_open_clip(recipe_runs, upsample):
    run, out = recipe_runs[upsample]
    assert not out.startswith("exit "), out[-5000:]
    stats = json.loads((run / "clean" / "stats.json").read_text())
    assert stats["written"] > BATCH and (stats["settings"]["upsample"] is not None) == upsample
    log = (run / "logs" / "nclean-clean" / "out.log").read_text()
    steps = math.ceil(stats["written"] / BATCH)
    assert f"Train Epoch: 0 [{steps * BATCH}/{steps * BATCH} (100%)]" in log, log[-2000:]
    assert (run / "logs" / "nclean-clean" / "checkpoints" / "epoch_1.pt").stat().st_size > 0
