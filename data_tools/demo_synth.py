"""Procedural tri-modal samples for the demo set: coloured shapes (image), tones (audio), a caption.

A scene holds one object, or two in distant grid cells. The image and the audio clip encode the same four
attributes of each object, and the caption names them
(data_tools/demo_captions.py):
- colour (6): the shape's fill / the tone's fundamental pitch;
- shape (5): circle, square, triangle, cross or ring / the tone's timbre (sine, square wave, sawtooth, bell,
  pulse);
- size (2): the shape's radius / the note's length;
- position (3 x 3 grid): horizontal place / the note's onset (early, middle, late), and vertical place / the
  note's envelope (top: a decaying pluck, middle: steady, bottom: a swell).
Shapes carry a dark outline, as in a drawing, so a shape's contour looks the same in every colour. Every
sample gets random jitter in placement, radius, fill, background, detune, level and noise, so the task is
not a lookup. Only numpy, PIL and soundfile are used.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "orange": (240, 135, 30), "yellow": (225, 215, 45),
    "green": (45, 165, 65), "blue": (45, 85, 220), "purple": (140, 50, 175),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
SIZES = ("small", "large")
# Grid cells: (row, column). The caption wording lives in demo_captions.
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")
POSITIONS: tuple[tuple[str, str], ...] = tuple((r, c) for r in ROWS for c in COLUMNS)
# About four semitones apart (G3 B3 D#4 G4 B4 D#5): a 1.5 % detune never confuses two colours.
PITCH_HZ = {"red": 196.0, "orange": 247.0, "yellow": 311.1, "green": 392.0, "blue": 493.9, "purple": 622.3}
RADIUS = {"small": (0.11, 0.125), "large": (0.17, 0.185)}  # fraction of the image side
NOTE_SECONDS = {"small": (0.18, 0.22), "large": (0.36, 0.42)}
CELL_CENTRE = {"left": 0.24, "centre": 0.5, "right": 0.76, "top": 0.24, "middle": 0.5, "bottom": 0.76}
ONSET_SECONDS = {"left": (0.03, 0.08), "centre": (0.27, 0.32), "right": (0.51, 0.56)}
OUTLINE = 0.055  # outline width, a fraction of the image side (about 1.8 px at 32 px)
SUPERSAMPLE = 4  # draw large, then downsample: anti-aliased edges at tiny image sizes


@dataclass(frozen=True)
class Attributes:
    colour: str
    shape: str
    size: str
    row: str
    column: str

    @property
    def classname(self) -> str:
        """The zero-shot class: the (colour, shape) combination."""
        return f"{self.colour} {self.shape}"

    @property
    def combo(self) -> tuple[str, str]:
        return (self.colour, self.shape)


def _cross(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    t = 0.36 * r  # half the arm thickness
    return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
            (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
            (cx - r, cy - t), (cx - t, cy - t)]


def _paint(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
           fill: tuple[int, ...], grow: float = 0.0) -> None:
    """The shape of radius r, grown by `grow` on every side (the outline pass draws it grown, in dark)."""
    if shape == "ring":
        width = 0.42 * r
        # Grown on both sides of the band: outer radius r + grow, band width + 2 grow.
        draw.ellipse([(cx - r - grow, cy - r - grow), (cx + r + grow, cy + r + grow)], outline=fill,
                     width=max(1, round(width + 2 * grow)))
        return
    r = r + grow
    if shape == "circle":
        draw.ellipse([(cx - r, cy - r), (cx + r, cy + r)], fill=fill)
    elif shape == "square":
        side = 0.88 * r  # a square of equal area to the circle looks the same size
        draw.rectangle([(cx - side, cy - side), (cx + side, cy + side)], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - 1.1 * r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
    elif shape == "cross":
        draw.polygon(_cross(cx, cy, 1.05 * r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    # Lightness from dim to bright and a faint random tint: each shape colour then meets edges of every
    # polarity and of many colour differences, so shape is not learnable as one colour contrast.
    lightness = rng.uniform(50, 205)
    tint = rng.normal(0.0, 1.0, 3)
    tint *= rng.uniform(0, 30) / max(float(np.linalg.norm(tint)), 1e-6)
    return tuple(int(v) for v in np.clip(lightness + tint, 0, 255))


def _draw_object(draw: ImageDraw.ImageDraw, attrs: Attributes, big: int, rng: np.random.Generator) -> None:
    radius = big * rng.uniform(*RADIUS[attrs.size])
    cx = big * (CELL_CENTRE[attrs.column] + rng.uniform(-0.03, 0.03))
    cy = big * (CELL_CENTRE[attrs.row] + rng.uniform(-0.03, 0.03))
    fill = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in COLOURS[attrs.colour])
    # A dark outline, as in a drawing: the shape's contour is then the same edge whatever its colour.
    dark = int(rng.integers(15, 45))
    _paint(draw, attrs.shape, cx, cy, radius, (dark, dark, dark), grow=OUTLINE * big)
    _paint(draw, attrs.shape, cx, cy, radius, fill)


def render_image(scene: Sequence[Attributes], size: int, rng: np.random.Generator) -> Image.Image:
    """Each object of the scene in its grid cell (with jitter) on a noisy, dim-to-bright, faintly tinted
    background."""
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), _background(rng))
    draw = ImageDraw.Draw(canvas)
    for attrs in scene:
        _draw_object(draw, attrs, big, rng)
    pixels = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    pixels += rng.normal(0.0, 8.0, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _sine(phase: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * phase)


def _square(phase: np.ndarray) -> np.ndarray:
    return 0.6 * np.sign(np.sin(2 * np.pi * phase))  # scaled to roughly the sine's loudness


def _sawtooth(phase: np.ndarray) -> np.ndarray:
    return 0.75 * (2.0 * (phase % 1.0) - 1.0)


def _bell(phase: np.ndarray) -> np.ndarray:
    # Inharmonic partials (a struck bar's ratios): unlike the three harmonic timbres, no partial sits on a
    # multiple of the fundamental. The fundamental stays the strongest, so the pitch still names the colour.
    return 0.7 * (np.sin(2 * np.pi * phase) + 0.5 * np.sin(2 * np.pi * 2.76 * phase)
                  + 0.35 * np.sin(2 * np.pi * 5.40 * phase))


def _pulse(phase: np.ndarray) -> np.ndarray:
    # A pulse train of 20 % duty: strong harmonics (the 2nd at 0.81, the 3rd at 0.54 of the fundamental), a buzz.
    return 1.75 * ((phase % 1.0) < 0.2) - 0.35  # zero mean; RMS near the sine's


TIMBRES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "circle": _sine, "square": _square, "triangle": _sawtooth, "cross": _bell, "ring": _pulse,
}


def _envelope(num: int, sample_rate: int, onset: int, length: int, row: str) -> np.ndarray:
    """Zero, a 10 ms attack, the row's contour over the note, a 30 ms release, zero."""
    env = np.zeros(num, dtype=np.float32)
    end = min(num, onset + length)
    span = max(1, end - onset)
    x = np.linspace(0.0, 1.0, span, endpoint=False)
    contour = {"top": np.exp(-2.0 * x), "middle": np.ones_like(x), "bottom": 0.15 + 0.85 * x}[row]
    env[onset:end] = contour[: end - onset]
    attack, release = max(1, sample_rate // 100), max(1, sample_rate * 3 // 100)
    ramp_up = min(attack, end - onset)
    env[onset : onset + ramp_up] *= np.linspace(0.0, 1.0, ramp_up, endpoint=False)
    ramp_down = min(release, end - onset)
    env[end - ramp_down : end] *= np.linspace(1.0, 0.0, ramp_down)
    return env


def _note(attrs: Attributes, t: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One object's note: the shape's timbre at the colour's (detuned) pitch; onset, length and envelope
    from the column, size and row (as fractions of a 1 s clip, so shorter clips keep the layout)."""
    num = len(t)
    pitch = PITCH_HZ[attrs.colour] * (1.0 + rng.uniform(-0.015, 0.015))
    tone = TIMBRES[attrs.shape](pitch * t + rng.uniform())
    start = int(rng.uniform(*ONSET_SECONDS[attrs.column]) * num)
    length = int(rng.uniform(*NOTE_SECONDS[attrs.size]) * num)
    return rng.uniform(0.35, 0.5) * _envelope(num, sample_rate, start, length, attrs.row) * tone


def render_audio(scene: Sequence[Attributes], sample_rate: int, seconds: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Mono float32 clip: one note per object of the scene, plus a little noise."""
    num = max(1, round(sample_rate * seconds))
    t = np.arange(num, dtype=np.float64) / sample_rate
    # Two notes at once stay below clipping: each is scaled by 1/sqrt(number of objects).
    wave = sum(_note(attrs, t, sample_rate, rng) for attrs in scene) / np.sqrt(len(scene))
    wave = wave + rng.normal(0.0, rng.uniform(0.005, 0.02), num)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
