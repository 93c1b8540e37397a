import io
import tarfile
from pathlib import Path

import pytest

from cleaner.errors import ConfigError
from cleaner.io.shards import ShardReadError, ShardReport, expand_shards, read_shard, shard_stem


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shard_tree(tmp_path):
    for i in range(3):
        _tar(tmp_path / f"data-{i:06d}.tar", [(f"k{i}.txt", b"x")])
    (tmp_path / "notes.md").write_text("not a shard")
    return tmp_path


def test_expand_directory_glob_brace_list(shard_tree):
    names = [p.name for p in expand_shards(str(shard_tree))]
    assert names == ["data-000000.tar", "data-000001.tar", "data-000002.tar"]
    assert [p.name for p in expand_shards(str(shard_tree / "data-*.tar"))] == names
    assert [p.name for p in expand_shards(str(shard_tree / "data-{000000..000001}.tar"))] == names[
        :2
    ]
    listed = [str(shard_tree / "data-000002.tar"), str(shard_tree / "data-000000.tar")]
    assert [p.name for p in expand_shards(listed)] == ["data-000002.tar", "data-000000.tar"]


def test_expand_errors(shard_tree, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        expand_shards(str(shard_tree / "missing.tar"))
    with pytest.raises(ConfigError, match="match"):
        expand_shards(str(shard_tree / "nope-*.tar"))
    with pytest.raises(ConfigError, match="not found"):
        expand_shards(str(shard_tree / "data-{000007..000008}.tar"))
    other = tmp_path / "other"
    other.mkdir()
    _tar(other / "data-000000.tar", [("a.txt", b"y")])
    with pytest.raises(ConfigError, match="share the file name"):
        expand_shards([str(shard_tree), str(other)])
    with pytest.raises(ConfigError, match="more than once"):
        expand_shards([str(shard_tree / "data-000000.tar")] * 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no \\*.tar"):
        expand_shards(str(empty))


def test_shard_stem():
    assert shard_stem("/x/00042.tar") == "00042"
    assert shard_stem("a.tar.gz") == "a"


def test_read_groups_by_webdataset_key(tmp_path):
    p = _tar(
        tmp_path / "s.tar",
        [("dir/a.jpg", b"A"), ("dir/a.txt", b"ta"), ("dir/b.seg.png", b"B"), ("dir/b.txt", b"tb")],
    )
    samples = list(read_shard(p))
    assert [s.key for s in samples] == [
        "dir/a",
        "dir/b",
    ]  # key = path up to the first dot of the name
    assert samples[1].members == {"seg.png": b"B", "txt": b"tb"}
    assert [s.index for s in samples] == [0, 1]


def test_non_contiguous_members_are_assembled(tmp_path):
    p = _tar(
        tmp_path / "s.tar", [("a.jpg", b"A"), ("b.jpg", b"B"), ("a.txt", b"ta"), ("b.txt", b"tb")]
    )
    samples = list(read_shard(p))
    assert [(s.key, sorted(s.members), s.problem) for s in samples] == [
        ("a", ["jpg", "txt"], None),
        ("b", ["jpg", "txt"], None),
    ]


def test_duplicate_key_is_flagged_not_dropped(tmp_path):
    p = _tar(
        tmp_path / "s.tar",
        [("a.jpg", b"A"), ("a.txt", b"1"), ("b.txt", b"2"), ("a.jpg", b"A2"), ("a.txt", b"3")],
    )
    samples = list(read_shard(p))
    assert len(samples) == 3
    assert samples[2].key == "a" and samples[2].problem == "duplicate_key"
    assert samples[2].members == {"jpg": b"A2", "txt": b"3"}


def test_index_is_position_in_shard_with_repeated_keys(tmp_path):
    """A repeated key mid-shard: `index` counts samples in shard order, and
    the plain and gzipped readers agree on every (key, index, problem)."""
    import gzip

    members = []
    for key in ["k0", "k1", "k2", "k1", "k4", "k5"]:
        members += [(f"{key}.jpg", key.encode()), (f"{key}.txt", b"t")]
    plain = _tar(tmp_path / "s.tar", members)
    gz = tmp_path / "s.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    rows = {
        name: [(x.key, x.index, x.problem) for x in read_shard(p)]
        for name, p in (("tar", plain), ("gz", gz))
    }
    assert rows["tar"] == rows["gz"]
    assert [(k, i) for k, i, _ in rows["tar"]] == [
        ("k0", 0), ("k1", 1), ("k2", 2), ("k1", 3), ("k4", 4), ("k5", 5)
    ]
    assert rows["tar"][3][2] == "duplicate_key"


def test_back_to_back_repeat_is_its_own_row_in_both_readers(tmp_path):
    """`a.jpg a.txt a.jpg a.txt b.*`: the second `a` is a flagged row of its
    own; the streaming reader used to merge it into the first (one sample
    silently lost)."""
    import gzip

    members = [("a.jpg", b"A1"), ("a.txt", b"1"), ("a.jpg", b"A2"), ("a.txt", b"2")]
    members += [("b.jpg", b"B"), ("b.txt", b"3")]
    plain = _tar(tmp_path / "s.tar", members)
    gz = tmp_path / "s.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    for p in (plain, gz):
        got = [(x.key, x.index, x.problem, x.members.get("jpg")) for x in read_shard(p)]
        assert got == [
            ("a", 0, None, b"A1"), ("a", 1, "duplicate_key", b"A2"), ("b", 2, None, b"B")
        ], p.name


def test_wanted_members_only_but_sample_kept(tmp_path):
    p = _tar(tmp_path / "s.tar", [("a.jpg", b"A"), ("a.txt", b"t"), ("b.xyz", b"?")])
    samples = list(read_shard(p, wanted={"jpg", "txt"}))
    assert [s.key for s in samples] == ["a", "b"] and samples[1].members == {}


def test_truncated_tar_yields_what_was_read(tmp_path):
    p = _tar(tmp_path / "s.tar", [(f"k{i}.txt", b"x" * 3000) for i in range(5)])
    data = p.read_bytes()
    p.write_bytes(data[: 512 * 3 + 3000 + 100])  # cut inside the second member's data
    report = ShardReport()
    samples = list(read_shard(p, report=report))
    assert samples[0].members["txt"] == b"x" * 3000
    assert len(samples) >= 1
    if len(samples) > 1:
        assert samples[1].members["txt"] is None  # cut off: flagged, not silently shortened
    assert report.warnings


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "e.tar"
    empty.write_bytes(b"")
    report = ShardReport()
    assert list(read_shard(empty, report=report)) == [] and report.warnings
    garbage = tmp_path / "g.tar"
    garbage.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(ShardReadError, match="not a readable tar"):
        list(read_shard(garbage))
    zero_members = _tar(tmp_path / "z.tar", [])
    assert list(read_shard(zero_members)) == []
