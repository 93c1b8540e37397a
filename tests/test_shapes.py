"""Tests for the procedural shapes world (cleaner.worlds.shapes)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleaner.worlds import shapes

ALL_COMBOS = [(c, s) for c in shapes.COLOURS for s in shapes.SHAPES]


def named_combos(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names."""
    return {(c, s) for c, s in ALL_COMBOS if f"{c} {s}" in text}


@pytest.fixture(scope="module")
def default_samples() -> list[dict]:
    return shapes.generate(300, seed=11)


@pytest.fixture(scope="module")
def shifted_samples() -> list[dict]:
    return shapes.generate(300, seed=11, domain="shifted")


# ---------------------------------------------------------------- generation


def test_same_seed_same_samples() -> None:
    a, b = shapes.generate(20, seed=7), shapes.generate(20, seed=7)
    assert [s["key"] for s in a] == [s["key"] for s in b]
    assert [s["caption"] for s in a] == [s["caption"] for s in b]
    assert [s["scene"] for s in a] == [s["scene"] for s in b]
    assert all(x["image"].tobytes() == y["image"].tobytes() for x, y in zip(a, b, strict=True))


def test_other_seed_other_samples() -> None:
    a, b = shapes.generate(20, seed=7), shapes.generate(20, seed=8)
    assert [s["caption"] for s in a] != [s["caption"] for s in b]
    assert not {s["key"] for s in a} & {s["key"] for s in b}


def test_sample_does_not_depend_on_n_or_start() -> None:
    whole = shapes.generate(15, seed=3)
    tail = shapes.generate(5, seed=3, start=10)
    assert [s["caption"] for s in whole[10:]] == [s["caption"] for s in tail]
    assert [s["key"] for s in whole[10:]] == [s["key"] for s in tail]
    assert whole[0]["key"] == "3_0000000"


def test_keys_unique_across_domains(default_samples, shifted_samples) -> None:
    keys = [s["key"] for s in default_samples + shifted_samples]
    assert len(set(keys)) == len(keys)


def test_render_depends_only_on_scene_and_size() -> None:
    sample = shapes.generate(1, seed=5, image_size=48)[0]
    assert sample["image"].size == (48, 48) and sample["image"].mode == "RGB"
    again = shapes.render(sample["scene"], 48)
    assert again.tobytes() == sample["image"].tobytes()
    assert shapes.render(sample["scene"], 96).size == (96, 96)


def test_scene_roundtrips_through_json(default_samples) -> None:
    for s in default_samples[:20]:
        d = json.loads(json.dumps(s["scene"].to_dict()))
        assert shapes.Scene.from_dict(d) == s["scene"]


@pytest.mark.parametrize("domain", ["default", "shifted"])
def test_caption_matches_scene(domain, default_samples, shifted_samples) -> None:
    samples = default_samples if domain == "default" else shifted_samples
    for s in samples:
        scene = s["scene"]
        # Every object is named, and nothing else is.
        assert named_combos(s["caption"]) == scene.combos(), s["caption"]
        assert 1 <= len(scene.objects) <= 3
        assert s["label"] == s["true_label"] == shapes.SHAPES.index(scene.objects[0].shape)
        assert scene.objects[0].size == "large"
        assert s["caption"] == s["true_caption"]


def test_captions_vary(default_samples) -> None:
    captions = [s["caption"] for s in default_samples]
    assert len(set(captions)) > 0.9 * len(captions)
    assert any(" left of " in c or " right of " in c for c in captions)
    assert any(" background" in c for c in captions)


def test_single_object_variant() -> None:
    for s in shapes.generate(50, seed=2, max_objects=1):
        assert len(s["scene"].objects) == 1


def test_held_out_is_one_per_colour_and_shape() -> None:
    colours = [c for c, _ in shapes.HELD_OUT]
    shape_names = [s for _, s in shapes.HELD_OUT]
    assert sorted(colours) == sorted(shapes.COLOURS)
    assert sorted(shape_names) == sorted(shapes.SHAPES)


