"""CLIPCleaner end to end: labelled shards, bad labels as status rows."""

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from conftest import TINY, run_cli, tiny_args

from cleaner.io import schema as S
from cleaner.worlds import shapes


def _add(tf, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    data = shapes.generate(160, seed=7)
    data, flipped = shapes.add_label_noise(data, 0.25, seed=7)
    shapes.write_shards(data, root / "shards", shard_size=80)
    # a shard of classification samples: image + label only (no caption), some bad labels
    img = shapes.encode_image(data[0]["image"])
    with tarfile.open(root / "shards" / "00002.tar", "w") as tf:
        for key, cls in [
            ("c_ok", b"3"),
            ("c_range", b"99"),
            ("c_text", b"square"),
            ("c_neg", b"-1"),
            ("c_float", b"2.5"),
        ]:
            _add(tf, f"{key}.jpg", img)
            _add(tf, f"{key}.cls", cls)
        _add(tf, "c_nolabel.jpg", img)
        _add(tf, "c_json.jpg", img)
        _add(tf, "c_json.json", json.dumps({"label": 4}).encode())
        _add(tf, "c_json2.jpg", img)
        _add(tf, "c_json2.json", json.dumps({"label": 1}).encode())
    (root / "classes.txt").write_text("\n".join(shapes.SHAPES) + "\n")
    return root, flipped


def test_clipcleaner_command(labelled, tiny_ckpt):
    root, _ = labelled
    out = root / "selections.parquet"
    proc = run_cli(
        "score",
        root / "shards",
        "--methods",
        "clipcleaner",
        "--classes",
        root / "classes.txt",
        "--out",
        out,
        *tiny_args(tiny_ckpt),
        "--folds",
        "3",
    )
    t = pq.read_table(out).to_pandas()
    assert len(t) == 160 + 8
    st = dict(zip(t.key, t.status))
    assert st["c_ok"] == "ok"  # no caption needed when only labels are scored
    for key in ("c_range", "c_text", "c_neg", "c_float", "c_nolabel", "c_json", "c_json2"):
        assert st[key] == "bad_label", key  # c_json: label lives in json, not cls (default key)
    assert "bad_label" in proc.stderr
    ok = t.status == "ok"
    assert t.label[ok].notna().all() and t.cc_selected[~ok].eq(False).all()
    for col in ("cc_pred_zs", "cc_p_label_zs", "cc_pred_ind", "cc_p_label_ind", "cc_label_quality"):
        assert t[col][ok].notna().all() and t[col][~ok].isna().all(), col
    meta = S.read_metadata(pq.read_schema(out))
    assert meta["params"]["clipcleaner"]["classes"] == shapes.SHAPES
    assert meta["params"]["clipcleaner"]["settings"]["n_folds"] == 3
    # selection follows the definition: the intersection of the four verdicts
    sel = (
        t.cc_consistency_zs
        & t.cc_consistency_ind
        & (t.cc_gmm_clean_prob_zs >= 0.5)
        & (t.cc_gmm_clean_prob_ind >= 0.5)
    )
    assert (t.cc_selected[ok] | ~sel[ok]).all()  # everything in the intersection is selected
    # a second run is a no-op
    before = out.read_bytes()
    run_cli(
        "score",
        root / "shards",
        "--methods",
        "clipcleaner",
        "--classes",
        root / "classes.txt",
        "--out",
        out,
        *tiny_args(tiny_ckpt),
        "--folds",
        "3",
    )
    assert out.read_bytes() == before


def test_label_from_json_field(labelled, tiny_ckpt, tmp_path):
    root, _ = labelled
    out = tmp_path / "j.parquet"
    run_cli(
        "score",
        root / "shards" / "00002.tar",
        "--methods",
        "clipcleaner",
        "--classes",
        root / "classes.txt",
        "--label-key",
        "json:label",
        "--out",
        out,
        *tiny_args(tiny_ckpt),
        "--induced",
        "in-sample",
    )
    t = pq.read_table(out).to_pandas()
    st = dict(zip(t.key, t.status))
    assert st["c_json"] == "ok" and st["c_ok"] == "bad_label"
    assert int(t.label[t.key == "c_json"].iloc[0]) == 4


def test_missing_classes_is_config_error(labelled, tiny_ckpt, tmp_path):
    root, _ = labelled
    proc = run_cli(
        "score",
        root / "shards",
        "--methods",
        "clipcleaner",
        "--out",
        tmp_path / "x",
        "--model",
        TINY,
        "--pretrained",
        tiny_ckpt,
        "--no-progress",
        check=False,
    )
    assert proc.returncode == 2 and "--classes" in proc.stderr and "Traceback" not in proc.stderr
