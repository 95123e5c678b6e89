"""Spoken single words from a 1000-word vocabulary (espeak-ng), with a list of words never heard in
training: the data of the "can a text tower generalise to unheard words?" experiment (docs/audio.md).

    apt-get install espeak-ng                                          # Debian/Ubuntu; `make setup` does it
    python -m data_tools.make_speech_words --out data/speech_words     # 8000 clips, ~2 CPU-minutes

Each clip is one word spoken by one of 8 espeak-ng English accents x 11 voice variants at a random speed
and pitch, with a random lead-in silence, gain and white noise (as in make_speech_data). Captions are the
word, sometimes inside a carrier phrase ("someone saying garden."). Every word gets the same number of
clips.

Layout (members flac + txt + idx; val splits add cls, the line number in their classnames.txt):
  OUT/train/          TRAIN_WORDS (900 words), `--train-clips-per-word` clips each
  OUT/val_heard/      new recordings of HEARD_EVAL_WORDS (100 of the train words); classnames.txt
  OUT/val_unheard/    UNHEARD_WORDS (100 words that occur nowhere in train); classnames.txt
  OUT/train_words.txt, OUT/info.json
The vocabulary holds no two words that espeak-ng (en-us) pronounces alike, so no unheard word is a
homophone of a train word (tests/test_speech_words.py checks it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_tools.make_speech_data import EspeakMissing, espeak_path, write_split
from data_tools.tool_args import add_shard_output, add_speech_synthesis, tool_parser


def _words(block: str) -> tuple[str, ...]:
    return tuple(block.split())


# 1000 common English words (homophone pairs such as right/write removed), split once at random into 900
# train words and 100 unheard words; 100 train words are also the classes of the heard-word evaluation.
TRAIN_WORDS: tuple[str, ...] = _words("""
    able above across action actor address adult afraid afternoon against agent air alive all allow along always
    ancient anger angry animal ankle any apply area arm arrive article artist asleep attack aunt avenue avoid
    awful back bacon bad bag bake banana bar beach bear beard beat beauty become bed bee beef begin behind
    believe bell belt bend better between big bill bird birthday biscuit block blood blossom board bold bonus
    book border boring bottle box brain brave bread brick bridge brown bucket budget build bullet burn bus cabin
    calendar campus canal candy captain carbon card carpet carrot carry case catch cattle cause ceiling cement
    center century chain chance channel chapter cheap chef chicken chief child choose class clear clerk clever
    cliff climb cloud clown club coast coat coin collect color comfort concert consider control cook cool copy
    corner correct cost couch couple cover cow cradle crater crazy cream credit creek crew cricket crime crisp
    critic crop crowd crown cube cupboard current cushion cute dad damage danger dark dawn decade december
    degree deny depend desert design desk diamond dirt disease dive doctor document dog doll dolphin domain
    donkey door dove drawer drift drop drum eager eagle earn east edge egg eight either elbow elephant elevator
    emerge empty end energy enjoy enough entry envelope erase error event evidence excite excuse exercise exist
    exit expert explain express extra eye faint fair fame famous fancy fantasy far father fault feather february
    fence few fiber field fifteen fifty fight file final finish firm five flash flat flavor float flower foam
    focus fog follow foot forest fossil fox frame friday friend frost fruit fun funny gadget gallery game garage
    garden gas gate gauge genius gentle giraffe give globe glove gold golf good grab grace grade grain grape
    grass gravity great grid grief grocery guess gun habit hair half hammer harbor hard harvest hat head heart
    heavy hidden hill hobby hockey holiday home hope horse hospital host hotel hover human humble humor hurry
    husband identify ignore image impact improve inch income index infant injury inner inside install ivory
    jacket jaguar january jar jazz jeans join journey juice jump junior justice key kiss kitchen lady lamp
    language lava lawn lazy leader leave leg length leopard lesson letter license lift limb listen load loan
    lobster local logic lonely long loop lottery loud lounge love luggage lumber lunch magic maid mail major
    make mango manual maple marble market marriage math matrix meadow media member memory menu mercy merge merit
    mesh metal middle midnight million mimic mind minimum minor minute miracle mirror mixture mobile model
    moment money monitor monkey moon moral morning mosquito mother mountain move movie muffin muscle mushroom
    music mystery napkin narrow nasty nation nature neck negative neglect neither nephew nerve nest never news
    next noise nominee nose notable nothing novel now oak obey object ocean odor often oil olive olympic omit
    once online option orange orbit orchard order ordinary organ orient original other outer outside oval own
    oyster ozone pact pair palm panda panel panic panther paper parent parrot party pass patch patrol pattern
    pause payment pelican penalty pencil pepper perfect permit person photo picnic pig pigeon pill pipe pistol
    pitch pizza place plastic pledge pluck plunge polar pole police pool portion position post potato pottery
    powder power practice praise predict prefer prepare present pretty pride primary profit project proof
    prosper provide pull pulse pumpkin punch pupil puppy pyramid quality quantum question quick quit quiz race
    rack radar rail rain raise ranch range rare rate razor real reason rebuild receive record recycle regret
    regular release relief remember remind remove renew reopen report require rescue resemble resist result
    retire reunion review reward rhythm rib ribbon ride ridge rigid risk rival robust rocket roof room rotate
    route royal rubber rude rug run runway rural sadness salmon salon salt same sample satisfy sauce scale
    school science scout screen script scrub search seat secret security seek select seminar sentence service
    session settle setup shadow shaft share shell ship shoe shoot shop short shoulder shrimp shrug shuffle shy
    sibling sick siege silk silly silver similar simple situate size sketch ski skill skin skirt skull slam
    slice slim slot slow slush smoke sniff soap soccer sock soldier solid solution solve song soon sorry sort
    soul sound soup source space spawn special speed spell spend spice split spoil sponsor sport spot spring
    squeeze squirrel staff stairs state stay steak steel sting stock stove strategy strike style subject submit
    success sugar sunset super supply surface surge surprise surround suspect sustain swallow swamp swear sweet
    swift swim switch symptom syrup system table tag talk target task taste taxi teach tenant tent test thank
    that theory they thrive throw ticket tide tiger timber tiny tip title toast tobacco today toddler toilet
    tomato tone tongue tool topic tortoise toss tourist tower town toy traffic tragic transfer trap trash travel
    treat tribe trigger trip trouble truly trumpet try tube tuition turkey turn twelve twice twin twist two type
    typical unable unaware uncover undo unfold unknown unusual update upgrade uphold upper upset usage utility
    vacant valid valley valve van various vehicle vendor venture verb verify version very vessel veteran viable
    vicious video vintage visa visit visual vital vivid vocal voice volume vote wait warm wash wasp waste way
    wealth weasel weather web weekend weird wheel whip wide will window wing wink winter wire wisdom wise wish
    witness woman wonder wool word world worry wrap wreck wrist wrong yard you zebra zoo
