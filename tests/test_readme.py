"""The README's examples, run on the demo's data: each does what it says.

Every fenced ``bash`` and ``python`` block of README.md is read from the
file (so a README edit is tested without touching this file) and run in
README order on what ``nclean demo`` makes -- 600 shapes-world pairs, 40% of
them with a shuffled caption, whose ``.json`` members carry the truth --
scored with the demo's pre-trained estimator, every command at its own
defaults. Each selection an example makes must be mostly clean: >= 90% of
the samples it keeps have their own caption; for a weighting, >= 90% of the
weight mass sits on such samples. A score command's sidecar (the demo's
included) is held to the same bar for every method's declared keep rule (the
rule ``nclean score`` counts with) and for OSA's weights, and each caption
method must also keep >= 90% of the clean pairs.

What the test changes in a command, and why (each must still be in the
README, so drift fails here):

- ``--model ViT-B-32 --pretrained ./vit_b_32-openai.pt`` -> the demo's
  estimator (ViT-B-32's weights come from the hub, which tests never reach);
- the brace range ``{00000..00099}`` -> the demo's shards;
- the weights snippet's ``.to_tuple(...)`` also takes ``__key__``, to look
  each sample's truth up.

A command marked before its block with ``<!-- not run by
tests/test_readme.py: `PREFIX` REASON -->`` is skipped with that reason.
Each block runs in a folder of its own, with the inputs (``shards/`` = the
demo's, clean ``test_shards/``, ``classes.txt``) and what earlier blocks
wrote (sidecars, embeddings). The demo's estimator is cached where ``make
demo`` keeps it (``.cache/nclean``, or ``$NCLEAN_CACHE``): the first run
pre-trains it (about two minutes of one core).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLEAN_SHARE = 0.9
SKIP_MARK = re.compile(r"<!-- not run by tests/test_readme\.py: `([^`]+)` (.+?) -->", re.S)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MODEL_ARGS = "--model ViT-B-32 --pretrained ./vit_b_32-openai.pt"
BRACES = "{00000..00099}"
TO_TUPLE = '.to_tuple("jpg", "txt", "__weight__")'
# outputs of one block that later blocks read (each block runs in its own folder)
SHARED = ("weights.parquet", "selections.parquet", "embeddings")


@dataclass
class Block:  # a fenced block of the README
    lang: str
    line: int
    text: str
    skips: dict[str, str] = field(default_factory=dict)  # command prefix -> reason

    def commands(self) -> list[str]:
        """The block's commands: continuation lines joined, comment lines dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [c for c in joined.splitlines() if c.strip() and not c.lstrip().startswith("#")]

    def skip_reason(self, command: str) -> str | None:
        return next((why for pre, why in self.skips.items() if command.startswith(pre)), None)


@functools.cache
def readme_blocks() -> tuple[Block, ...]:
    """The README's bash and python blocks, read once per session (an edit
    made while the tests run does not shift them)."""
    text = README.read_text()
    blocks, pos = [], 0
    for m in FENCE.finditer(text):
        if m.group(1) not in ("bash", "python"):
            continue
        marks = SKIP_MARK.findall(text, pos, m.start())
        line = text.count("\n", 0, m.start()) + 1
        blocks.append(
            Block(m.group(1), line, m.group(2), {p: " ".join(w.split()) for p, w in marks})
        )
        pos = m.end()
    return tuple(blocks)


def _cases() -> list:
    cases = []
    for i, block in enumerate(readme_blocks()):
        if block.lang == "python":
            cases.append(pytest.param(i, None, id=f"L{block.line}-python"))
        for cmd in block.commands() if block.lang == "bash" else []:
            cases.append(pytest.param(i, cmd, id=f"L{block.line}-{' '.join(cmd.split()[:2])}"))
    return cases


# -- the truth and the checks --------------------------------------------------


