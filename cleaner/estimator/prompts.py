"""Class names and text prompts for zero-shot classification (CLIPCleaner).

A classification dataset gives each sample an integer label; CLIPCleaner turns
every class into one or more text prompts, encodes them with the estimator's
text tower and scores images against them. This module owns the text side:

- :data:`IMAGENET_TEMPLATES` -- a subset of the prompt templates published
  with CLIP for ImageNet, used when the user gives no prompts;
- :func:`load_classes` -- the label-id -> class-name table;
- :func:`load_prompts` -- a user's JSON of prompts per class (the CLIPCleaner
  paper generated "a photo of a {class} {description}." with a language
  model; users bring their own);
- :func:`build_prompts` -- the flat list of texts to encode plus the class of
  each text, which is what :func:`cleaner.methods.clipcleaner.scorer.zero_shot_probs`
  consumes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# A subset of the 80 ImageNet templates published with CLIP (Radford et al.,
# 2021, "Prompt_Engineering_for_ImageNet.ipynb"). The first seven are the
# ensemble the CLIP authors selected as the best small set; the rest are the
# plain "photo" variants, which suit photographs of objects best. Wording is
# kept verbatim, including the published "a origami {}.".
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a good photo of a {}.",
    "a photo of many {}.",
    "a jpeg corrupted photo of a {}.",
)


def _check_class_names(names: list[str], where: str) -> list[str]:
    """Reject empty and duplicate names: both would silently shift or merge
    label ids downstream."""
    if not names:
        raise ValueError(f"{where}: no class names")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"{where}: class {i} is not a string: {name!r}")
        if not name.strip():
            raise ValueError(f"{where}: class {i} has an empty name")
        if name in seen:
            raise ValueError(
                f"{where}: duplicate class name {name!r} (label ids {seen[name]} and {i})"
            )
        seen[name] = i
    return names


def load_classes(path: str | Path) -> list[str]:
    """Load the class-name table; list index = label id.

    Parameters
    ----------
    path : str or Path
        Either a ``.json`` file holding a JSON list of strings, or a text file
        with one class name per line (line 1 = label 0). Surrounding
        whitespace is stripped; trailing blank lines are ignored, but a blank
        line *between* names is an error because it would shift every later
        label id.

    Returns
    -------
    classes : list[str]
        Class names, ``classes[label_id]``.

    Raises
    ------
    ValueError
        If the file holds no names, an empty name, or a duplicate name.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of class names")
        names = [n.strip() if isinstance(n, str) else n for n in data]
    else:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        while names and not names[-1]:
            names.pop()
    return _check_class_names(names, str(path))


def _fill(prompt: str, name: str) -> str:
    # str.replace, not str.format: user prompts may contain other braces.
    return prompt.replace("{}", name)


def load_prompts(path: str | Path, classes: Sequence[str]) -> dict[str, list[str]]:
    """Load user prompts: a JSON object mapping class name -> list of prompts.

    Parameters
    ----------
    path : str or Path
        JSON file such as ``{"cat": ["a photo of a cat, a small pet."], ...}``.
        A ``{}`` inside a prompt is replaced by the class name, so templates
        may be given per class too. Keys for classes not in `classes` are
        ignored (one prompt file may serve several class subsets).
    classes : sequence of str
        The class-name table from :func:`load_classes`.

    Returns
    -------
    prompts : dict[str, list[str]]
        Prompts per class, in the order of `classes`.

    Raises
    ------
    ValueError
        If the JSON is not an object of string lists, if a class has no
        prompts, or if classes are missing (all of them are named).
    """
    path = Path(path)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping class name -> list of prompts")
    return _check_prompts(data, classes, str(path))


def _check_prompts(
    data: Mapping[str, Sequence[str]], classes: Sequence[str], where: str
) -> dict[str, list[str]]:
    missing = [c for c in classes if c not in data]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise ValueError(f"{where}: no prompts for {len(missing)} class(es): {shown}{more}")
    out: dict[str, list[str]] = {}
    for c in classes:
        texts = data[c]
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"{where}: prompts for {c!r} must be a list of strings")
        texts = [_fill(t, c) for t in texts if isinstance(t, str) and t.strip()]
        if len(texts) != len(data[c]):
            raise ValueError(f"{where}: prompts for {c!r} contain empty or non-string entries")
        if not texts:
            raise ValueError(f"{where}: class {c!r} has an empty prompt list")
        out[c] = texts
    return out


def build_prompts(
    classes: Sequence[str],
    prompts: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Flatten the prompts of every class into the texts to encode.

    Parameters
    ----------
    classes : sequence of str
        Class names, index = label id.
    prompts : mapping, sequence of str, or None
        ``None`` uses :data:`IMAGENET_TEMPLATES`; a sequence of templates
        (strings with ``{}``) is applied to every class; a mapping class
        name -> prompts (as from :func:`load_prompts`) is used as given.

    Returns
    -------
    texts : list[str]
        All prompts, grouped by class in label order.
    class_of_text : np.ndarray
        int64 array, ``class_of_text[j]`` = label id of ``texts[j]``.
    """
    classes = _check_class_names(list(classes), "classes")
    if prompts is None or (not isinstance(prompts, Mapping) and not isinstance(prompts, str)):
        templates = list(IMAGENET_TEMPLATES if prompts is None else prompts)
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("templates must be a non-empty list of strings containing '{}'")
        per_class = {c: [_fill(t, c) for t in templates] for c in classes}
    elif isinstance(prompts, Mapping):
        per_class = _check_prompts(prompts, classes, "prompts")
    else:
        raise ValueError("prompts must be None, a list of templates, or a mapping")
    texts: list[str] = []
    class_of_text: list[int] = []
    for label, c in enumerate(classes):
        texts.extend(per_class[c])
        class_of_text.extend([label] * len(per_class[c]))
    return texts, np.asarray(class_of_text, dtype=np.int64)
