"""nclean report: figures, page and text from a generated sidecar (fast, no model)."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pyarrow as pa
import pytest
import typer
from PIL import Image

from cleaner.errors import ConfigError, InputError
from cleaner.io import schema as S
from cleaner.io import sidecar
from cleaner.methods.sdd.scorer import SDDScorer
from cleaner.methods.sps.scorer import SPSScorer
from cleaner.report.build import build_report, load_report_data, render_html, text_report

BETA = {
    "value": 0.1234,
    "std": 0.05,
    "se": 0.0007,
    "k": 5000,
    "n_pairs": 5000,
    "source": "shuffled",
    "seed": 0,
}
FAILED = {"decode_error": 3, "missing_text": 2}  # per shard 0; other shards are all ok
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _shard_rows(rng, n_ok: int, shard: int, failed: dict[str, int]):
    """Base columns plus each method's values for the ok rows of one shard."""
    statuses = ["ok"] * n_ok + [s for s, k in failed.items() for _ in range(k)]
    n = len(statuses)
    noisy = rng.random(n_ok) < 0.3
    cosine = np.where(noisy, rng.normal(0.10, 0.04, n_ok), rng.normal(0.30, 0.05, n_ok))
    loss = np.where(noisy, rng.normal(11.0, 1.5, n_ok), rng.normal(5.0, 1.0, n_ok))
    meta = pa.table(
        {
            "key": [f"k{shard}_{i:05d}" for i in range(n)],
            "shard": [f"{shard:05d}.tar"] * n,
            "index": np.arange(n, dtype=np.int64),
            "uid": pa.array([None] * n, pa.string()),
            "status": statuses,
            "error": [None if s == "ok" else "boom" for s in statuses],
        }
    )
    return meta, np.array([s == "ok" for s in statuses]), cosine, loss, noisy


def _columns(cosine, loss, noisy, sdd: SDDScorer, sps: SPSScorer, beta: float, rng) -> dict:
    """Method columns for the ok rows, consistent with the fitted parameters."""
    n = len(cosine)
    w = np.clip(cosine - beta, 0, None) ** 2 * 4  # shape is irrelevant here, zero below beta is not
    clean_prob = sps.clean_prob(loss)
    partition = np.where(
        clean_prob > 0.99, "reliable", np.where(clean_prob > 0.5, "quasi", "noisy")
    )
    label = rng.integers(0, 4, n)
    quality = np.where(noisy, rng.uniform(0.0, 0.4, n), rng.uniform(0.5, 1.0, n))
    cols = {
        "cosine": cosine,
        "osa_weight": w.astype(np.float32),
        "osa_weight_norm": (w / (4 / 27)).astype(np.float32),
        "sdd_keep": 100 * cosine > sdd.alpha,
        "sdd_w_con": rng.uniform(0, 1, n).astype(np.float32),
        "sdd_clean": 100 * cosine > sdd.beta_c,
        "sdd_mb_image_key": np.array([None] * n, dtype=object),
        "sdd_mb_text_key": np.array([None] * n, dtype=object),
        "sps_loss": loss,
        "sps_clean_prob": clean_prob,
        "sps_partition": partition.astype(object),
        "sps_proxy_key": np.array([None] * n, dtype=object),
        "sps_proxy_label": np.full(n, np.nan),
        "sps_soft_label": np.ones(n),
        "label": label,
        "cc_selected": quality > 0.5,
        "cc_label_quality": quality.astype(np.float32),
    }
    for est in ("zs", "ind"):
        cols[f"cc_pred_{est}"] = label
        cols[f"cc_p_label_{est}"] = quality
        cols[f"cc_consistency_{est}"] = quality > 0.5
        cols[f"cc_gmm_clean_prob_{est}"] = quality
    return cols


