"""Primitive nodes: a value given directly, passed on to the nodes linked to it."""

from __future__ import annotations

from typing import ClassVar

from services.invoker.invocations.base import BaseInvocation, BaseOutput, InputField, OutputField
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ImageRef, ModelRef


class IntegerOutput(BaseOutput):
    output_type: ClassVar[str] = "integer_output"
    value: int = OutputField(description="The integer.")


class FloatOutput(BaseOutput):
    output_type: ClassVar[str] = "float_output"
    value: float = OutputField(description="The number.")


class StringOutput(BaseOutput):
    output_type: ClassVar[str] = "string_output"
    value: str = OutputField(description="The string.")


class BooleanOutput(BaseOutput):
    output_type: ClassVar[str] = "boolean_output"
    value: bool = OutputField(description="The boolean.")


class ImageOutput(BaseOutput):
    output_type: ClassVar[str] = "image_output"
    image: ImageRef = OutputField(description="The image.")


class ModelOutput(BaseOutput):
    output_type: ClassVar[str] = "model_output"
    model: ModelRef = OutputField(description="The model.")


class IntegerInvocation(BaseInvocation):
    """An integer value."""

    invocation_type: ClassVar[str] = "integer"
    category: ClassVar[str] = "primitives"
    value: int = InputField(0, description="The integer.")

    async def invoke(self, context: InvocationContext) -> IntegerOutput:
        return IntegerOutput(value=self.value)


class FloatInvocation(BaseInvocation):
    """A floating-point value."""

    invocation_type: ClassVar[str] = "float"
    category: ClassVar[str] = "primitives"
    value: float = InputField(0.0, description="The number.")

    async def invoke(self, context: InvocationContext) -> FloatOutput:
        return FloatOutput(value=self.value)


class StringInvocation(BaseInvocation):
    """A string value."""

    invocation_type: ClassVar[str] = "string"
    category: ClassVar[str] = "primitives"
    value: str = InputField("", description="The string.")

    async def invoke(self, context: InvocationContext) -> StringOutput:
        return StringOutput(value=self.value)


class BooleanInvocation(BaseInvocation):
    """A boolean value."""

    invocation_type: ClassVar[str] = "boolean"
    category: ClassVar[str] = "primitives"
    value: bool = InputField(False, description="The boolean.")

    async def invoke(self, context: InvocationContext) -> BooleanOutput:
        return BooleanOutput(value=self.value)


class ImageInvocation(BaseInvocation):
    """An image of the image store, by name."""

    invocation_type: ClassVar[str] = "image"
    category: ClassVar[str] = "primitives"
    image: ImageRef = InputField(description="The image.")

    async def invoke(self, context: InvocationContext) -> ImageOutput:
        return ImageOutput(image=self.image)


class ModelInvocation(BaseInvocation):
    """A model of the model manager, by key."""

    invocation_type: ClassVar[str] = "model"
    category: ClassVar[str] = "primitives"
    model: ModelRef = InputField(description="The model.")

    async def invoke(self, context: InvocationContext) -> ModelOutput:
        return ModelOutput(model=self.model)
