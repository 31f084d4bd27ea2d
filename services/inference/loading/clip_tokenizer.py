"""CLIP's tokenizer built from the BPE vocabulary Easel ships, so that a single-file
checkpoint needs no tokenizer files of its own and nothing is fetched from the Hub.

Every Stable Diffusion text encoder (CLIP ViT-L for sd-1 and sdxl's first, OpenCLIP
ViT-H for sd-2, ViT-bigG for sdxl's second) embeds the same 49408 tokens. Only CLIP's
merges file ships (`configs/clip/`, OpenAI's, MIT: see its README); the vocabulary is
derived from it as CLIP derives it: the 256 byte characters, the same with `</w>`, each
merge joined, then `<|startoftext|>` and `<|endoftext|>`. The special tokens and the
length come from the base's `tokenizer_config.json`: sd-1 and sdxl's first tokenizer pad
with `<|endoftext|>`, sd-2 and sdxl's second with `!`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from transformers import CLIPTokenizer

from services.inference.loading.weights import files_missing, unreadable

CLIP_BPE = Path(__file__).parent / "configs" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
"""Tokens in CLIP's vocabulary: rows of a matching text encoder's token embedding."""

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_MERGES = VOCAB_SIZE - 2 * 256 - 2
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def byte_alphabet() -> list[str]:
    """The 256 bytes as printable characters, in CLIP's order: the bytes that print as
    themselves first, then every other byte as a character past U+00FF."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = 256 - len(printable)
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(others)]


def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's token ids and its BPE merges, read from the shipped merges file (whose first
    line is a version header; only the first 48894 merges are CLIP's)."""
    if not CLIP_BPE.is_file():
        raise files_missing(CLIP_BPE)
    try:
        with gzip.open(CLIP_BPE, "rt", encoding="utf-8") as file:
            lines = file.read().split("\n")
        merges = [_pair(line) for line in lines[1 : _MERGES + 1]]
    except (OSError, EOFError, ValueError) as error:  # ValueError: not UTF-8, not a pair
        raise unreadable(CLIP_BPE, error) from error
    if len(merges) != _MERGES:
        raise unreadable(CLIP_BPE, f"{len(merges)} merges instead of {_MERGES}")
    alphabet = byte_alphabet()
    tokens = [*alphabet, *(char + "</w>" for char in alphabet)]
    tokens += [left + right for left, right in merges] + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """CLIP's tokenizer with the special tokens and maximum length that
    `folder/tokenizer_config.json` names (CLIP's own where it names none)."""
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        raise files_missing(config_file)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise unreadable(config_file, error) from error
    special = {name: _token_text(config[name]) for name in _SPECIAL_TOKENS if name in config}
    vocab, merges = clip_vocabulary()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=config.get("model_max_length", 77),
        **special,
    )


def _pair(line: str) -> tuple[str, str]:
    left, right = line.split()
    return left, right


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's
    fields."""
    return value["content"] if isinstance(value, dict) else str(value)
