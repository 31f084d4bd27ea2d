"""Model selection nodes: LoRAs with their weights, as a list generation nodes accept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

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