def test_shifted_uses_only_held_out_combos(default_samples, shifted_samples) -> None:
    held = set(shapes.HELD_OUT)
    seen_default = set().union(*(s["scene"].combos() for s in default_samples))
    seen_shifted = set().union(*(s["scene"].combos() for s in shifted_samples))
    assert not seen_default & held
    assert seen_shifted <= held
    assert len(seen_shifted) == len(held)  # 300 samples reach all eight
    assert {s["scene"].background.kind for s in default_samples} == set(shapes.DEFAULT_BACKGROUNDS)
    assert {s["scene"].background.kind for s in shifted_samples} == set(shapes.SHIFTED_BACKGROUNDS)


def test_unknown_domain_rejected() -> None:
    with pytest.raises(ValueError):
        shapes.generate(1, domain="nope")


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 1.0])
def test_caption_noise_exact_and_deranged(default_samples, fraction) -> None:
    noisy_samples, is_noisy = shapes.add_caption_noise(default_samples, fraction, seed=4)
    n = len(default_samples)
    assert is_noisy.dtype == bool and is_noisy.sum() == round(fraction * n)
    for orig, new, flag in zip(default_samples, noisy_samples, is_noisy, strict=True):
        assert new["true_caption"] == orig["caption"]
        if flag:
            assert new["caption"] != orig["caption"]
            # Every noisy caption names something that is not in the image.
            assert named_combos(new["caption"]) - orig["scene"].combos()
        else:
            assert new["caption"] == orig["caption"]
    # Captions are moved among the noisy samples, not invented.
    idx = np.flatnonzero(is_noisy)
    assert Counter(noisy_samples[i]["caption"] for i in idx) == Counter(
        default_samples[i]["caption"] for i in idx
    )


def test_caption_noise_leaves_input_alone_and_is_seeded(default_samples) -> None:
    before = [s["caption"] for s in default_samples]
    a, fa = shapes.add_caption_noise(default_samples, 0.5, seed=9)
    b, fb = shapes.add_caption_noise(default_samples, 0.5, seed=9)
    assert [s["caption"] for s in default_samples] == before
    assert np.array_equal(fa, fb) and [s["caption"] for s in a] == [s["caption"] for s in b]


def test_caption_noise_in_shifted_domain(shifted_samples) -> None:
    # Only eight combos there, so conflicts are common; the repair must cope.
    noisy_samples, is_noisy = shapes.add_caption_noise(shifted_samples, 1.0, seed=1)
    assert is_noisy.all()
    for orig, new in zip(shifted_samples, noisy_samples, strict=True):
        assert new["caption"] != orig["caption"]


def test_caption_noise_rejects_single_sample(default_samples) -> None:
    with pytest.raises(ValueError):
        shapes.add_caption_noise(default_samples[:10], 0.1, seed=0)


