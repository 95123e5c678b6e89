"""Convert mmembed shards + class names into clip_benchmark's WebDataset layout, for `--dataset wds/NAME`.

    python -m data_tools.clip_benchmark_wds 'data/demo/val/val-{000000..000001}.tar' \
        --classnames data/demo/classnames.txt --out data/demo_clip_benchmark

Layout written (what clip_benchmark's `build_wds_dataset` reads):
    OUT/test/0.tar, 1.tar, ...    one image member (png/jpg/jpeg/webp, bytes unchanged) + `cls` per sample
    OUT/test/nshards.txt          number of shards
    OUT/classnames.txt            one class name per line, in label order
    OUT/zeroshot_classification_templates.txt   one prompt per line, "{c}" for the class name
    OUT/dataset_type.txt          "classification"

The prompts are mmembed's (`--templates` as in `mmembed eval`, default the same 'openai' set), written in
clip_benchmark's `str.format` syntax, so both tools build the same zero-shot classifier. A sample without an
image or a label is counted, logged with its key and skipped; a label outside the class names is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from data_tools.tool_args import add_shard_output, tool_parser
from mmembed.data.sources import expand_urls
from mmembed.data.stats import SkipStats
from mmembed.data.tar_samples import shard_samples
from mmembed.eval.cli import parse_templates_arg
from mmembed.eval.evaluate import read_classnames
from mmembed.eval.templates import render, resolve_templates

log = logging.getLogger("data_tools.clip_benchmark_wds")

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
# Stands for the class name while a template is rendered, then becomes clip_benchmark's "{c}".
_CLASS_SLOT = "\x00class\x00"


@dataclass
class Conversion:
    out: Path
    num_samples: int
    num_shards: int
    # Keys of the samples left out (no image or no label), in shard order.
    skipped: list[str]


def format_templates(spec: str) -> list[str]:
    """mmembed templates (set names, a file, or one '...{}...') as clip_benchmark prompts: literal braces
    doubled, the class name as "{c}"."""
    prompts = []
    for template in resolve_templates(parse_templates_arg(spec)):
        text = render(template, _CLASS_SLOT)
        if "\n" in text or _CLASS_SLOT not in text:
            raise ValueError(f"template {text.replace(_CLASS_SLOT, '{}')!r} must be one line holding the class name")
        prompts.append(text.replace("{", "{{").replace("}", "}}").replace(_CLASS_SLOT, "{c}"))
    return prompts


def _label(sample: dict, label_key: str, num_classes: int, url: str) -> int | None:
    if label_key not in sample:
        return None
    label = int(sample[label_key].decode().strip())
    if not 0 <= label < num_classes:
        raise ValueError(f"{url}: sample {sample['__key__']} has {label_key}={label}, outside the "
                         f"{num_classes} class names; do the class names belong to this data?")
    return label


def convert(urls: str | list[str], classnames: str | Path, out: str | Path, *, label_key: str = "cls",
            templates: str = "openai", split: str = "test", samples_per_shard: int = 10000) -> Conversion:
    """Write `urls`' samples (image + label) and the class names / prompts into clip_benchmark's layout."""
    out = Path(out)
    (out / split).mkdir(parents=True, exist_ok=True)
    names = read_classnames(classnames)
    prompts = format_templates(templates)
    stats, skipped, count = SkipStats(), [], 0
    with wds.ShardWriter(str(out / split / "%d.tar"), maxcount=samples_per_shard, encoder=False,
                         verbose=0) as sink:
        for url in expand_urls(urls):
            for sample in shard_samples(url, stats):
                image = next((k for k in IMAGE_KEYS if k in sample), None)
                label = _label(sample, label_key, len(names), url)
                if image is None or label is None:
                    log.warning("%s: sample %s has no %s; skipped", url, sample["__key__"],
                                "image" if image is None else f"label '{label_key}'")
                    skipped.append(sample["__key__"])
                    continue
                sink.write({"__key__": sample["__key__"], image: sample[image], "cls": str(label).encode()})
                count += 1
        num_shards = sink.shard
    (out / split / "nshards.txt").write_text(f"{num_shards}\n")
    (out / "classnames.txt").write_text("".join(f"{n}\n" for n in names))
    (out / "zeroshot_classification_templates.txt").write_text("".join(f"{p}\n" for p in prompts))
    (out / "dataset_type.txt").write_text("classification\n")
    return Conversion(out, count, num_shards, skipped)


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("clip_benchmark_wds", __doc__)
    parser.add_argument("urls", nargs="+", help="mmembed shards (brace patterns allowed)")
    parser.add_argument("--classnames", required=True, help="one class name per line, in label order")
    add_shard_output(parser, default_out=None, samples_per_shard=10000)
    parser.add_argument("--label-key", default="cls", help="sample member holding the label (default: cls)")
    parser.add_argument("--templates", default="openai", help="as `mmembed eval --templates` (default: openai)")
    parser.add_argument("--split", default="test", help="clip_benchmark's --split (default: test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    done = convert(args.urls, args.classnames, args.out, label_key=args.label_key, templates=args.templates,
                   split=args.split, samples_per_shard=args.samples_per_shard)
    print(f"wrote {done.num_samples} samples in {done.num_shards} shards to {done.out}"
          + (f"; skipped {len(done.skipped)} without image or label" if done.skipped else ""))


if __name__ == "__main__":
    main()
