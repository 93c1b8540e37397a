"""The method registry: a method declared in one place reaches the schema, the
CLI and the score job. A toy method registered at run time (no other file
touched) gets its option on ``nclean score`` and its columns in the sidecar."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli_in_process

from cleaner.io import schema as S
from cleaner.methods import catalog
from cleaner.methods.registry import Method, Option
from cleaner.worlds.synthetic import make_pair_mixture, write_embedding_dir


class Toy(Method):
    """Doubles the cosine, after subtracting a fitted mean (a fit on a sample)."""

    name = "toy"
    fields = (pa.field("toy_score", pa.float32()), pa.field("toy_keep", pa.bool_(), nullable=False))
    fill_for_failed = {"toy_keep": False}
    options = (Option("toy_gain", 2.0, "Toy: factor on the centred cosine."),)
    samples_rows = True  # fits on the shared seeded sample (its cosine)

    def new_scorer(self, options, seed):
        return {"gain": options["toy_gain"]}

    def sample_columns(self, scorer, pairs, seed_key):
        return {"cosine": pairs.cosine}

    def fit(self, scorer, ctx):
        return {"gain": scorer["gain"], "mean": float(ctx.sample["cosine"].mean())}

    def restore(self, params, ctx):
        return params

    def transform(self, scorer, pairs, pools, seed_key):
        score = scorer["gain"] * (pairs.cosine - scorer["mean"])
        return {"toy_score": score.astype(np.float32), "toy_keep": score > 0}


@pytest.fixture
def toy():
    from cleaner.commands import score as score_cmd

    method = catalog.register(Toy())
    score_cmd._signature()  # the CLI reads the registry when the command is built
    yield method
    catalog.unregister("toy")
    score_cmd._signature()


def test_toy_method_reaches_schema_cli_and_sidecar(toy, tmp_path, monkeypatch, capsys):
    assert "toy" in S.ALL_METHODS and "toy" not in S.DEFAULT_METHODS
    assert [f.name for f in S.schema_for(["osa", "toy"])][-2:] == ["toy_score", "toy_keep"]
    from typer.testing import CliRunner

    from cleaner.cli import app

    help_text = CliRunner().invoke(app, ["score", "--help"], terminal_width=200).output
    assert "Method: toy" in help_text and "--toy-gain" in help_text
    image, text, _ = make_pair_mixture(400, dim=32, noise_fraction=0.3, n_clusters=4, seed=1)
    write_embedding_dir(tmp_path / "emb", image, text, shard_size=150)
    out = tmp_path / "w.parquet"
    code, err = cli_in_process(
        monkeypatch, capsys, "score", "--embeddings", tmp_path / "emb", "--out", out, "--methods", "toy,osa",
        "--beta-source", "shuffled", "--toy-gain", "3", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    table = pq.read_table(out)
    meta = S.validate(table.schema)
    assert meta["methods"] == ["osa", "toy"]
    assert meta["params"]["toy"]["gain"] == 3.0
    df = table.to_pandas()
    mean = meta["params"]["toy"]["mean"]
    assert np.allclose(df.toy_score, 3.0 * (df.cosine - mean), atol=1e-5)
    assert (df.toy_keep == (df.toy_score > 0)).all()


def test_option_of_unselected_method_is_refused(toy, tmp_path, monkeypatch, capsys):
    code, err = cli_in_process(
        monkeypatch, capsys, "score", "--embeddings", tmp_path, "--out", tmp_path / "w", "--methods", "osa",
        "--toy-gain", "3",
    )  # fmt: skip
    assert code == 2 and "--toy-gain applies to --methods toy" in err


def test_catalog_lists_builtins_in_canonical_order():
    assert catalog.parse_methods("sps, osa") == ["osa", "sps"]
    with pytest.raises(ValueError, match="unknown method"):
        catalog.parse_methods("osa,nope")
    with pytest.raises(ValueError, match="built in"):
        catalog.unregister("osa")