def test_caption_noise_impossible_raises() -> None:
    same = [{"key": str(i), "caption": "a red circle", "label": 0} for i in range(5)]
    with pytest.raises(ValueError):
        shapes.add_caption_noise(same, 1.0, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_label_noise_exact_and_always_wrong(default_samples, fraction) -> None:
    n_classes = len(shapes.SHAPES)
    noisy_samples, is_noisy = shapes.add_label_noise(default_samples, fraction, n_classes, seed=3)
    assert is_noisy.sum() == round(fraction * len(default_samples))
    for orig, new, flag in zip(default_samples, noisy_samples, is_noisy, strict=True):
        assert 0 <= new["label"] < n_classes
        assert new["true_label"] == orig["label"]
        assert (new["label"] != orig["label"]) == flag


def test_label_noise_reaches_every_other_class(default_samples) -> None:
    noisy_samples, _ = shapes.add_label_noise(default_samples, 1.0, seed=0)
    offsets = {(s["label"] - s["true_label"]) % len(shapes.SHAPES) for s in noisy_samples}
    assert offsets == set(range(1, len(shapes.SHAPES)))


# ---------------------------------------------------------------- shards


def read_wds(paths: list[str]) -> list[dict]:
    import webdataset as wds

    return list(wds.WebDataset(paths, shardshuffle=False).decode("pil"))


def test_write_shards_readable(tmp_path: Path, default_samples) -> None:
    samples, cap_noisy = shapes.add_caption_noise(default_samples[:25], 0.4, seed=0)
    samples, lab_noisy = shapes.add_label_noise(samples, 0.2, seed=0)
    paths = shapes.write_shards(samples, tmp_path, shard_size=10, prefix="train-")
    assert [Path(p).name for p in paths] == [
        "train-00000.tar",
        "train-00001.tar",
        "train-00002.tar",
    ]
    rows = read_wds(paths)
    assert len(rows) == 25
    for row, sample, cn, ln in zip(rows, samples, cap_noisy, lab_noisy, strict=True):
        assert {"jpg", "txt", "cls", "json"} <= set(row)
        assert row["__key__"] == sample["key"]
        assert isinstance(row["jpg"], Image.Image) and row["jpg"].size == (64, 64)
        assert row["txt"] == sample["caption"]
        assert int(row["cls"]) == sample["label"]
        meta = row["json"]
        assert meta["uid"] == sample["key"] and meta["label"] == sample["label"]
        assert meta["true_caption"] == sample["true_caption"]
        assert meta["true_label"] == sample["true_label"]
        assert meta["clean"] == (not cn and not ln)


def test_write_shards_png_without_json(tmp_path: Path, default_samples) -> None:
    paths = shapes.write_shards(
        iter(default_samples[:5]), tmp_path, shard_size=100, image_format="png", extra_json=False
    )
    assert [Path(p).name for p in paths] == ["00000.tar"]
    rows = read_wds(paths)
    assert len(rows) == 5
    assert all(
        set(r) - {"__key__", "__url__", "__local_path__"} == {"png", "txt", "cls"} for r in rows
    )
    # PNG is lossless: pixels survive exactly.
    assert rows[0]["png"].tobytes() == default_samples[0]["image"].tobytes()


def test_shards_are_reproducible(tmp_path: Path, default_samples) -> None:
    a = shapes.write_shards(default_samples[:5], tmp_path / "a")
    b = shapes.write_shards(default_samples[:5], tmp_path / "b")
    assert Path(a[0]).read_bytes() == Path(b[0]).read_bytes()


def tar_samples(path: str) -> dict[str, dict[str, bytes]]:
    """Members of a tar grouped by key (no decoding, so broken data survives)."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar.getmembers():
            key, ext = info.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return out


def test_planted_samples(tmp_path: Path) -> None:
    path = shapes.write_corrupt_samples(tmp_path / "bad.tar", seed=1)
    by_kind = {}
    for members in tar_samples(path).values():
        meta = json.loads(members["json"])
        assert meta["clean"] is False
        assert meta["expected_status"] == shapes.PLANTED_KINDS[meta["planted"]]
        by_kind[meta["planted"]] = members
    assert set(by_kind) == set(shapes.PLANTED_KINDS)

    with pytest.raises(OSError):
        Image.open(io.BytesIO(by_kind["truncated_jpeg"]["jpg"])).load()
    with pytest.raises(OSError):
        Image.open(io.BytesIO(by_kind["not_an_image"]["jpg"]))
    assert "jpg" not in by_kind["missing_image"]
    assert "txt" not in by_kind["missing_caption"]
    assert by_kind["empty_caption"]["txt"] == b""
    with pytest.raises(UnicodeDecodeError):
        by_kind["non_utf8_caption"]["txt"].decode("utf-8")
    with pytest.raises(ValueError):
        int(by_kind["bad_label"]["cls"])
    # The untouched parts are still fine.
    Image.open(io.BytesIO(by_kind["missing_caption"]["jpg"])).load()


def test_plant_corrupt_appends_to_last_shard(tmp_path: Path, default_samples) -> None:
    kinds = ["empty_caption", "truncated_jpeg"]
    paths = shapes.write_shards(default_samples[:12], tmp_path, shard_size=5, plant_corrupt=kinds)
    assert len(paths) == 3
    last = tar_samples(paths[-1])
    planted = [k for k, m in last.items() if "planted" in json.loads(m["json"])]
    assert len(last) == 2 + len(kinds) and len(planted) == len(kinds)