""")
UNHEARD_WORDS: tuple[str, ...] = _words("""
    active alone attempt autumn band basket bean berry blade boil branch bundle burden castle cheek cherry
    citizen coconut combine curious demand diary dinner dust duty effort entire fabric festival forget gap
    glance grow guest guitar hand happy hero hold huge idle jewel jungle knock laundry layer lucky mammal margin
    material melody misery miss mistake museum north notice observe oven paddle palace path peasant picture poem
    pony popular prevent protect proud raccoon rather ready remain rice rifle right road since siren sister
    smart spy still suit sure thunder tray tunnel ugly unlock unveil useful useless view warfare water whisper
    wolf zero
""")
HEARD_EVAL_WORDS: tuple[str, ...] = _words("""
    across afraid apply arrive aunt bed blossom bold brave bridge cabin carpet carry clown coat couple cover
    cupboard damage degree desk door drum either exit fancy frame giraffe grain habit half humble inside lady
    leader limb loop lottery loud marble metal minimum mirror mixture money now obey online option pair panic
    party penalty pencil picnic pigeon plastic present pretty project prosper punch pupil rack record resemble
    risk roof room scrub seminar session shaft siege simple slice solve sorry spice sponsor stairs sustain swim
    symptom tenant thank that timber tomato tourist transfer truly unusual valley vehicle visa voice volume
    waste wrong
