"""Captions for the demo set: many templates, synonyms and word orders over the same four attributes.

"a small red circle in the top left corner", "top left: red circle, small", "the circle at the bottom is
blue and big", "small green cross top right and a big blue ring on the left", ... Every caption names the
colour, the shape, the size and the position of every object, so captions stay exact descriptions
(retrieval on them is meaningful), while 12 templates x 2 words per size x 2 wordings per position make a
batch rarely hold two identical captions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from data_tools.demo_synth import Attributes

SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}

# Per grid cell: prepositional phrases ("in the top left corner") and bare labels ("top left").
_CORNER_PHRASES = ("in the {} corner", "at the {}")
POSITION_PHRASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("top", "left"): tuple(p.format("top left") for p in _CORNER_PHRASES),
    ("top", "centre"): ("at the top", "at the top centre"),
    ("top", "right"): tuple(p.format("top right") for p in _CORNER_PHRASES),
    ("middle", "left"): ("on the left", "at the left"),
    ("middle", "centre"): ("in the centre", "in the middle"),
    ("middle", "right"): ("on the right", "at the right"),
    ("bottom", "left"): tuple(p.format("bottom left") for p in _CORNER_PHRASES),
    ("bottom", "centre"): ("at the bottom", "at the bottom centre"),
    ("bottom", "right"): tuple(p.format("bottom right") for p in _CORNER_PHRASES),
}
POSITION_LABELS: dict[tuple[str, str], tuple[str, ...]] = {
    ("top", "left"): ("top left", "upper left"),
    ("top", "centre"): ("top", "top centre"),
    ("top", "right"): ("top right", "upper right"),
    ("middle", "left"): ("left", "middle left"),
    ("middle", "centre"): ("centre", "middle"),
    ("middle", "right"): ("right", "middle right"),
    ("bottom", "left"): ("bottom left", "lower left"),
    ("bottom", "centre"): ("bottom", "bottom centre"),
    ("bottom", "right"): ("bottom right", "lower right"),
}

# {where}: a prepositional phrase, {label}: a bare position label.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} {where}",
    "{where}, a {size} {colour} {shape}",
    "{label}: {colour} {shape}, {size}",
    "a {colour} {shape}, {size}, {where}",
    "there is a {size} {colour} {shape} {where}",
    "a {size} {shape} in {colour} {where}",
    "{size} {colour} {shape} ({label})",
    "the {shape} {where} is {colour} and {size}",
    "{colour} {shape}, {size}, {label}",
    "a picture of a {size} {colour} {shape} {where}",
    "{where} sits a {size} {colour} {shape}",
    "one {colour} {shape} {where}, {size}",
)

# Two-object scenes: two compact object phrases joined, so the caption stays short (MiniLM pads every
# caption to its max_length).
OBJECT_PHRASES: tuple[str, ...] = ("{size} {colour} {shape} {label}", "{label} {size} {colour} {shape}")
PAIR_TEMPLATES: tuple[str, ...] = ("{a} and {b}", "{a}; {b}", "{a}, {b}", "{a} with {b}")

# Zero-shot prompts: "{}" is the class name ("red circle"). The ensemble spans sizes and positions, so the
# class embedding averages over the attributes that do not name the class (recipes/demo.yaml uses these).
# "the", not "a": the eval substitutes the class name verbatim, and "a orange circle" would be bad English.
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "{}", "the small {}", "the large {}", "the {} on the left", "the {} on the right", "the {} at the top",
    "the {} at the bottom", "the {} in the centre",
)

_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def _with_articles(text: str) -> str:
    """English article before a vowel: "a orange square" -> "an orange square"."""
    return _ARTICLE.sub("an ", text)


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _fill(template: str, attrs: Attributes, rng: np.random.Generator) -> str:
    cell = (attrs.row, attrs.column)
    return template.format(size=_pick(SIZE_WORDS[attrs.size], rng), colour=attrs.colour, shape=attrs.shape,
                           where=_pick(POSITION_PHRASES[cell], rng), label=_pick(POSITION_LABELS[cell], rng))


def caption(scene: Sequence[Attributes], rng: np.random.Generator) -> str:
    """One caption naming all four attributes of every object, with random templates and synonyms."""
    if len(scene) == 1:
        return _with_articles(_fill(_pick(CAPTION_TEMPLATES, rng), scene[0], rng))
    if len(scene) != 2:
        raise ValueError(f"a demo scene holds one or two objects, got {len(scene)}")
    first, second = (_fill(_pick(OBJECT_PHRASES, rng), attrs, rng) for attrs in scene)
    return _with_articles(_pick(PAIR_TEMPLATES, rng).format(a=first, b=second))
