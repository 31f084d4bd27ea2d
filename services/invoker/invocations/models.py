"""Model selection: LoRAs with their weights, as a list generation nodes accept, and the
embeddings (textual inversions) a prompt's `<name>` triggers select."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from services.common.errors import FailedPreconditionError
from services.common.model_taxonomy import BaseModelType, ModelType
from services.invoker.clients.inference import Lora
from services.invoker.invocations.base import BaseInvocation, BaseOutput, InputField, OutputField
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ModelRef, Reference


class LoraRef(Reference):
    """A LoRA model and the weight it is applied at."""

    type_name: ClassVar[str] = "lora"
    key: str = Field(min_length=1, description="Model key of the LoRA.")
    weight: float = Field(description="How strongly it is applied.")


class LoraListOutput(BaseOutput):
    output_type: ClassVar[str] = "lora_list_output"
    loras: list[LoraRef] = OutputField(description="The LoRAs, in order.")


class LoraSelectorInvocation(BaseInvocation):
    """Adds a LoRA at a weight to a list of LoRAs (chain selectors for several)."""

    invocation_type: ClassVar[str] = "lora_selector"
    category: ClassVar[str] = "model"
    lora: ModelRef = InputField(description="The LoRA model.")
    weight: float = InputField(0.75, ge=-10, le=10, description="How strongly it is applied.")
    loras: list[LoraRef] = InputField([], description="LoRAs chosen before this one.")

    async def invoke(self, context: InvocationContext) -> LoraListOutput:
        kept = [lora for lora in self.loras if lora.key != self.lora.key]
        return LoraListOutput(loras=[*kept, LoraRef(key=self.lora.key, weight=self.weight)])


def to_loras(loras: Sequence[LoraRef]) -> list[Lora]:
    """The LoRAs as the inference client takes them."""
    return [Lora(lora.key, lora.weight) for lora in loras]


TRIGGER = re.compile(r"<([^<>]+)>")
"""An embedding trigger in a prompt: the embedding's model name in angle brackets."""

PROMPT_DESCRIPTION = (
    "{what} `<name>` in it stands for the installed embedding (textual inversion) named "
    "exactly `name` for the main model's base (or for any base); other text in angle "
    "brackets stays plain text."
)
"""The description of a prompt input, with what the prompt is for in front."""


async def embedding_keys(
    context: InvocationContext, main_model_key: str, prompts: Sequence[str]
) -> list[str]:
    """The keys of the installed embeddings the `<name>` triggers in `prompts` name.

    Triggers are looked up only when a prompt has one, so a plain prompt costs no call. An
    embedding recorded for the main model's own base is preferred over one of base ANY;
    a name no fitting embedding has stays plain text. Two fitting embeddings of one name
    and base are FailedPreconditionError (MODEL_AMBIGUOUS, metadata `trigger` and `keys`).
    """
    names = sorted({name for prompt in prompts for name in TRIGGER.findall(prompt)})
    if not names:
        return []
    base = (await context.models.get(main_model_key)).base
    found = await asyncio.gather(
        *(context.models.named(name, ModelType.TEXTUAL_INVERSION) for name in names)
    )
    keys: list[str] = []
    for name, records in zip(names, found, strict=True):
        fitting = [record for record in records if record.base == base] or [
            record for record in records if record.base == BaseModelType.ANY
        ]
        if len(fitting) > 1:
            matching = ",".join(record.key for record in fitting)
            raise FailedPreconditionError(
                f"the trigger <{name}> names {len(fitting)} embeddings for base "
                f"{fitting[0].base.value}: {matching}; rename or remove all but one",
                reason="MODEL_AMBIGUOUS",
                metadata={"trigger": f"<{name}>", "keys": matching},
            )
        keys += [record.key for record in fitting]
    return keys
