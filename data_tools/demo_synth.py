"""Procedural tri-modal samples for the demo set: a coloured shape (image), a tone (audio), a caption.

The three modalities share one set of attributes, so each carries the same information:
- colour: the shape's fill / the tone's fundamental pitch;
- shape: circle, square or triangle / the tone's timbre (sine, square or sawtooth wave);
- position: left or right in the image / early or late onset in the clip.
Every sample gets small random size, placement, colour, detune, level and noise variations so the task
is not a lookup. Only numpy and PIL are used.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40), "green": (45, 165, 65), "blue": (45, 75, 215), "yellow": (225, 205, 45),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right")
# A4 down a major-ish ladder: far enough apart that a 1.5 % detune never confuses two colours.
PITCH_HZ = {"red": 220.0, "green": 277.2, "blue": 349.2, "yellow": 440.0}
CAPTION_TEMPLATES = (
    "a {colour} {shape} on the {position}",
    "a photo of a {colour} {shape}, {position} side",
    "a {colour} {shape} to the {position}",
    "{position} side: a {colour} {shape}",
    "there is a {colour} {shape} on the {position} of the picture",
)
SUPERSAMPLE = 4  # draw large, then downsample: anti-aliased edges at tiny image sizes


@dataclass(frozen=True)
class Attributes:
    colour: str
    shape: str
    position: str

    @property
    def classname(self) -> str:
        return f"{self.colour} {self.shape}"


def caption(attrs: Attributes, rng: np.random.Generator) -> str:
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(colour=attrs.colour, shape=attrs.shape, position=attrs.position)


def _shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx - 0.95 * r, cy + 0.75 * r), (cx + 0.95 * r, cy + 0.75 * r)]
    return [(cx - r, cy - r), (cx + r, cy + r)]


def render_image(attrs: Attributes, size: int, rng: np.random.Generator) -> Image.Image:
    """The shape on a noisy grey background, centred in the left or right third with jitter."""
    big = size * SUPERSAMPLE
    grey = int(rng.integers(95, 165))
    canvas = Image.new("RGB", (big, big), (grey, grey, grey))
    radius = big * rng.uniform(0.14, 0.22)
    cx = big * ((0.28 if attrs.position == "left" else 0.72) + rng.uniform(-0.05, 0.05))
    cy = big * (0.5 + rng.uniform(-0.15, 0.15))
    fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[attrs.colour])
    draw = ImageDraw.Draw(canvas)
    outline = _shape_outline(attrs.shape, cx, cy, radius)
    painters = {"circle": draw.ellipse, "square": draw.rectangle, "triangle": draw.polygon}
    painters[attrs.shape](outline, fill=fill)
    pixels = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    pixels += rng.normal(0.0, 10.0, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _sine(phase: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * phase)


def _square(phase: np.ndarray) -> np.ndarray:
    return 0.6 * np.sign(np.sin(2 * np.pi * phase))  # scaled to roughly the sine's loudness


def _sawtooth(phase: np.ndarray) -> np.ndarray:
    return 0.75 * (2.0 * (phase % 1.0) - 1.0)


TIMBRES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "circle": _sine, "square": _square, "triangle": _sawtooth,
}


def _envelope(num: int, sample_rate: int, onset: int, length: int) -> np.ndarray:
    """Zero, a 10 ms linear attack, a hold, a 40 ms release, zero."""
    env = np.zeros(num, dtype=np.float32)
    end = min(num, onset + length)
    env[onset:end] = 1.0
    attack, release = max(1, sample_rate // 100), max(1, sample_rate // 25)
    ramp_up = min(attack, end - onset)
    env[onset : onset + ramp_up] = np.linspace(0.0, 1.0, ramp_up, endpoint=False)
    ramp_down = min(release, end - onset)
    env[end - ramp_down : end] *= np.linspace(1.0, 0.0, ramp_down)
    return env


def render_audio(attrs: Attributes, sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Mono float32 clip: the shape's timbre at the colour's (detuned) pitch, early (left) or late (right)."""
    num = max(1, round(sample_rate * seconds))
    t = np.arange(num, dtype=np.float64) / sample_rate
    pitch = PITCH_HZ[attrs.colour] * (1.0 + rng.uniform(-0.015, 0.015))
    tone = TIMBRES[attrs.shape](pitch * t + rng.uniform())
    start = rng.uniform(0.03, 0.12) if attrs.position == "left" else rng.uniform(0.45, 0.55)
    env = _envelope(num, sample_rate, int(start * num), int(0.4 * num))
    wave = rng.uniform(0.35, 0.5) * env * tone + rng.normal(0.0, rng.uniform(0.005, 0.02), num)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
