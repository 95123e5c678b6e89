"""open_clip's `SimpleTokenizer` rebuilt as a Hugging Face `tokenizers` tokenizer (one `tokenizer.json`), so a
client with only the `tokenizers` library (Python, Rust, or its bindings) gets the same token ids.

SimpleTokenizer's steps and what stands for each here:

- clean (`lower`: ftfy.fix_text, html.unescape twice, whitespace collapsed, lower case; `whitespace`: the same
  without lower case; `canonicalize`: also "_" -> " " and ASCII punctuation removed) -> normalizers: ftfy's
  character-level fixes built from ftfy's own tables (C1 controls read as Windows-1252, Latin ligatures,
  full/half width forms, curly quotes, terminal escapes, control characters), NFC, Python's `str.isspace`
  characters collapsed to one space and stripped, Greek final sigma (Python's `str.lower` is context
  sensitive there, the `Lowercase` normalizer is not), lower case;
- the split regex -> the same regex in a `Split` pre-tokenizer (matches kept, the rest dropped);
- bytes -> printable characters -> `ByteLevel` (the same table as CLIP's `bytes_to_unicode`);
- BPE with the "</w>" end-of-word suffix -> `BPE` with the same vocabulary and merge ranks;
- [SOT] + ids + [EOT], cut to context_length with EOT kept last, zero padded -> a template post-processor,
  truncation and fixed-length padding.

Not reproduced, because they depend on context no normalizer can see: ftfy's mojibake repair ("CafÃ©" ->
"Café") and HTML entity decoding ("&amp;", "&#233;"). Text holding either gets other ids than open_clip's;
such text is cleaned before tokenizing (ftfy.fix_text, html.unescape). Greek final sigma is handled when at
most one case-ignorable character separates it from the preceding letter.
"""

from __future__ import annotations

import codecs
from functools import lru_cache
from typing import Any

from mmembed.towers.open_clip_slots import NotExpressibleError

SOT, EOT = "<start_of_text>", "<end_of_text>"
# The id open_clip pads with (it is also the token "!": padding is told apart by position, after EOT).
PAD_ID = 0
# The cleaning functions of open_clip.tokenizer.get_clean_fn, by name.
CLEAN_NAMES = {"_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"}
# Case-insensitive as SimpleTokenizer's pattern (it matters for clean="whitespace", which keeps capitals).
_SPLIT = r"""(?i)'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Python's Final_Sigma rule: a capital sigma after a cased letter (here: with at most one case-ignorable
# character between) and not before one lower-cases to "ς".
_FINAL_SIGMA = r"(?<=\p{Cased}|\p{Cased}\p{Case_Ignorable})Σ(?!\p{Case_Ignorable}*\p{Cased})"
_ASCII_PUNCTUATION = r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]"""


def _char_class(chars: list[str]) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in sorted(chars)) + "]"


@lru_cache(maxsize=1)
def _whitespace_class() -> str:
    """Every character Python's `str.split()` splits on, as a regex class."""
    return _char_class([chr(i) for i in range(0x110000) if chr(i).isspace()])


def _replacements(table: dict[int, str | None]) -> list[Any]:
    from tokenizers import Regex, normalizers

    return [normalizers.Replace(Regex(f"\\x{{{code:x}}}"), value or "") for code, value in sorted(table.items())]


def _ftfy_character_fixes() -> list[Any]:
    """ftfy.fix_text's fixes that map characters one by one, in ftfy's order, from ftfy's own tables."""
    import ftfy  # noqa: F401  (registers the sloppy-windows-1252 codec)
    from ftfy import chardata, fixes
    from tokenizers import Regex, normalizers

    c1 = {code: codecs.decode(bytes([code]), "sloppy-windows-1252") for code in range(0x80, 0xA0)}
    quotes = [normalizers.Replace(Regex(chardata.DOUBLE_QUOTE_RE.pattern), '"'),
              normalizers.Replace(Regex(chardata.SINGLE_QUOTE_RE.pattern), "'")]
    escapes = normalizers.Replace(Regex(fixes.ANSI_RE.pattern.replace("\033", r"\x1b")), "")
    return [*_replacements(c1), *_replacements(chardata.LIGATURES), *_replacements(chardata.WIDTH_MAP), *quotes,
            escapes, *_replacements(chardata.CONTROL_CHARS)]


def _normalizer(clean: str) -> Any:
    from tokenizers import Regex, normalizers

    steps = [*_ftfy_character_fixes(), normalizers.NFC()]
    if clean == "canonicalize":
        steps += [normalizers.Replace("_", " "), normalizers.Replace(Regex(_ASCII_PUNCTUATION), "")]
    steps += [normalizers.Replace(Regex(_whitespace_class() + "+"), " "), normalizers.Strip()]
    if clean in ("lower", "canonicalize"):
        steps.append(python_lowercase())
    return normalizers.Sequence(steps)


def python_lowercase() -> Any:
    """Python's `str.lower()` as a normalizer: `Lowercase` maps characters one by one, so a word-final capital
    sigma (which Python lowers to ς) is replaced first."""
    from tokenizers import Regex, normalizers

    return normalizers.Sequence([normalizers.Replace(Regex(_FINAL_SIGMA), "ς"), normalizers.Lowercase()])


def clip_bpe_tokenizer(tokenizer: Any, context_length: int) -> Any:
    """A `tokenizers.Tokenizer` equal to open_clip's SimpleTokenizer `tokenizer` at `context_length`;
    NotExpressibleError when that tokenizer does something the library cannot (a reduction mask)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    clean = CLEAN_NAMES.get(getattr(tokenizer.clean_fn, "__name__", ""))
    if clean is None:
        raise NotExpressibleError(f"open_clip tokenizer cleaning {tokenizer.clean_fn!r} is not one of "
                                  f"{sorted(CLEAN_NAMES.values())}")
    if tokenizer.reduction_fn is not None:
        raise NotExpressibleError("open_clip tokenizer with a reduction mask (random/shuffle/syntax token "
                                  "selection) has no tokenizers-library equivalent")
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.__getitem__)
    bpe = Tokenizer(models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>"))
    bpe.normalizer = _normalizer(clean)
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    specials = [t for t, i in tokenizer.encoder.items() if i in tokenizer.all_special_ids]
    # Matched in the cleaned text, as SimpleTokenizer's regex matches them after lower-casing.
    bpe.add_special_tokens([AddedToken(t, normalized=True) for t in specials])
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, tokenizer.sot_token_id), (EOT, tokenizer.eot_token_id)])
    bpe.enable_truncation(max_length=context_length)
    bpe.enable_padding(length=context_length, pad_id=PAD_ID, pad_token=tokenizer.decoder[PAD_ID])
    return bpe
