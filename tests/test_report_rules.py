"""The report counts and picks pairs by each method's own keep rule (issue 15).

A toy method registered at run time declares ``keep_expr = "toy_score > {cut}"``
with ``cut`` fitted; its sidecar column ``toy_keep`` says something else
(``toy_score > 0``), so a report that read the column, or a rule of its own,
would count differently. The built-in methods are checked the same way on a
``--thresholds auto`` sidecar: the report's kept rows are exactly the
registry's keep rule evaluated on the sidecar.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleaner.io import schema as S
from cleaner.methods import catalog
from cleaner.methods.registry import Method
from cleaner.report.build import build_report, text_report
from cleaner.report.data import load_report_data
from cleaner.report.pair_select import select_pairs
from cleaner.train.weights import evaluate
from cleaner.worlds.synthetic import make_pair_mixture, write_embedding_dir
from pipelines.score_job import ScoreJob, ScoreSettings, run_score

CUT = 0.05


class Toy(Method):
    """The centred cosine; kept above a fitted cut, which its own column ignores."""

    name = "toy"
    fields = (pa.field("toy_score", pa.float32()), pa.field("toy_keep", pa.bool_(), nullable=False))
    fill_for_failed = {"toy_keep": False}
    samples_rows = True
    keep_expr = "toy_score > {cut}"

    def new_scorer(self, options, seed):
        return {}

    def sample_columns(self, scorer, pairs, seed_key):
        return {"cosine": pairs.cosine}

    def fit(self, scorer, ctx):
        return {"mean": float(ctx.sample["cosine"].mean()), "cut": CUT}

    def restore(self, params, ctx):
        return params

    def transform(self, scorer, pairs, pools, seed_key):
        score = (pairs.cosine - scorer["mean"]).astype(np.float32)
        return {"toy_score": score, "toy_keep": score > 0}

    def keep_where(self, params):
        return self.keep_expr.format(cut=repr(float(params["cut"])))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    catalog.register(Toy())
    try:
        root = tmp_path_factory.mktemp("report_rules")
        image, text, _ = make_pair_mixture(1200, dim=32, noise_fraction=0.3, n_clusters=8, seed=2)
        write_embedding_dir(root / "emb", image, text, shard_size=400)
        out = root / "w.parquet"
        st = ScoreSettings(methods=["osa", "sdd", "match", "toy"], thresholds="auto")
        run_score(ScoreJob(out=str(out), embeddings=str(root / "emb"), settings=st, progress=False))
        table = pq.read_table(out)
        yield out, table, S.read_metadata(table.schema)
    finally:
        catalog.unregister("toy")


def _rule_mask(table, meta, method) -> np.ndarray:
    rule = catalog.get(method).keep_where(meta["params"][method])
    ok = np.asarray(table["status"].to_pylist(), dtype=object) == "ok"
    return evaluate(table, rule) & ok


def test_report_counts_by_each_methods_keep_rule(scored):
    path, table, meta = scored
    d = load_report_data(path)
    assert d.rules["toy"] == f"toy_score > {CUT!r}"
    toy = _rule_mask(table, meta, "toy")
    column = np.asarray(table["toy_keep"].to_pylist(), dtype=bool)
    assert toy.sum() != column.sum()  # the rule and the column disagree on this data
    for m in ("osa", "sdd", "match", "toy"):
        kept = _rule_mask(table, meta, m)
        assert d.total(f"{m}_kept") == int(kept.sum()), m
        assert int(d.per_shard[f"{m}_kept"].sum()) == int(kept.sum())
    # OSA's auto rule is cosine > the calibrated keep cut (at or above beta)
    osa = meta["params"]["osa"]
    assert d.rules["osa"] == f"cosine > {osa['keep_cut']!r}"
    assert osa["keep_cut"] >= osa["beta"]["value"]
    text = text_report(path)
    assert f"kept (toy_score > {CUT})" in text and "\ntoy\n" in text


def test_pairs_follow_the_keep_rule(scored):
    path, table, meta = scored
    d = load_report_data(path)
    sel = select_pairs(d, k=5, seed=0)
    verdicts = {v.method: v for v in sel.verdicts}
    assert set(verdicts) == {"osa", "sdd", "match", "toy"}
    assert verdicts["toy"].expr == f"toy_score > {CUT!r}" and verdicts["toy"].score == "toy_score"
    for m in verdicts:
        kept = _rule_mask(table, meta, m)
        assert sel.kept[m] == int(kept.sum()), m
        assert sel.counts[(m, "kept_random")] == int(kept.sum())
        for p in sel.picks[(m, "kept_random")]:
            assert kept[p.row] and p.keep[m]
        for p in sel.picks[(m, "dropped_random")]:
            assert not kept[p.row] and not p.keep[m]
    low = sel.picks[("toy", "kept_low")]
    assert low and all(p.values["toy_score"] > CUT for p in low)


def test_page_shows_a_registered_methods_rule(scored, tmp_path):
    path, table, meta = scored
    index = build_report(path, tmp_path / "rep")
    page = index.read_text()
    assert 'id="toy"' in page and 'href="#toy"' in page and 'id="match"' in page
    assert f"kept (toy_score &gt; {CUT})" in page
    header = (index.parent / "shards.csv").read_text().splitlines()[0].split(",")
    assert {"osa keep", "sdd keep", "match keep", "toy keep"} <= set(header)
