"""Recipe validation of data sources (mmembed.config.sources): what each source provides and trains, errors
that name the source or pair, and single-source recipes unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fault_support import assert_one_line_error
from train_support import DEMO_RECIPE, REPO, run_cli

from mmembed.config import ConfigError, load_recipe
from mmembed.config.sources import check_sources, trains_every_pair_everywhere
from mmembed.recipe import complete_recipe
from mmembed.recipe import load_recipe as load_complete

BIND = REPO / "recipes" / "trimodal_bind.yaml"


def sources(*entries: str) -> list[str]:
    """Overrides replacing data.train by the given YAML list entries."""
    return [f"data.train=[{', '.join(entries)}]"]


IT = "{name: it, urls: [a.tar], modalities: [image, text]}"
AT = "{name: at, urls: [b.tar], modalities: [audio, text]}"


def test_single_source_recipes_train_every_pair_with_every_modality() -> None:
    config = load_recipe(DEMO_RECIPE)
    (plan,) = check_sources(config)
    assert plan.name == "source0" and plan.modalities == ("image", "text", "audio") and plan.pairs == (0, 1)
    assert trains_every_pair_everywhere([plan], config)


def test_each_source_trains_the_pairs_whose_two_sides_it_provides() -> None:
    config = load_recipe(BIND)
    plans = check_sources(config)
    assert [(p.name, p.modalities, p.pairs) for p in plans] == [
        ("image_text", ("image", "text"), (0,)), ("audio_text", ("audio", "text"), (1,))]
    assert not trains_every_pair_everywhere(plans, config)


def test_explicit_pairs_limit_a_source_to_some_of_the_pairs_it_could_train() -> None:
    config = load_recipe(DEMO_RECIPE, sources("{urls: [a.tar], pairs: ['text,image']}", AT))
    plans = check_sources(config)
    assert plans[0].modalities == ("image", "text", "audio") and plans[0].pairs == (0,)
    assert plans[1].pairs == (1,)


def test_a_pair_that_no_source_provides_is_refused_with_the_names() -> None:
    config = load_recipe(DEMO_RECIPE, sources(IT))
    with pytest.raises(ConfigError, match=r"model\.pairs\[1\] \(audio, text\) is trained by no data source .*"
                                          r"'it' \(weight 1\) provides \[image, text\].*modalities \[audio, text\]"):
        check_sources(config)
    # A source with weight 0 provides nothing.
    with pytest.raises(ConfigError, match=r"model\.pairs\[1\] \(audio, text\)"):
        check_sources(load_recipe(DEMO_RECIPE, sources(IT, AT.replace("}", ", weight: 0}"))))


@pytest.mark.parametrize(("entry", "message"), [
    ("{name: img, urls: [a.tar], modalities: [image]}",
     r"data\.train\[1\] \('img'\) provides \[image\] and trains none of the recipe pairs \(image,text, audio,text\)"),
    ("{name: x, urls: [a.tar], modalities: [sound, text]}",
     r"data\.train\[1\] \('x'\)\.modalities names 'sound', which is not a model modality"),
    ("{name: x, urls: [a.tar], modalities: [image, text], pairs: ['audio,text']}",
     r"data\.train\[1\] \('x'\)\.pairs names 'audio,text', but the source provides only \[image, text\]"),
    ("{name: x, urls: [a.tar], pairs: ['image-text']}", r"pairs names 'image-text', which is not a recipe pair"),
    ("{name: it, urls: [a.tar]}", r"source names must be unique, repeated: \['it'\]"),
    ("{name: 'a b', urls: [a.tar]}", r"data\.train\[1\]\.name 'a b' may only hold letters"),
    ("{name: x, urls: [a.tar], modalities: []}", r"modalities is empty"),
])
def test_bad_sources_are_refused_naming_the_source(entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        complete_recipe(load_recipe(DEMO_RECIPE, sources(IT, entry)))


def test_stateful_losses_need_every_sources_size(tmp_path: Path) -> None:
    (tmp_path / "sizes.json").write_text(json.dumps({"a.tar": 10, "b.tar": 5}))
    urls = {name: str(tmp_path / f"{name}.tar") for name in ("a", "b")}
    overrides = ["model.pairs.0.loss=isogclr", "model.pairs.0.learn_logit_scale=false",
                 *sources(IT.replace("a.tar", urls["a"]), AT.replace("b.tar", urls["b"]))]
    config = load_complete(DEMO_RECIPE, overrides)
    assert config.model.pairs[0].args["num_samples"] == 15  # offsets keep the two sources' rows apart
    overrides[-1] = overrides[-1].replace(urls["b"], str(tmp_path / "elsewhere" / "b.tar"))
    unknown = r"size of data\.train\[1\] \('at'\) is unknown .*data\.train\[1\]\.num_samples"
    with pytest.raises(ConfigError, match=unknown):
        load_complete(DEMO_RECIPE, [*overrides, "model.pairs.0.args={num_samples: 100}"])


def test_the_cli_names_the_unprovided_pair_in_one_line(tmp_path: Path) -> None:
    proc = run_cli(["train", str(DEMO_RECIPE), f"output_dir={tmp_path / 'run'}", *sources(IT)])
    assert_one_line_error(proc, "train", "model.pairs[1] (audio, text)", "'it'")
    assert not (tmp_path / "run").exists()