def truth(shard_dir: Path) -> dict[str, dict]:
    """key -> the generator's .json (``clean``, ``label``, ``true_label``)."""
    out = {}
    for tar in sorted(Path(shard_dir).glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    try:
                        doc = json.loads(tf.extractfile(m).read())
                    except ValueError:  # a planted corrupt member: not a pair with a truth
                        continue
                    if "planted" not in doc:
                        out[m.name.rsplit("/", 1)[-1].split(".", 1)[0]] = doc
    return out


def clean_share(keys, weights, clean: dict[str, bool]) -> float:
    """Share of the weight (1 per key for a selection) on clean pairs; planted samples are not clean."""
    w = np.asarray(weights, dtype=float)
    good = np.array([clean.get(k, False) for k in keys], dtype=bool)
    assert w.sum() > 0, "selects nothing"
    return float(w[good].sum() / w.sum())


def kept_share(keys, keep, clean: dict[str, bool]) -> float:
    """Share of the clean pairs that ``keep`` keeps."""
    good = np.array([clean.get(k, False) for k in keys], dtype=bool)
    return float(np.asarray(keep, dtype=bool)[good].mean())


def check_sidecar(path: Path, facts: dict) -> dict[str, float]:
    """Every method's keep rule (clean share of what it keeps, and of the
    clean pairs, the share kept) and OSA's weights on a score command's output."""
    from cleaner.io.sidecar import read_sidecar
    from cleaner.methods import catalog
    from cleaner.train.expressions import evaluate_table

    table, meta = read_sidecar(path)
    table = table.filter(np.asarray(table.column("status").to_pylist()) == "ok")
    keys = table.column("key").to_pylist()
    shares = {}
    for name in meta["methods"]:
        rule = catalog.get(name).keep_where(meta["params"].get(name) or {})
        clean = facts["label_clean"] if name == "clipcleaner" else facts["clean"]
        if rule:
            keep = evaluate_table(table, rule, True)
            shares[f"{name}: {rule}"] = clean_share(keys, keep, clean)
            if name != "clipcleaner":  # and it cleans by dropping noise, not clean pairs
                shares[f"{name}: clean pairs kept"] = kept_share(keys, keep, clean)
    for column in ("osa_weight", "osa_weight_norm"):
        if column in table.column_names:
            weights = evaluate_table(table, column, True)
            shares[column] = clean_share(keys, weights, facts["clean"])
    return shares


def check_filtered(out: Path, facts: dict) -> dict[str, float]:
    """The samples ``nclean filter`` wrote, by the truth in their .json members."""
    keys = []  # the uid in the .json: upsampled copies have new keys but the same member
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            docs = [tf.extractfile(m).read() for m in tf if m.name.endswith(".json")]
            keys += [json.loads(doc).get("uid", "") for doc in docs]
    assert keys, f"{out} holds no samples"
    share = clean_share(keys, np.ones(len(keys)), facts["clean"])
    return {f"{out.name}/ ({len(keys)} samples)": share}


def _opt(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def check_command(cmd: str, folder: Path, facts: dict) -> dict[str, float]:
    """What one command must have made, and the clean share of what it selects."""
    argv = shlex.split(cmd.split(" #", 1)[0])
    if argv[:1] != ["nclean"] or len(argv) < 2:
        return {}
    out = _opt(argv, "--out")
    verb = argv[1]
    if verb in ("score", "demo"):
        target = folder / out if verb == "score" else folder / out / "weights.parquet"
        return check_sidecar(target, facts)
    if verb == "filter":
        return check_filtered(folder / out, facts) if out else {}
    if verb == "report" and out:
        assert (folder / out / "index.html").stat().st_size > 0
    if verb == "embed":
        assert list((folder / out / "img_emb").glob("*.npy")), "no embeddings written"
    if verb == "train":
        assert json.loads((folder / out / "metrics.json").read_text())["epochs"]
        if _opt(argv, "--method") == "osa":  # the weight it trains with (--osa-form paper)
            shares = check_sidecar(folder / _opt(argv, "--sidecar"), facts)
            return {"train weight osa_weight": shares["osa_weight"]}
    return {}


# -- running the README ---------------------------------------------------------


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # `nclean` and `python` are this venv's
    cache = os.environ.get("NCLEAN_CACHE") or str(ROOT / ".cache" / "nclean")
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "HF_HUB_OFFLINE": "1", "NCLEAN_CACHE": cache}  # fmt: skip


def _bash(script: str, cwd: Path, timeout: int = 900) -> tuple[int, str]:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )  # fmt: skip
    return proc.returncode, proc.stdout


