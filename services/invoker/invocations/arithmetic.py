"""Integer arithmetic, random numbers and ranges."""

from __future__ import annotations

import random
from typing import ClassVar

from services.common.errors import InvalidArgumentError
from services.invoker.invocations.base import BaseInvocation, BaseOutput, InputField, OutputField
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.primitives import FloatOutput, IntegerOutput

INT32_MAX = 2**31 - 1


class IntegerCollectionOutput(BaseOutput):
    output_type: ClassVar[str] = "integer_collection_output"
    collection: list[int] = OutputField(description="The integers, in order.")


class AddInvocation(BaseInvocation):
    """Adds two integers."""

    invocation_type: ClassVar[str] = "add"
    category: ClassVar[str] = "math"
    a: int = InputField(0, description="The first number.")
    b: int = InputField(0, description="The second number.")

    async def invoke(self, context: InvocationContext) -> IntegerOutput:
        return IntegerOutput(value=self.a + self.b)


class SubtractInvocation(BaseInvocation):
    """Subtracts b from a."""

    invocation_type: ClassVar[str] = "sub"
    category: ClassVar[str] = "math"
    a: int = InputField(0, description="The number subtracted from.")
    b: int = InputField(0, description="The number subtracted.")

    async def invoke(self, context: InvocationContext) -> IntegerOutput:
        return IntegerOutput(value=self.a - self.b)


class MultiplyInvocation(BaseInvocation):
    """Multiplies two integers."""

    invocation_type: ClassVar[str] = "mul"
    category: ClassVar[str] = "math"
    a: int = InputField(0, description="The first number.")
    b: int = InputField(0, description="The second number.")

    async def invoke(self, context: InvocationContext) -> IntegerOutput:
        return IntegerOutput(value=self.a * self.b)


class DivideInvocation(BaseInvocation):
    """Divides a by b, rounding toward zero (7 / -2 is -3)."""

    invocation_type: ClassVar[str] = "div"
    category: ClassVar[str] = "math"
    a: int = InputField(0, description="The dividend.")
    b: int = InputField(1, description="The divisor; not zero.")

    async def invoke(self, context: InvocationContext) -> IntegerOutput:
        if self.b == 0:
            raise InvalidArgumentError("b must not be zero", field="b", reason="DIVISION_BY_ZERO")
        quotient = abs(self.a) // abs(self.b)  # exact for any size, unlike int(a / b)
        return IntegerOutput(value=quotient if (self.a < 0) == (self.b < 0) else -quotient)


class RandomIntInvocation(BaseInvocation):
    """A random integer from low (inclusive) to high (exclusive); never cached."""

    invocation_type: ClassVar[str] = "rand_int"
    category: ClassVar[str] = "math"
    cacheable: ClassVar[bool] = False
    low: int = InputField(0, description="Least value (inclusive).")
    high: int = InputField(INT32_MAX, description="Bound above (exclusive); greater than low.")

    async def invoke(self, context: InvocationContext) -> IntegerOutput:
        if self.high <= self.low:
            raise InvalidArgumentError("high must be greater than low", field="high")
        return IntegerOutput(value=random.randrange(self.low, self.high))


class RandomFloatInvocation(BaseInvocation):
    """A random number from low to high, uniformly; never cached."""

    invocation_type: ClassVar[str] = "rand_float"
    category: ClassVar[str] = "math"
    cacheable: ClassVar[bool] = False
    low: float = InputField(0.0, description="Least value.")
    high: float = InputField(1.0, description="Greatest value; not less than low.")

    async def invoke(self, context: InvocationContext) -> FloatOutput:
        if self.high < self.low:
            raise InvalidArgumentError("high must not be less than low", field="high")
        return FloatOutput(value=random.uniform(self.low, self.high))


class RangeInvocation(BaseInvocation):
    """The integers from start up to (not including) stop, step apart, as Python's range."""

    invocation_type: ClassVar[str] = "range"
    category: ClassVar[str] = "math"
    start: int = InputField(0, description="First integer.")
    stop: int = InputField(10, description="Bound the integers stop before.")
    step: int = InputField(1, description="Distance between integers; not zero.")

    async def invoke(self, context: InvocationContext) -> IntegerCollectionOutput:
        if self.step == 0:
            raise InvalidArgumentError("step must not be zero", field="step")
        return IntegerCollectionOutput(collection=list(range(self.start, self.stop, self.step)))
