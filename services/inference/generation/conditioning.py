"""Prompt conditioning: text encoders turn a prompt into what the UNet attends to.

SD-1 and SD-2 use the last hidden state of one CLIP text encoder. SDXL concatenates the
penultimate hidden states of its encoders and adds the pooled, projected embedding of
the last one (the refiner has only that one encoder); an encoder with a text projection
is what marks that style.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

EMBEDS = "embeds"
POOLED = "pooled"


def _as_written(prompt: str) -> str:
    return prompt


@dataclass(frozen=True)
class TextEncoder:
    """A tokenizer and the text encoder it feeds; `expand_prompt` rewrites a prompt before
    tokenizing (textual-inversion triggers spelt as the tokens this tokenizer learnt)."""

    tokenizer: Any
    model: Any
    expand_prompt: Callable[[str], str] = _as_written


@dataclass(frozen=True)
class Conditioning:
    """Prompt embeddings [1, tokens, width], plus SDXL's pooled embedding [1, width]."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def parts(self) -> dict[str, torch.Tensor]:
        """The tensors by name, main embeddings first, for the tensor store."""
        parts = {EMBEDS: self.embeds}
        if self.pooled is not None:
            parts[POOLED] = self.pooled
        return parts

    @classmethod
    def from_parts(cls, parts: Mapping[str, torch.Tensor]) -> Conditioning:
        return cls(embeds=parts[EMBEDS], pooled=parts.get(POOLED))


def _tokens(tokenizer: Any, prompt: str) -> Any:
    return tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


def _has_projection(model: Any) -> bool:
    return hasattr(model, "text_projection")


@torch.inference_mode()
def encode_prompt(encoders: Sequence[TextEncoder], prompt: str) -> Conditioning:
    """The conditioning of `prompt`; an empty prompt gives the unconditional embedding."""
    if not encoders:
        raise ValueError("encode_prompt needs at least one text encoder")
    if len(encoders) == 1 and not _has_projection(encoders[0].model):
        encoder = encoders[0]
        tokens = _tokens(encoder.tokenizer, encoder.expand_prompt(prompt))
        device = encoder.model.device
        mask = None
        if getattr(encoder.model.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        embeds = encoder.model(tokens.input_ids.to(device), attention_mask=mask)[0]
        return Conditioning(embeds=embeds.to(encoder.model.dtype))
    hidden: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for encoder in encoders:
        text = encoder.expand_prompt(prompt)
        ids = _tokens(encoder.tokenizer, text).input_ids.to(encoder.model.device)
        output = encoder.model(ids, output_hidden_states=True)
        if output[0].ndim == 2:
            pooled = output[0]
        hidden.append(output.hidden_states[-2])
    dtype = encoders[-1].model.dtype
    embeds = torch.cat(hidden, dim=-1).to(dtype)
    return Conditioning(embeds=embeds, pooled=None if pooled is None else pooled.to(dtype))
