"""Parts of the inference process that exist only once torch is imported.

The server answers from its first moment (health NOT_SERVING); an RPC that needs torch
before then is UNAVAILABLE (reason STARTING), which clients retry, rather than a hang.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from services.common.errors import UnavailableError

T = TypeVar("T")


class Pending(Generic[T]):
    """A value set once start-up has made it."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._value: T | None = None

    def set(self, value: T) -> None:
        self._value = value

    def peek(self) -> T | None:
        """The value, or None while start-up has not made it (for shutdown hooks)."""
        return self._value

    def get(self) -> T:
        if self._value is None:
            raise UnavailableError(
                f"the inference service is starting; {self._what} is not ready yet",
                reason="STARTING",
            )
        return self._value