@dataclass
class Run:
    """Results of the whole README, by block index."""

    base: Path
    facts: dict
    rc: dict[int, tuple[int, str]] = field(default_factory=dict)
    folder: dict[int, Path] = field(default_factory=dict)
    python: dict[int, dict[str, float]] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)


def _run_demo(base: Path, blocks: tuple[Block, ...]) -> tuple[int, Path, tuple[int, str]]:
    """The README's ``nclean demo`` command, first: its data is every other block's input."""
    commands = [(i, c) for i, b in enumerate(blocks) for c in b.commands()]
    found = [(i, c) for i, c in commands if c.startswith("nclean demo")]
    assert len(found) == 1, f"README: expected one `nclean demo` command, found {found}"
    i, cmd = found[0]
    folder = base / f"block{i:02d}"
    folder.mkdir()
    rc = _bash(cmd, folder)
    assert rc[0] == 0, rc[1][-3000:]
    return i, folder, rc


def _inputs(base: Path, shard_dir: Path, facts: dict) -> None:
    """What the README assumes a user has: shards/, clean test_shards/, classes.txt."""
    from cleaner.worlds import shapes

    (base / "shards").symlink_to(shard_dir, target_is_directory=True)
    shapes.write_shards(shapes.generate(64, seed=11), base / "test_shards", shard_size=64)
    (base / "classes.txt").write_text("\n".join(shapes.SHAPES) + "\n")
    facts["urls"] = [str(p) for p in sorted(shard_dir.glob("*.tar"))]
    n = len(facts["urls"])
    facts["braces"] = f"{{00000..{n - 1:05d}}}" if n > 1 else "00000"


def _link(folder: Path, sources: dict[str, Path]) -> None:
    folder.mkdir()
    for name, src in sources.items():
        (folder / name).symlink_to(src, target_is_directory=src.is_dir())


def _python_block(block: Block, folder: Path, facts: dict) -> dict[str, float]:
    text = block.text
    if "from cleaner.train.weights import" in text:
        assert TO_TUPLE in text, f"README no longer has {TO_TUPLE!r}: update this test"
        text = text.replace(TO_TUPLE, TO_TUPLE.replace('("jpg"', '("__key__", "jpg"'))
    scope: dict = {"urls": facts["urls"]}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(text, f"README.md:{block.line}", "exec"), scope)
        return _python_selections(scope, facts)
    finally:
        os.chdir(cwd)


def _python_selections(scope: dict, facts: dict) -> dict[str, float]:
    """Clean share of every selection a snippet made: a dataset yields (key, ..., weight);
    a pandas frame with fewer rows than the sidecar is a selection."""
    import pandas as pd

    shares = {}
    if "ds" in scope:
        rows = list(scope["ds"])
        assert rows, "the dataset yields nothing"
        keys, weights = [r[0] for r in rows], [r[-1] for r in rows]
        shares["ds: kept samples"] = clean_share(keys, np.ones(len(rows)), facts["clean"])
        shares["ds: weight mass"] = clean_share(keys, weights, facts["clean"])
    frames = {k: v for k, v in scope.items() if isinstance(v, pd.DataFrame)}
    total = max((len(v) for v in frames.values()), default=0)
    for name, frame in frames.items():
        if len(frame) < total:
            shares[f"pandas {name}"] = clean_share(
                list(frame["key"]), np.ones(len(frame)), facts["clean"]
            )
    return shares


