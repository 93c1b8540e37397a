"""Shards read from the memory-mapped cache give what EmbeddingCache.load
gives, the read-ahead keeps order and errors, and memoised values stay
within their row budget."""

import numpy as np
import pytest

from cleaner.errors import InputError
from cleaner.io.embcache import EmbeddingCache
from cleaner.worlds.synthetic import make_pair_mixture, write_embedding_dir
from pipelines.shard_view import RowMemo, ShardView, gather_vectors, iter_views


@pytest.fixture()
def cache(tmp_path):
    image, text, _ = make_pair_mixture(900, dim=32, seed=1)
    image[5] = 0.0  # a zero vector and a NaN: bad_embedding rows in partition 0
    text[17] = np.nan
    write_embedding_dir(tmp_path, image, text, shard_size=300)
    return EmbeddingCache(tmp_path)


def test_views_equal_the_cache_load(cache):
    for pos, stem in enumerate(cache.stems()):
        view, shard = ShardView.load(cache, stem, pos), cache.load(stem)
        ok = np.asarray(shard.meta.column("status").to_pylist()) == "ok"
        assert view.meta.equals(shard.meta)
        np.testing.assert_array_equal(view.ok, ok)
        np.testing.assert_array_equal(view.pairs.image, shard.image[ok])  # bit for bit
        np.testing.assert_array_equal(view.pairs.text, shard.text[ok])
        np.testing.assert_array_equal(view.ok_positions, np.flatnonzero(ok))
        rows = view.ok_positions[::7]
        np.testing.assert_array_equal(
            gather_vectors(cache, cache.stems(), np.full(len(rows), pos), rows, "text"),
            shard.text[rows],
        )
    assert int((~ShardView.load(cache, "00000", 0).ok).sum()) == 2


def test_read_ahead_keeps_order_and_raises_one_line_errors(cache):
    stems = cache.stems()
    got = [stem for stem, _ in iter_views(cache, enumerate(stems))]
    assert got == stems
    cache.text_path(stems[1]).write_bytes(b"not an npy file")
    seen = []
    with pytest.raises(InputError, match=stems[1]):
        for stem, _ in iter_views(cache, enumerate(stems)):
            seen.append(stem)
    assert seen == stems[:1]


def test_memo_is_shared_across_passes_within_its_budget(cache):
    memo = RowMemo(budget_rows=600)
    first = {s: v.pairs.extra for s, v in iter_views(cache, enumerate(cache.stems()), memo=memo)}
    again = {s: v.pairs.extra for s, v in iter_views(cache, enumerate(cache.stems()), memo=memo)}
    assert [first[s] is again[s] for s in cache.stems()] == [True, True, False]
    assert memo.used == 600 and "key_hash" in again["00000"]
