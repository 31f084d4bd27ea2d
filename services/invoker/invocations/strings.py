"""String nodes."""

from __future__ import annotations

import re
from typing import ClassVar

from services.common.errors import InvalidArgumentError
from services.invoker.invocations.base import BaseInvocation, InputField
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.primitives import StringOutput


class StringJoinInvocation(BaseInvocation):
    """Joins two strings, left then right."""

    invocation_type: ClassVar[str] = "string_join"
    category: ClassVar[str] = "string"
    string_left: str = InputField("", description="The string that comes first.")
    string_right: str = InputField("", description="The string appended to it.")

    async def invoke(self, context: InvocationContext) -> StringOutput:
        return StringOutput(value=self.string_left + self.string_right)


class StringReplaceInvocation(BaseInvocation):
    """Replaces every occurrence of a substring, or of a regular expression's matches."""

    invocation_type: ClassVar[str] = "string_replace"
    category: ClassVar[str] = "string"
    string: str = InputField("", description="The string to change.")
    search_string: str = InputField("", description="What to replace; empty replaces nothing.")
    replace_string: str = InputField("", description="What to put in its place.")
    use_regex: bool = InputField(
        False, description="search_string is a Python regular expression (re module syntax)."
    )
    case_sensitive: bool = InputField(True, description="Letters must match in case.")

    async def invoke(self, context: InvocationContext) -> StringOutput:
        if not self.search_string:
            return StringOutput(value=self.string)
        pattern = self.search_string if self.use_regex else re.escape(self.search_string)
        flags = 0 if self.case_sensitive else re.IGNORECASE
        # A literal replacement goes through a function, so backslashes in it stay as typed.
        replacement = self.replace_string if self.use_regex else lambda _: self.replace_string
        try:
            return StringOutput(value=re.sub(pattern, replacement, self.string, flags=flags))
        except re.error as exc:
            raise InvalidArgumentError(
                f"search_string or replace_string is not a valid regular expression: {exc}",
                field="search_string",
            ) from None