def write_sidecar(
    root,
    methods=("osa", "sdd", "sps", "clipcleaner"),
    shards=3,
    n_ok=200,
    schema_version=S.SCHEMA_VERSION,
    merged=True,
    seed=0,
):
    """A sidecar like nclean score writes: metadata from the real scorers' get_params().

    Returns the path (a .parquet file, or the parts folder when not ``merged``).
    """
    rng = np.random.default_rng(seed)
    blocks = [_shard_rows(rng, n_ok, s, FAILED if s == 0 else {}) for s in range(shards)]
    all_cos = np.concatenate([b[2] for b in blocks])
    all_loss = np.concatenate([b[3] for b in blocks])
    sdd, sps = SDDScorer().fit(all_cos), SPSScorer().fit(all_loss)
    methods = list(methods)
    params = {
        "osa": {"beta": BETA},
        "sdd": sdd.get_params(),
        "sps": sps.get_params(),
        "clipcleaner": {
            "method": "clipcleaner",
            "classes": ["circle", "square", "star", "heart"],
            "settings": {"combine": "intersection", "theta_cons": 0.8},
            "n_fit": 600,
        },
    }
    metadata = {
        "schema_version": schema_version,
        "nclean_version": "9.9.9-test",
        "methods": methods,
        "beta": BETA if "osa" in methods else None,
        "estimator": {
            "model": "nclean-tiny",
            "pretrained": "tiny.pt",
            "pretrained_digest": "abc123",
        },
        "params": {m: params[m] for m in methods},
        "neighbors": {"sdd_image": {"kind": "flat", "ntotal": 123, "recall_at_1": 0.987}},
        "settings": {
            "methods": methods,
            "seed": 0,
            "method": {"sdd_alpha": 20.0, "sps_eps1": 0.99, "cc_folds": 5, "fit_sample": 1000},
        },
        "argv": ["score", "shards/", "--out", "x.parquet"],
    }
    fields = {f.name for f in S.schema_for(methods)}
    parts_dir = root / "side.parts"
    parts_dir.mkdir(parents=True)
    parts = []
    for s, (meta, ok, cosine, loss, noisy) in enumerate(blocks):
        cols = {
            k: v
            for k, v in _columns(cosine, loss, noisy, sdd, sps, BETA["value"], rng).items()
            if k in fields
        }
        table = sidecar.build_part(meta, ok, cols, methods, metadata)
        parts.append(parts_dir / f"{s:05d}.parquet")
        sidecar.atomic_write_table(table, parts[-1])
    if not merged:
        return parts_dir
    sidecar.merge_parts(parts, root / "side.parquet", metadata)
    return root / "side.parquet"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return write_sidecar(tmp_path_factory.mktemp("side"))


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 100, (path, im.size)


def test_html_report_all_methods(full, tmp_path):
    index = build_report(full, tmp_path / "rep")
    assert index == tmp_path / "rep" / "index.html"
    page = index.read_text()
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert pngs == sorted(
        [
            "status.png",
            "cosine.png",
            "osa_weight.png",
            "sdd_w_con.png",
            "sps_loss.png",
            "sps_partition.png",
            "cc_label_quality.png",
            "shards.png",
        ]
    )
    for name in pngs:
        _assert_png(index.parent / name)
        assert f'src="{name}"' in page, name
    # the run's metadata
    assert "0.1234 ± 0.0007" in page and "9.9.9-test" in page and "nclean-tiny" in page
    assert "0.9870" in page  # neighbour recall@1
    # status counts (ok first, then failures) and the sample note
    assert re.search(r"<td>ok</td><td class=\"num\">600</td>", page)
    assert re.search(r"<td>decode_error</td><td class=\"num\">3</td>", page)
    assert re.search(r"<td>missing_text</td><td class=\"num\">2</td>", page)
    assert "use all 600 ok rows" in page
    for section in ("OSA", "SDD", "SPS", "CLIPCleaner"):
        assert f'href="#{section.lower()}"' in page
    # self-contained: no scripts, stylesheets or remote resources
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert not list(index.parent.glob(".*.tmp"))  # atomic writes leave no temp files
    csv_rows = (index.parent / "shards.csv").read_text().splitlines()
    # each method's kept count is by its own keep rule (the registry's keep_expr)
    assert csv_rows[0].startswith("shard,rows,ok,failed,osa keep,sdd keep,sdd clean set,sps keep")
    assert csv_rows[1].startswith("00000.tar,205,200,5,")


def test_counts_are_exact(full):
    d = load_report_data(full)
    t = pa.parquet.read_table(full).to_pandas()  # the small fixture fits in memory
    ok = t.status == "ok"
    assert d.n_rows == len(t) and d.status == t.status.value_counts().to_dict()
    beta = BETA["value"]
    assert d.rules["osa"] == f"cosine > {beta!r}"  # OSA's own rule, d > 0
    assert d.total("osa_kept") == int((ok & (t.cosine > beta)).sum())
    assert d.total("sdd_kept") == int(t.sdd_keep.sum())
    assert d.total("clipcleaner_kept") == int(t.cc_selected.sum())
    assert d.total("sps_kept") == int((ok & (t.sps_partition != "noisy")).sum())
    for p in ("reliable", "quasi", "noisy"):
        assert d.total(f"sps_{p}") == int((t.sps_partition == p).sum())
    assert d.mean("cosine") == pytest.approx(t.cosine[ok].mean(), rel=1e-6)
    assert d.shards == ["00000.tar", "00001.tar", "00002.tar"]


