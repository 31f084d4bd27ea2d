"""The text of a custom node file, as a user would drop it into the custom-nodes folder."""

CUSTOM_NODE = '''
from typing import ClassVar

from services.invoker.invocations.base import BaseInvocation, BaseOutput, InputField, OutputField


class ShoutOutput(BaseOutput):
    output_type: ClassVar[str] = "shout_output"
    text: str = OutputField(description="The loud text.")


class ShoutInvocation(BaseInvocation):
    """Upper-cases a text."""

    invocation_type: ClassVar[str] = "shout"
    category: ClassVar[str] = "custom"
    text: str = InputField("", description="What to shout.")

    async def invoke(self, context) -> ShoutOutput:
        return ShoutOutput(text=self.text.upper())
'''