def _bash_block(block: Block, facts: dict) -> str:
    kept = [c for c in block.commands() if block.skip_reason(c) is None]
    script = "\n".join(kept)
    if MODEL_ARGS in script:
        script = script.replace(MODEL_ARGS, f"--pretrained {facts['ckpt']}")
    if BRACES in script:
        script = script.replace(BRACES, facts["braces"])
    return script


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory) -> Run:
    blocks = readme_blocks()
    base = tmp_path_factory.mktemp("readme")
    t0 = time.monotonic()
    demo_i, demo_folder, demo_rc = _run_demo(base, blocks)
    demo_out = demo_folder / "demo_out"
    facts = {"ckpt": json.loads((demo_out / "weights.estimator.json").read_text())["pretrained"]}
    docs = truth(demo_out / "shards")
    facts["clean"] = {k: bool(d["clean"]) for k, d in docs.items()}
    facts["label_clean"] = {k: d["label"] == d["true_label"] for k, d in docs.items()}
    _inputs(base, demo_out / "shards", facts)
    run = Run(base, facts, rc={demo_i: demo_rc}, folder={demo_i: demo_folder})
    run.seconds[demo_i] = time.monotonic() - t0
    sources = {n: base / n for n in ("shards", "test_shards", "classes.txt")}
    for i, block in enumerate(blocks):
        if i == demo_i:
            continue
        t0 = time.monotonic()
        folder = run.folder[i] = base / f"block{i:02d}"
        _link(folder, sources)
        if block.lang == "python":
            try:
                run.python[i] = _python_block(block, folder, facts)
                run.rc[i] = (0, "")
            except Exception:  # noqa: BLE001 - the snippet's failure is its test's, not the session's
                run.rc[i] = (1, traceback.format_exc())
        elif script := _bash_block(block, facts):
            run.rc[i] = _bash(script, folder)
        made = [n for n in SHARED if (folder / n).exists() and not (folder / n).is_symlink()]
        sources.update({n: folder / n for n in made})
        run.seconds[i] = time.monotonic() - t0
    timings = {f"README.md:{blocks[i].line}": round(t, 1) for i, t in sorted(run.seconds.items())}
    (base / "timings.json").write_text(json.dumps(timings, indent=1))  # where a slow CI run went
    return run


@pytest.mark.parametrize("index,command", _cases())
def test_readme_example(readme_run, index, command):
    block = readme_blocks()[index]
    if command is not None and (why := block.skip_reason(command)):
        pytest.skip(f"README marks it: {why}")
    rc, output = readme_run.rc.get(index, (0, ""))
    assert rc == 0, f"README.md:{block.line} exited {rc}\n{output[-4000:]}"
    if command is None:
        shares = readme_run.python[index]
        assert shares, f"README.md:{block.line}: the snippet selects nothing this test can check"
    else:
        shares = check_command(command, readme_run.folder[index], readme_run.facts)
    low = {what: round(share, 3) for what, share in shares.items() if share < CLEAN_SHARE}
    assert not low, f"README.md:{block.line} `{command or 'python'}` keeps noise: {low}"


def test_the_check_sees_noise(readme_run):
    """Guards the bar above: on the same sidecar, the pairs SDD drops are
    mostly noise and the check says so."""
    from cleaner.io.sidecar import read_sidecar
    from cleaner.train.expressions import evaluate_table

    demo = next(f for f in readme_run.folder.values() if (f / "demo_out").is_dir())
    table, _ = read_sidecar(demo / "demo_out" / "weights.parquet")
    table = table.filter(np.asarray(table.column("status").to_pylist()) == "ok")
    dropped = evaluate_table(table, "not sdd_keep", True)
    share = clean_share(table.column("key").to_pylist(), dropped, readme_run.facts["clean"])
    assert share < 0.2, share


def test_readme_substitutions_and_marks_still_apply():
    """Each change this test makes to a command, and each skip mark, still matches the README."""
    blocks = readme_blocks()
    text = "\n".join(b.text for b in blocks)
    for old in (MODEL_ARGS, BRACES, TO_TUPLE):
        assert old in text, f"README no longer has {old!r}: update tests/test_readme.py"
    for block in blocks:
        for prefix in block.skips:
            assert any(c.startswith(prefix) for c in block.commands()), (block.line, prefix)
    marks = sum(len(b.skips) for b in blocks)
    assert marks == len(SKIP_MARK.findall(README.read_text())), "a skip mark is not before a block"
    assert marks <= 6, "keep the README's untested commands few"


def test_make_demo_runs_the_readme_demo():
    """`make demo` is the README's `nclean demo` (tested above) with the repo's cache."""
    recipe = ROOT.joinpath("Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    demo = next(c for b in readme_blocks() for c in b.commands() if c.startswith("nclean demo"))
    assert f"$(BIN)/{demo} --cache-dir .cache/nclean" in recipe, recipe
