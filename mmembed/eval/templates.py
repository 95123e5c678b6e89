"""Prompt templates for zero-shot classification: named sets in a registry, or explicit "{}" strings.

A template is either a string in which "{}" stands for the class name, or a callable classname -> prompt
(open_clip's ImageNet sets are lambdas). Named sets are registered so a recipe can say `templates: [openai]`
and another module can add its own set without touching this file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from mmembed.registry import Registry

Template = str | Callable[[str], str]

TEMPLATE_SETS: Registry[tuple[Template, ...]] = Registry("template set")

# The placeholder is substituted with str.replace, not str.format, so prompts may contain other braces.
PLACEHOLDER = "{}"

AUDIO_TEMPLATES: tuple[str, ...] = (
    "this is a sound of {}.",
    "someone saying {}.",
    "the sound of {}.",
    "this is the sound of {}.",
    "a recording of {}.",
    "a sound recording of {}.",
    "{} can be heard.",
    "an audio clip of {}.",
)


@TEMPLATE_SETS.register("openai")
def _openai() -> tuple[Template, ...]:
    return tuple(OPENAI_IMAGENET_TEMPLATES)


@TEMPLATE_SETS.register("simple")
def _simple() -> tuple[Template, ...]:
    return tuple(SIMPLE_IMAGENET_TEMPLATES)


@TEMPLATE_SETS.register("audio")
def _audio() -> tuple[Template, ...]:
    return AUDIO_TEMPLATES


def list_template_sets() -> list[str]:
    return TEMPLATE_SETS.names()


def resolve_templates(spec: str | Sequence[Template]) -> list[Template]:
    """Expand a template spec into a flat list of templates.

    `spec` is a set name ("openai"), or a sequence whose entries are each a set name, a string containing
    "{}", or a callable; entries are concatenated in order, so ["simple", "a drawing of {}."] is valid.
    """
    entries: Sequence[Template] = [spec] if isinstance(spec, str) else spec
    if len(entries) == 0:
        raise ValueError("no prompt templates given; use a set name "
                         f"({', '.join(list_template_sets())}) or strings containing '{PLACEHOLDER}'")
    templates: list[Template] = []
    for entry in entries:
        if callable(entry):
            templates.append(entry)
        elif entry in TEMPLATE_SETS:
            templates.extend(TEMPLATE_SETS.build(entry))
        elif isinstance(entry, str) and PLACEHOLDER in entry:
            templates.append(entry)
        else:
            raise ValueError(f"prompt template {entry!r} is neither a template set "
                             f"({', '.join(list_template_sets())}) nor a string containing '{PLACEHOLDER}'")
    return templates


def render(template: Template, classname: str) -> str:
    return template.replace(PLACEHOLDER, classname) if isinstance(template, str) else template(classname)
