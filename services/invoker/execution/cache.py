"""The node-output cache, shared by every session of the invoker.

A node type that declares itself cacheable gives equal outputs for equal inputs without
side effects, so its output is kept under a key made of its type, version and every input
value (direct values and those that arrived by edges, as canonical JSON), taken once the
node has resolved what its inputs leave to the invoker's state (an empty model input is
the default model's key by then), so a changed default is a different key. A hit is used
only while every image its output names is still stored; else the node runs again. Nodes
whose outputs name inference tensors are not cacheable: a tensor can vanish with its
process. The cache keeps the most recently used `max_entries` outputs; 0 turns it off.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from services.invoker.invocations.base import BaseInvocation, BaseOutput

DEFAULT_MAX_ENTRIES = 1024


class OutputCache:
    """Outputs by the identity of their computation, least recently used dropped first."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must not be negative")
        self._max_entries = max_entries
        self._entries: OrderedDict[str, BaseOutput] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(invocation: BaseInvocation) -> str | None:
        """The cache key of a node with all its inputs set and resolved; None for a type
        that may not be cached."""
        cls = type(invocation)
        if not cls.cacheable:
            return None
        inputs = json.dumps(invocation.model_dump(mode="json"), sort_keys=True)
        return f"{cls.invocation_type}@{cls.version}:{inputs}"

    def get(self, key: str) -> BaseOutput | None:
        output = self._entries.get(key)
        if output is not None:
            self._entries.move_to_end(key)
        return output

    def put(self, key: str, output: BaseOutput) -> None:
        if self._max_entries == 0:
            return
        self._entries[key] = output
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
