"""Textual inversions: loaded as their vectors, applied to a tokenizer and text encoder
for one piece of work, and removed afterwards.

An embedding file holds one or more vectors per text encoder: A1111 `.pt`
(`string_to_param`), `emb_params`, sdxl's `clip_l` / `clip_g` pair, or a diffusers
`learned_embeds` file (`{"<token>": vector}`). Which encoder a vector belongs to follows
from its width when the file does not say.

`applied_embeddings` never touches the cached tokenizer: it works on a copy that knows the
new tokens, and grows the text encoder's token table in a fresh tensor, putting the
original tensor back when the block is left (also by an exception).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.common.errors import FailedPreconditionError
from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType, SubModelType
from services.inference.loading.registry import Loaded, ModelLoader, register
from services.inference.loading.weights import (
    SAFETENSORS,
    WEIGHT_SUFFIXES,
    files_missing,
    read_pickled,
    read_state_dict,
    unreadable,
)
from services.inference.model_records import ModelRecord

EMBEDDING_INCOMPATIBLE = "EMBEDDING_INCOMPATIBLE"
# Token widths of the second (OpenCLIP bigG) text encoder of sdxl.
_SECOND_ENCODER_WIDTHS = (1280,)


@dataclass(frozen=True)
class TextualInversion:
    """A loaded embedding: its vectors ([count, width]) per text encoder part."""

    vectors: Mapping[SubModelType, torch.Tensor]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {str(part): vectors for part, vectors in self.vectors.items()}


def parse_embedding(content: Mapping[str, Any]) -> TextualInversion:
    """The vectors of an embedding file's content, by text encoder."""
    if "clip_l" in content and "clip_g" in content:
        return TextualInversion(
            {
                SubModelType.TEXT_ENCODER: _matrix(content["clip_l"]),
                SubModelType.TEXT_ENCODER_2: _matrix(content["clip_g"]),
            }
        )
    if isinstance(content.get("string_to_param"), Mapping):
        tensors = list(content["string_to_param"].values())
    elif "emb_params" in content:
        tensors = [content["emb_params"]]
    else:
        tensors = [value for value in content.values() if isinstance(value, torch.Tensor)]
    if len(tensors) != 1:
        raise ValueError(f"expected one embedding tensor, found {len(tensors)}")
    vectors = _matrix(tensors[0])
    part = (
        SubModelType.TEXT_ENCODER_2
        if vectors.shape[-1] in _SECOND_ENCODER_WIDTHS
        else SubModelType.TEXT_ENCODER
    )
    return TextualInversion({part: vectors})


def _matrix(tensor: Any) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (1, 2):
        raise ValueError("an embedding is a vector or a matrix of vectors")
    return tensor.reshape(-1, tensor.shape[-1])


@register(
    base=BaseModelType.ANY, type=ModelType.TEXTUAL_INVERSION, format=ModelFormat.EMBEDDING_FILE
)
@register(
    base=BaseModelType.ANY, type=ModelType.TEXTUAL_INVERSION, format=ModelFormat.EMBEDDING_FOLDER
)
class TextualInversionLoader(ModelLoader):
    """An embedding file, or a folder holding `learned_embeds.*`."""

    def source(self, record: ModelRecord, submodel: SubModelType | None) -> Path:
        if not record.path.is_dir():
            return record.path
        found = sorted(
            path
            for path in record.path.iterdir()
            if path.stem == "learned_embeds" and path.suffix in WEIGHT_SUFFIXES
        )
        return found[0] if found else record.path / f"learned_embeds{SAFETENSORS}"

    def load(self, record, submodel, options) -> Loaded:
        path = self.source(record, submodel)
        if not path.is_file():
            raise files_missing(path)
        content = read_state_dict(path) if path.suffix == SAFETENSORS else read_pickled(path)
        if not isinstance(content, Mapping):
            raise unreadable(path, "it holds no mapping")
        try:
            embedding = parse_embedding(content)
        except ValueError as error:
            raise unreadable(path, error) from error
        vectors = {part: v.to(options.dtype) for part, v in embedding.vectors.items()}
        return Loaded(TextualInversion(vectors), path)


@dataclass(frozen=True)
class EmbeddedTokens:
    """The tokenizer to use inside `applied_embeddings`, and the prompt rewriting that
    spells each trigger as its tokens (one per vector)."""

    tokenizer: Any
    tokens: Mapping[str, tuple[str, ...]]

    def expand(self, prompt: str) -> str:
        """`prompt` with each trigger replaced by its tokens, longest triggers first."""
        for trigger in sorted(self.tokens, key=len, reverse=True):
            prompt = prompt.replace(trigger, " ".join(self.tokens[trigger]))
        return prompt


@contextmanager
def applied_embeddings(
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    embeddings: Sequence[tuple[str, torch.Tensor]],
) -> Iterator[EmbeddedTokens]:
    """Teach a copy of `tokenizer` one token per vector of each (trigger, vectors) pair and
    give `text_encoder` those vectors, for the duration of the block. A vector width that
    is not the encoder's is FAILED_PRECONDITION EMBEDDING_INCOMPATIBLE."""
    table = text_encoder.get_input_embeddings()
    width = table.weight.shape[1]
    tokens: dict[str, tuple[str, ...]] = {}
    for trigger, vectors in embeddings:
        if vectors.shape[-1] != width:
            raise FailedPreconditionError(
                f"embedding {trigger} has vectors of width {vectors.shape[-1]}, its text "
                f"encoder takes {width}",
                reason=EMBEDDING_INCOMPATIBLE,
                metadata={"trigger": trigger},
            )
        tokens[trigger] = tuple(
            trigger if index == 0 else f"{trigger}-{index}" for index in range(len(vectors))
        )
    patched_tokenizer = copy.deepcopy(tokenizer)
    patched_tokenizer.add_tokens([token for names in tokens.values() for token in names])
    original, original_count = table.weight.data, table.num_embeddings
    try:
        with torch.no_grad():
            ids = {
                trigger: patched_tokenizer.convert_tokens_to_ids(list(names))
                for trigger, names in tokens.items()
            }
            rows = max([original_count - 1, *(i for row in ids.values() for i in row)]) + 1
            grown = torch.cat([original, original.new_zeros(rows - original_count, width)])
            for (trigger, vectors), _ in zip(embeddings, tokens, strict=True):
                grown[ids[trigger]] = vectors.to(grown)
            table.weight.data = grown
            table.num_embeddings = rows
        yield EmbeddedTokens(patched_tokenizer, tokens)
    finally:
        table.weight.data = original
        table.num_embeddings = original_count
