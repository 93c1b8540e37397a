"""Captions for shapes-world scenes.

Templates that name every object's colour and shape (so a caption always
matches its whole scene), with relations and positions filled in from the
scene. A module of its own because the wording is independent of how
scenes are drawn or stored.
"""

from __future__ import annotations

import re

import numpy as np

from cleaner.worlds.shapes_scene import _CENTRES, Scene, ShapeObject

# Caption phrases per position (see shapes_scene._CENTRES for where they are).
_POS_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}


# {A}, {B}, {C}: object phrases; {PA}.. their position phrases; {REL}: A
# relative to B; {BG}: background phrase. Every template names every
# object's colour and shape, so a caption always matches its whole scene.
_TEMPLATES: dict[int, tuple[str, ...]] = {
    1: (
        "a {A} on {BG}",
        "a {A} {PA}",
        "a {A} {PA} on {BG}",
        "a picture of a {A} on {BG}",
        "there is a {A} {PA}",
    ),
    2: (
        "a {A} {REL} a {B}",
        "a {A} {REL} a {B} on {BG}",
        "a {A} and a {B} on {BG}",
        "a {A} {PA} and a {B} {PB}",
    ),
    3: (
        "a {A}, a {B} and a {C} on {BG}",
        "a {A} {REL} a {B}, and a {C} {PC}",
        "a {A} {PA}, a {B} {PB} and a {C} {PC}",
        "three shapes on {BG}: a {A}, a {B} and a {C}",
    ),
}


_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def _relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``, from their nominal positions."""
    ax, ay = _CENTRES[a.position]
    bx, by = _CENTRES[b.position]
    dx, dy = bx - ax, by - ay
    if abs(dx) >= abs(dy):  # ties (e.g. left vs top) are true both ways; prefer left/right
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def _object_phrase(obj: ShapeObject, with_size: bool) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A compositional caption for ``scene``, with a randomly drawn template.

    Objects are named in a random order (the main object is not always
    first), each with colour and shape and usually size.
    """
    objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    n = min(len(objs), 3)
    templates = _TEMPLATES[n]
    template = templates[rng.integers(len(templates))]
    with_size = rng.random(len(objs)) < 0.8
    fields = {"BG": scene.background.phrase}
    for letter, obj, sized in zip("ABCD", objs, with_size, strict=False):
        fields[letter] = _object_phrase(obj, bool(sized))
        fields["P" + letter] = _POS_PHRASE[obj.position]
    if n >= 2:
        fields["REL"] = _relation(objs[0], objs[1])
    text = template.format(**fields)
    # A fourth object (max_objects=4) is appended so the caption stays complete.
    for obj, sized in zip(objs[3:], with_size[3:], strict=True):
        text += f", and a {_object_phrase(obj, bool(sized))} {_POS_PHRASE[obj.position]}"
    # Templates always write "a"; fix the article before vowels ("an orange star").
    return _ARTICLE.sub("an ", text)
