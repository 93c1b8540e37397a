"""Turn a raw sample's bytes into model inputs, or into a status.

Every failure here is data, not an exception: :func:`prepare_sample` always
returns a :class:`Prepared` whose ``status`` is ``ok`` or one of
:data:`STATUSES`, with a short ``error`` message. This is what keeps a
web-scale job going through broken JPEGs, empty captions and odd encodings.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cleaner.io.shards import RawSample

# Statuses a row can have; ``ok`` rows are scored, the others carry nulls.
STATUSES = (
    "ok",
    "missing_image",  # no image member under any of the image keys
    "decode_error",  # image bytes present but not decodable (truncated, not an image)
    "image_too_large",  # more pixels than max_pixels: decompression-bomb guard
    "missing_text",  # no caption member, or an empty caption
    "bad_text",  # caption bytes are not valid UTF-8 / JSON field unreadable
    "duplicate_key",  # the key repeats within the shard
    "bad_embedding",  # precomputed embedding is NaN / zero (embeddings input)
    "bad_label",  # class label missing, non-integer or out of range (CLIPCleaner)
)

DEFAULT_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger is treated as a decompression bomb
MAX_CAPTION_CHARS = 10_000  # tokenizers keep <= 77 tokens anyway; bounds time on 1 MB captions
# Longest/shortest side before the model's transform. A 1x60000 PNG is a few
# hundred bytes and within max_pixels, but resizing its shortest side to 224
# makes a 224x13_440_000 image (~9 GB). See _limit_aspect.
MAX_ASPECT_RATIO = 50

# Truncated JPEGs must fail loudly, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class Prepared:
    """A sample ready for the model (``status == 'ok'``) or a status row."""

    key: str
    index: int
    status: str
    error: str | None = None
    uid: str | None = None
    label: int | None = None
    image: np.ndarray | None = None  # uint8 HxWx3, already resized/cropped
    tokens: np.ndarray | None = None  # int64 (context_length,)


def parse_text_key(text_key: str) -> tuple[str, str | None]:
    """``txt`` -> (``txt``, None); ``json:caption`` -> (``json``, ``caption``)."""
    if text_key.startswith("json:"):
        field = text_key[5:]
        if not field:
            raise ValueError("--text-key json:<field> needs a field name")
        return "json", field
    return text_key.lower(), None


def _json_field(doc, field: str):
    # dotted paths reach into nested objects: json:meta.caption
    for part in field.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def decode_caption(members: dict, text_key: str) -> tuple[str | None, str | None, str | None]:
    """Return (caption, status, error); caption is None when status is set."""
    ext, field = parse_text_key(text_key)
    raw = members.get(ext)
    if raw is None:
        what = "cut off by truncation" if ext in members else "absent"
        return None, "missing_text", f"caption member .{ext} {what}"
    if field is None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, "bad_text", f"caption is not UTF-8 ({exc.reason} at byte {exc.start})"
    else:
        try:
            value = _json_field(json.loads(raw), field)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, "bad_text", f".json member unreadable: {exc}"[:200]
        if value is None:
            return None, "missing_text", f"json field {field!r} absent"
        text = value if isinstance(value, str) else str(value)
    text = text.strip()
    if not text:
        return None, "missing_text", "caption is empty"
    return text[:MAX_CAPTION_CHARS], None, None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode we meet on the web, without surprises.

    - transparency is composited on white (``convert('RGB')`` would turn
      transparent pixels black, a colour the caption never mentions);
    - 16/32-bit greyscale is rescaled to 8 bits (PIL would clip it to white).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L")
    if img.mode == "P" or img.mode == "LA" or (img.mode == "RGBA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    # convert() copies even RGB -> RGB; skip it
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None):
    """Decode image bytes to an RGB PIL image. Returns (image, status, error).

    ``draft_size`` lets JPEG decoding skip detail that resizing to the model's
    input would throw away anyway (PIL's ``draft``: DCT scaling by 1/2, 1/4,
    1/8 while staying >= the requested size), a large saving on big photos.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size  # header only; nothing decoded yet
            if width * height > max_pixels:
                return (
                    None,
                    "image_too_large",
                    f"{width}x{height} pixels exceeds the limit of {max_pixels}",
                )
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            # in place: without an orientation tag this would copy the whole image
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img), None, None
    except Image.DecompressionBombError as exc:
        return None, "image_too_large", str(exc)[:200]
    except Image.DecompressionBombWarning as exc:
        return None, "image_too_large", str(exc)[:200]
    except UnidentifiedImageError:
        return None, "decode_error", "not a recognised image format"
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:
        return None, "decode_error", f"{type(exc).__name__}: {exc}"[:200]


