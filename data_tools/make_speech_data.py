"""Spoken-word audio-text shards synthesised with espeak-ng, with held-out classes for zero-shot evaluation.

    apt-get install espeak-ng                                  # Debian/Ubuntu; `make setup` does it in CI
    python -m data_tools.make_speech_data --out data/speech    # ~3700 clips, well under a minute

Each clip is a short spoken command, "<verb> <target>" (e.g. "turn left", "jump home"), or in `val_words`
a single word, spoken by one of several espeak-ng voices and variants at a random speed and pitch, with a
random lead-in silence, gain and background noise. Captions are the words, sometimes inside a carrier
phrase ("someone saying turn left.").

Layout (members flac + txt + idx; val splits add cls, the line number in their classnames.txt):
  OUT/train/       commands of the TRAIN vocabulary
  OUT/val/         commands of the HELD-OUT vocabulary: never heard in training, but built from words that
                   were (each verb and target occurs in train in other combinations); OUT/classnames.txt
  OUT/val_words/   single words never heard at all; OUT/val_words/classnames.txt
  OUT/train_classnames.txt, OUT/info.json
The train and held-out vocabularies are disjoint: zero-shot on `val` measures compositional generalisation,
on `val_words` whether the audio tower generalises to unheard words through the frozen text anchor alone.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from data_tools.demo_synth import encode_flac
from data_tools.shard_writer import ShardSet, SizedShardWriter
from data_tools.tool_args import add_shard_output, add_speech_synthesis, tool_parser
from mmembed.progress import progress_iter

VERBS: tuple[str, ...] = ("turn", "move", "look", "jump", "point", "walk")
TARGETS: tuple[str, ...] = ("left", "right", "up", "down", "forward", "back", "home", "out")
ALL_COMMANDS: tuple[str, ...] = tuple(f"{v} {t}" for v, t in itertools.product(VERBS, TARGETS))
# One held-out command per target, verbs cycling: every verb and every target keeps >= 5 train commands.
HELD_OUT: tuple[str, ...] = tuple(f"{VERBS[i % len(VERBS)]} {t}" for i, t in enumerate(TARGETS))
TRAIN_COMMANDS: tuple[str, ...] = tuple(c for c in ALL_COMMANDS if c not in HELD_OUT)
# Words that occur nowhere in the commands.
NOVEL_WORDS: tuple[str, ...] = ("apple", "river", "seven", "yellow", "window", "music", "orange", "tiger",
                                "pencil", "garden", "coffee", "rabbit")

VOICES: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")
VARIANTS: tuple[str, ...] = ("", "+m1", "+m2", "+m3", "+m4", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5")
CARRIERS: tuple[str, ...] = ("{}", "{}", "{}.", "someone saying {}.", "a voice saying {}.", "the word {}.")
SPEED_WPM = (120, 200)
# Independent random streams per split, so that changing one split's size leaves the others unchanged.
SPLIT_STREAMS = {"train": 0, "val": 1, "val_words": 2}
PITCH = (20, 80)

INSTALL_HINT = ("espeak-ng is required to synthesise speech but was not found on PATH. Install it with "
                "`apt-get install espeak-ng` (Debian/Ubuntu; `make setup` does this when apt-get is "
                "available) or `brew install espeak-ng` (macOS).")


class EspeakMissing(RuntimeError):
    """espeak-ng is not installed; the message says how to install it."""


def espeak_path() -> str:
    """The espeak-ng executable, or EspeakMissing with installation instructions."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakMissing(INSTALL_HINT)
    return path


@dataclass(frozen=True)
class Utterance:
    """Everything that determines one clip, drawn up front so that output depends only on the seed."""

    words: str
    caption: str
    voice: str
    speed: int
    pitch: int
    lead_in_s: float
    gain: float
    snr_db: float
    noise_seed: int