def test_text_report(full):
    text = text_report(full)
    assert re.search(r"^\s+ok\s+600\s+99\.2%$", text, re.M)
    assert re.search(r"^\s+decode_error\s+3\s+0\.5%$", text, re.M)
    assert "0.1234 ± 0.0007" in text
    d = load_report_data(full)
    assert re.search(rf"kept \(sdd_keep\)\s+{d.total('sdd_kept')}\s", text)
    for p in ("reliable", "quasi", "noisy"):
        assert re.search(rf"^\s+{p}\s+{d.total(f'sps_{p}')}\s", text, re.M)
    assert re.search(r"^\s+00000\.tar\s+205\s+200\s+5\s", text, re.M)  # per-shard table
    assert "CLIPCleaner" in text and "circle" in text


def test_only_present_methods(tmp_path):
    path = write_sidecar(tmp_path, methods=("osa",), shards=2, n_ok=50)
    index = build_report(path, tmp_path / "rep")
    page = index.read_text()
    assert sorted(p.name for p in index.parent.glob("*.png")) == [
        "cosine.png",
        "osa_weight.png",
        "shards.png",
        "status.png",
    ]
    assert 'id="sdd"' not in page and 'id="sps"' not in page and "sdd_alpha" not in page
    assert "SDD" not in text_report(path) and "SPS" not in text_report(path)


def test_sampled_histograms_and_parts_folder(tmp_path):
    parts = write_sidecar(tmp_path, merged=False, n_ok=300)
    d = load_report_data(parts, max_sample_rows=100)
    assert d.sample_rows <= 100 and d.sampled and d.ok_rows == 900  # counts stay exact
    page = build_report(parts, tmp_path / "rep", max_sample_rows=100).read_text()
    assert re.search(r"sample of \d+ of 900 ok rows", page)
    assert "decode_error" in text_report(parts)


def test_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        text_report(tmp_path / "nope.parquet")
    bad = write_sidecar(tmp_path, methods=("osa",), shards=1, n_ok=10, schema_version=99)
    with pytest.raises(InputError, match="schema version 99"):
        build_report(bad, tmp_path / "rep")
    assert not (tmp_path / "rep").exists()  # nothing written for a refused sidecar
    (tmp_path / "file").write_text("x")
    good = write_sidecar(tmp_path / "g", methods=("osa",), shards=1, n_ok=10)
    with pytest.raises(ConfigError):
        build_report(good, tmp_path / "file")
    (tmp_path / "plain.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="plain.parquet"):
        text_report(tmp_path / "plain.parquet")


def test_metadata_is_shown_escaped(tmp_path):
    path = write_sidecar(tmp_path, methods=("osa",), shards=1, n_ok=20)
    meta = S.read_metadata(pa.parquet.read_schema(path))
    meta["estimator"]["model"] = "<b>evil</b>"
    table = pa.parquet.read_table(path)
    table = table.replace_schema_metadata({S.METADATA_KEY: json.dumps(meta).encode()})
    pa.parquet.write_table(table, path)
    page = render_html(load_report_data(path), {}, None)  # the page alone: no figures needed
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page


# --------------------------------------------------------------------------- command


@pytest.fixture
def nclean(monkeypatch, capsys):
    """Run ``nclean ARGS`` in-process through the real entry point (one-line errors,
    exit codes); returns (code, stdout, stderr). Mounts report_cmd on a fresh app
    when cleaner.cli does not register it (yet)."""
    from cleaner import cli
    from cleaner.commands.report import report_cmd

    if not any(c.callback is report_cmd for c in cli.app.registered_commands):
        app = typer.Typer(
            add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None
        )
        app.callback()(lambda: None)  # keep "report" a subcommand, as in nclean
        app.command("report")(report_cmd)
        monkeypatch.setattr(cli, "app", app)

    def run(*args):
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["nclean", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return run


def test_command(full, tmp_path, nclean):
    code, _, err = nclean("report", full, "--out", tmp_path / "rep")
    assert code == 0 and (tmp_path / "rep" / "index.html").exists() and "index.html" in err
    code, out, _ = nclean("report", full, "--format", "text")
    assert code == 0 and re.search(r"decode_error\s+3", out)
    code, _, err = nclean("report", full, "-f", "text", "-o", tmp_path / "r.txt")
    assert code == 0 and (tmp_path / "r.txt").read_text() == out
    code, _, err = nclean("report", tmp_path / "missing.parquet")
    assert code == 3 and err.count("\n") == 1 and "not found" in err
    bad = write_sidecar(tmp_path / "bad", methods=("osa",), shards=1, n_ok=10, schema_version=2)
    code, _, err = nclean("report", bad, "--format", "text")
    assert code == 3 and err.count("\n") == 1 and "schema version 2" in err, err
    code, _, err = nclean("report", full, "--format", "pdf")
    assert code == 2 and err.count("\n") == 1 and "--format" in err
    code, help_text, _ = nclean("report", "--help")
    assert code == 0
    for opt in ("--out", "--format", "--sample-rows", "Exit codes"):
        assert opt in help_text