@dataclass
class SampleSpec:
    """How to find the parts of a sample (the CLI's --image-key etc.)."""

    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS
    text_key: str = "txt"
    uid_field: str | None = None
    label_key: str | None = None  # cls, or json:<field>; set only when labels are scored
    n_classes: int | None = None  # labels must lie in [0, n_classes)
    text_required: bool = True  # False for label-only scoring: a missing caption embeds as ""
    max_pixels: int = DEFAULT_MAX_PIXELS

    def wanted_members(self) -> set[str]:
        wanted = set(self.image_keys) | {parse_text_key(self.text_key)[0]}
        if self.uid_field:
            wanted.add("json")
        if self.label_key:
            wanted.add(parse_text_key(self.label_key)[0])
        return wanted


def read_uid(members: dict, uid_field: str | None) -> str | None:
    """The uid in the ``json`` member (bytes, or a dict once webdataset has
    decoded it), or None when absent or unreadable."""
    doc = members.get("json")
    if not uid_field or doc is None:
        return None
    try:
        value = _json_field(doc if isinstance(doc, dict) else json.loads(doc), uid_field)
    except (ValueError, UnicodeDecodeError):
        return None
    return None if value is None else str(value)


def read_label(
    members: dict, label_key: str, n_classes: int | None
) -> tuple[int | None, str | None]:
    """Return (label, error); error is set when the label is missing or bad."""
    ext, field = parse_text_key(label_key)
    raw = members.get(ext)
    if raw is None:
        return None, f"label member .{ext} absent"
    try:
        value = _json_field(json.loads(raw), field) if field else raw.decode("utf-8").strip()
    except (ValueError, UnicodeDecodeError):
        return None, f"label member .{ext} unreadable"
    if value is None:
        return None, f"label field {field!r} absent"
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        return None, f"label {value!r} is not an integer"
    try:
        label = int(value)
    except (TypeError, ValueError):
        return None, f"label {str(value)[:40]!r} is not an integer"
    if isinstance(value, str) and value.strip() != str(label):
        return None, f"label {value[:40]!r} is not an integer"
    if label < 0 or (n_classes is not None and label >= n_classes):
        return None, f"label {label} out of range [0, {n_classes})"
    return label, None


def _limit_aspect(img: Image.Image) -> Image.Image:
    """Centre-crop the long side to at most MAX_ASPECT_RATIO x the short side.

    Bounds the memory of the resize that follows for extreme aspect ratios
    (at most 224 x 50*224 pixels at a 224 input). open_clip's eval transform
    (shortest side resized, then centre crop) keeps only the central square,
    which this crop keeps, so such images embed the same up to sub-pixel
    rounding of the resize grid; images within the ratio are not touched.
    """
    w, h = img.size
    if w > MAX_ASPECT_RATIO * h:
        # keep as many pixels as the limit allows, plus one if that makes the
        # dropped margins equal: the centre stays where it was
        keep = MAX_ASPECT_RATIO * h + (w - MAX_ASPECT_RATIO * h) % 2
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    if h > MAX_ASPECT_RATIO * w:
        keep = MAX_ASPECT_RATIO * w + (h - MAX_ASPECT_RATIO * w) % 2
        top = (h - keep) // 2
        return img.crop((0, top, w, top + keep))
    return img


def prepare_sample(
    raw: RawSample, spec: SampleSpec, image_transform=None, tokenizer=None, draft_size=None
) -> Prepared:
    """Decode one raw sample. ``image_transform`` maps a PIL RGB image to a
    PIL image of the model's input size (resize + crop, no tensor
    conversion); ``tokenizer`` maps a list of strings to a token tensor."""
    out = Prepared(key=raw.key, index=raw.index, status="ok")
    out.uid = read_uid(raw.members, spec.uid_field)
    if raw.problem:
        out.status, out.error = raw.problem, raw.problem_detail
        return out
    if spec.label_key:
        out.label, error = read_label(raw.members, spec.label_key, spec.n_classes)
        if error:
            out.status, out.error = "bad_label", error
            return out
    ext = next((k for k in spec.image_keys if k in raw.members), None)
    if ext is None:
        out.status, out.error = (
            "missing_image",
            f"no image member among {','.join(spec.image_keys)}",
        )
        return out
    data = raw.members[ext]
    if data is None:  # checked before the caption: a tar cut inside the image never
        # reaches the caption member, and "caption absent" would hide the truncation
        out.status, out.error = "decode_error", f"image member .{ext} cut off by truncation"
        return out
    caption, status, error = decode_caption(raw.members, spec.text_key)
    if status and not spec.text_required:
        caption, status, error = "", None, None
    if status:
        out.status, out.error = status, error
        return out
    img, status, error = decode_image(data, spec.max_pixels, draft_size)
    if status:
        out.status, out.error = status, error
        return out
    try:
        if image_transform is not None:
            img = image_transform(_limit_aspect(img))
        out.image = np.asarray(img, dtype=np.uint8)
        if tokenizer is not None:
            out.tokens = tokenizer([caption])[0].numpy()
    except Exception as exc:  # a transform failing on one odd image must not end the job
        out.status, out.error, out.image = (
            "decode_error",
            f"preprocess failed: {type(exc).__name__}: {exc}"[:200],
            None,
        )
    return out