""")

# Eight English accents of espeak-ng (each combined with one of make_speech_data.VARIANTS per clip).
WORD_VOICES: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan",
                                "en-gb-x-gbcwmd", "en-us-nyc")
# Random streams of the splits (distinct from make_speech_data's, so the two sets never share recordings).
WORD_STREAMS = {"train": 10, "val_heard": 11, "val_unheard": 12}


def choose_words(train_words: int, eval_words: int) -> dict[str, tuple[str, ...]]:
    """The words of each split for a (possibly smaller) set: the first `eval_words` heard and unheard
    evaluation words, and `train_words` train words that include every heard evaluation word."""
    if not 1 <= eval_words <= len(HEARD_EVAL_WORDS):
        raise ValueError(f"eval_words must lie in [1, {len(HEARD_EVAL_WORDS)}], got {eval_words}")
    if not eval_words <= train_words <= len(TRAIN_WORDS):
        raise ValueError(f"train_words must lie in [eval_words={eval_words}, {len(TRAIN_WORDS)}], got {train_words}")
    heard = HEARD_EVAL_WORDS[:eval_words]
    others = [w for w in TRAIN_WORDS if w not in set(heard)][: train_words - eval_words]
    chosen = set(heard) | set(others)
    return {"train": tuple(w for w in TRAIN_WORDS if w in chosen), "val_heard": heard,
            "val_unheard": UNHEARD_WORDS[:eval_words]}


def _write_lines(path: Path, lines: Sequence[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def make_speech_words(out_dir: str | Path, *, train_words: int = len(TRAIN_WORDS),
                      eval_words: int = len(HEARD_EVAL_WORDS), train_clips_per_word: int = 8,
                      eval_clips_per_word: int = 4, sample_rate: int = 16000, samples_per_shard: int = 500,
                      seed: int = 0, workers: int = 2, progress: bool = False) -> dict[str, Any]:
    """Write the spoken-word set under `out_dir`; returns (and saves as info.json) its layout and counts."""
    espeak_path()  # fail before writing anything
    if min(train_clips_per_word, eval_clips_per_word) < 1:
        raise ValueError(f"need at least one clip per word, got train={train_clips_per_word} "
                         f"eval={eval_clips_per_word}")
    words = choose_words(train_words, eval_words)
    out = Path(out_dir)
    clips = {"train": train_clips_per_word, "val_heard": eval_clips_per_word, "val_unheard": eval_clips_per_word}
    splits = {
        name: write_split(out, name, vocabulary, len(vocabulary) * clips[name], labelled=name != "train",
                          sample_rate=sample_rate, samples_per_shard=samples_per_shard, seed=seed,
                          workers=workers, progress=progress, stream=WORD_STREAMS[name], voices=WORD_VOICES)
        for name, vocabulary in words.items()
    }
    info = {
        "splits": {name: {"urls": s.pattern, "num_samples": s.num_samples, "num_shards": len(s.shards),
                          "num_words": len(words[name]), "clips_per_word": clips[name]}
                   for name, s in splits.items()},
        "classnames_heard": _write_lines(out / "val_heard" / "classnames.txt", words["val_heard"]),
        "classnames_unheard": _write_lines(out / "val_unheard" / "classnames.txt", words["val_unheard"]),
        "train_words": _write_lines(out / "train_words.txt", words["train"]),
        "sample_rate": sample_rate, "seed": seed, "voices": list(WORD_VOICES),
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return {**info, "info": str(out / "info.json")}


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("make_speech_words", __doc__)
    add_shard_output(parser, default_out=Path("data/speech_words"), samples_per_shard=500)
    parser.add_argument("--train-words", type=int, default=len(TRAIN_WORDS), help="a smaller set: fewer words")
    parser.add_argument("--eval-words", type=int, default=len(HEARD_EVAL_WORDS),
                        help="classes of each evaluation split (heard and unheard)")
    parser.add_argument("--train-clips-per-word", type=int, default=8)
    parser.add_argument("--eval-clips-per-word", type=int, default=4)
    add_speech_synthesis(parser)
    args = parser.parse_args(argv)
    try:
        info = make_speech_words(args.out, train_words=args.train_words, eval_words=args.eval_words,
                                 train_clips_per_word=args.train_clips_per_word,
                                 eval_clips_per_word=args.eval_clips_per_word, sample_rate=args.sample_rate,
                                 samples_per_shard=args.samples_per_shard, seed=args.seed, workers=args.workers,
                                 progress=True)
    except (EspeakMissing, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    for name, split in info["splits"].items():
        print(f"{name}: {split['num_samples']} clips of {split['num_words']} words in {split['num_shards']} "
              f"shards: {split['urls']}")
    print(f"zero-shot classes: {info['classnames_heard']} and {info['classnames_unheard']}  info: {info['info']}")


if __name__ == "__main__":
    main()