def synthesise(executable: str, text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's float32 waveform and sample rate (22050 Hz) for `text`."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        cmd = [executable, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), "--", text]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"espeak-ng failed on {text!r} with voice {voice}: {result.stderr.strip()}")
        wave, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if wave.shape[0] == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {voice}")
    return wave.mean(axis=1), int(rate)


def render(utt: Utterance, wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """Resample, prepend silence, scale to the drawn peak and add white noise at the drawn SNR."""
    wave = soxr.resample(wave, rate, sample_rate).astype(np.float32)
    wave = np.concatenate([np.zeros(round(utt.lead_in_s * sample_rate), np.float32), wave])
    wave *= utt.gain / max(float(np.abs(wave).max()), 1e-6)
    signal_power = float(np.mean(wave**2))
    noise = np.random.default_rng(utt.noise_seed).standard_normal(wave.shape).astype(np.float32)
    wave += noise * np.sqrt(signal_power / 10 ** (utt.snr_db / 10))
    return np.clip(wave, -1.0, 1.0)


def draw_utterances(vocabulary: Sequence[str], count: int, rng: np.random.Generator,
                    voices: Sequence[str] = VOICES) -> list[Utterance]:
    """`count` utterances cycling through the vocabulary (balanced classes), in shuffled order."""
    words = [vocabulary[i % len(vocabulary)] for i in range(count)]
    words = [words[i] for i in rng.permutation(count)]
    return [Utterance(words=w, caption=str(rng.choice(CARRIERS)).replace("{}", w),
                      voice=f"{rng.choice(voices)}{rng.choice(VARIANTS)}",
                      speed=int(rng.integers(*SPEED_WPM, endpoint=True)),
                      pitch=int(rng.integers(*PITCH, endpoint=True)), lead_in_s=float(rng.uniform(0.0, 0.25)),
                      gain=float(rng.uniform(0.3, 0.9)), snr_db=float(rng.uniform(15.0, 40.0)),
                      noise_seed=int(rng.integers(2**31))) for w in words]


def synthesise_clips(utterances: Sequence[Utterance], sample_rate: int, workers: int) -> Iterator[np.ndarray]:
    """The rendered clip of each utterance, in order, with `workers` espeak-ng processes at a time."""
    executable = espeak_path()
    # espeak-ng runs as a subprocess, so threads overlap its work without contending for the GIL.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = pool.map(lambda u: synthesise(executable, u.words, u.voice, u.speed, u.pitch), utterances)
        for utt, (wave, rate) in zip(utterances, jobs):
            yield render(utt, wave, rate, sample_rate)


def write_split(out_dir: Path, split: str, vocabulary: Sequence[str], count: int, *, labelled: bool,
                sample_rate: int, samples_per_shard: int, seed: int, workers: int, progress: bool,
                stream: int | None = None, voices: Sequence[str] = VOICES) -> ShardSet:
    """`count` clips cycling through `vocabulary` into OUT_DIR/SPLIT/; `cls` (when labelled) is the word's
    position in `vocabulary`. Each split draws from its own random stream (default SPLIT_STREAMS[split])."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split] if stream is None else stream])
    utterances = draw_utterances(vocabulary, count, rng, voices)
    with SizedShardWriter(out_dir / split, split, samples_per_shard=samples_per_shard) as writer:
        clips = progress_iter(synthesise_clips(utterances, sample_rate, workers), total=count,
                              desc=f"speech {split}", unit="clip", disable=not progress)
        for i, (utt, wave) in enumerate(zip(utterances, clips)):
            members: dict[str, bytes | str] = {"flac": encode_flac(wave, sample_rate), "txt": utt.caption}
            if labelled:
                members["cls"] = str(vocabulary.index(utt.words))
            writer.write(f"{split}{i:07d}", members)
    return writer.close()


def _write_lines(path: Path, lines: Sequence[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def make_speech_data(out_dir: str | Path, *, train_samples: int = 3000, val_samples: int = 480,
                     val_word_samples: int = 240, sample_rate: int = 16000, samples_per_shard: int = 500,
                     seed: int = 0, workers: int = 2, progress: bool = False) -> dict[str, Any]:
    """Write the spoken-word set under `out_dir`; returns (and saves as info.json) its layout and counts."""
    espeak_path()  # fail before writing anything
    if min(train_samples, val_samples, val_word_samples) < 1:
        raise ValueError(f"need at least one sample per split, got train={train_samples} "
                         f"val={val_samples} val_words={val_word_samples}")
    out = Path(out_dir)
    common = {"sample_rate": sample_rate, "samples_per_shard": samples_per_shard, "seed": seed,
              "workers": workers, "progress": progress}
    splits = {
        "train": write_split(out, "train", TRAIN_COMMANDS, train_samples, labelled=False, **common),
        "val": write_split(out, "val", HELD_OUT, val_samples, labelled=True, **common),
        "val_words": write_split(out, "val_words", NOVEL_WORDS, val_word_samples, labelled=True, **common),
    }
    info = {
        "splits": {name: {"urls": s.pattern, "num_samples": s.num_samples, "num_shards": len(s.shards)}
                   for name, s in splits.items()},
        "classnames": _write_lines(out / "classnames.txt", HELD_OUT),
        "classnames_words": _write_lines(out / "val_words" / "classnames.txt", NOVEL_WORDS),
        "train_classnames": _write_lines(out / "train_classnames.txt", TRAIN_COMMANDS),
        "held_out": list(HELD_OUT), "novel_words": list(NOVEL_WORDS), "sample_rate": sample_rate,
        "seed": seed, "voices": list(VOICES), "variants": list(VARIANTS),
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return {**info, "info": str(out / "info.json")}


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("make_speech_data", __doc__)
    add_shard_output(parser, default_out=Path("data/speech"), samples_per_shard=500)
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--val-samples", type=int, default=480)
    parser.add_argument("--val-word-samples", type=int, default=240)
    add_speech_synthesis(parser)
    args = parser.parse_args(argv)
    try:
        info = make_speech_data(args.out, train_samples=args.train_samples, val_samples=args.val_samples,
                                val_word_samples=args.val_word_samples, sample_rate=args.sample_rate,
                                samples_per_shard=args.samples_per_shard, seed=args.seed,
                                workers=args.workers, progress=True)
    except EspeakMissing as err:
        raise SystemExit(f"error: {err}") from None
    for name, split in info["splits"].items():
        print(f"{name}: {split['num_samples']} clips in {split['num_shards']} shards: {split['urls']}")
    print(f"zero-shot classes: {info['classnames']} and {info['classnames_words']}  info: {info['info']}")


if __name__ == "__main__":
    main()
