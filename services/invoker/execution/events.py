"""What a run tells its watchers, as plain dataclasses handed to an `emit` callback (an
`EventBus.publish`); the servicer turns them into SessionEvent messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from services.invoker.execution.state import NodeFailure, SettledStatus


@dataclass(frozen=True)
class ExecutionEvent:
    """Base of the events; `node_id` is a run id (`<node id>#<index>` inside a fan-out)."""

    session_id: str
    queue_item_id: int


@dataclass(frozen=True)
class InvocationStarted(ExecutionEvent):
    node_id: str
    type: str


@dataclass(frozen=True)
class InvocationComplete(ExecutionEvent):
    node_id: str
    type: str
    output_type: str
    outputs: Mapping[str, Any]
    cache_hit: bool
    """The outputs came from the node-output cache; the node did not run."""


@dataclass(frozen=True)
class InvocationError(ExecutionEvent):
    node_id: str
    type: str
    failure: NodeFailure


@dataclass(frozen=True)
class SessionComplete(ExecutionEvent):
    """Terminal: every node the run ran succeeded."""

    status: SettledStatus


@dataclass(frozen=True)
class SessionError(ExecutionEvent):
    """Terminal: a node of the run failed; `node_id` is the first that did."""

    node_id: str
    failure: NodeFailure


@dataclass(frozen=True)
class SessionCancelled(ExecutionEvent):
    """Terminal: the run was cancelled between nodes or inside one."""


Emit = Callable[[ExecutionEvent], None]
