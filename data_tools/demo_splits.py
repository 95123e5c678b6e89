"""Which (colour, shape) combinations the demo trains on and which it holds out for zero-shot.

Two splits, both over 6 colours x 5 shapes = 30 combinations:

- `scatter` (the main task): 8 combinations held out along a cycle, red circle - red square - yellow
  square - yellow triangle - green triangle - green cross - purple cross - purple circle. Every colour is
  still seen in training with at least three shapes and every shape with at least four colours, and among
  the held-out classes each colour and each shape occurs twice, so neither attribute alone names a
  held-out class (chance 1/8).
- `block` (harder): red and blue x circle, square, triangle and cross held out. Red and blue are only ever
  seen as rings, so the model must carry "red" from one shape to four it never saw red (chance 1/8).

Zero-shot is reported on the held-out classes alone and "generalised" (all 30 compete, chance 1/30), where
the seen combinations are tempting wrong answers.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

from data_tools.demo_synth import COLOURS, SHAPES

Combo = tuple[str, str]
ALL_COMBOS: tuple[Combo, ...] = tuple(itertools.product(COLOURS, SHAPES))


@dataclass(frozen=True)
class Split:
    name: str
    held_out: tuple[Combo, ...]
    about: str

    @property
    def train_combos(self) -> tuple[Combo, ...]:
        return tuple(c for c in ALL_COMBOS if c not in self.held_out)


SPLITS: dict[str, Split] = {
    "scatter": Split("scatter", (
        ("red", "circle"), ("red", "square"), ("yellow", "square"), ("yellow", "triangle"),
        ("green", "triangle"), ("green", "cross"), ("purple", "cross"), ("purple", "circle"),
    ), "8 colour-shape combinations scattered over the grid; every colour and shape is seen in training "
       "with at least three others"),
    "block": Split("block", tuple(itertools.product(("red", "blue"), ("circle", "square", "triangle", "cross"))),
                   "a block: red and blue x circle, square, triangle, cross; red and blue are seen only as rings"),
}


def classname(combo: Combo) -> str:
    return f"{combo[0]} {combo[1]}"


def partners(combos: tuple[Combo, ...]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({colour: shapes it occurs with}, {shape: colours it occurs with}) over `combos`."""
    shapes_of: dict[str, set[str]] = defaultdict(set)
    colours_of: dict[str, set[str]] = defaultdict(set)
    for colour, shape in combos:
        shapes_of[colour].add(shape)
        colours_of[shape].add(colour)
    return dict(shapes_of), dict(colours_of)


def min_training_partners(split: Split) -> int:
    """The fewest distinct partners any colour or shape has in training (the scatter split needs >= 2)."""
    shapes_of, colours_of = partners(split.train_combos)
    if set(shapes_of) != set(COLOURS) or set(colours_of) != set(SHAPES):
        return 0
    return min(len(v) for v in [*shapes_of.values(), *colours_of.values()])


def attribute_alone_names_a_class(split: Split) -> bool:
    """True when some held-out class is the only held-out one with its colour or with its shape."""
    shapes_of, colours_of = partners(split.held_out)
    return any(len(v) < 2 for v in [*shapes_of.values(), *colours_of.values()])
