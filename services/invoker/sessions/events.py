"""Session events beside the execution's own: a run queued and started, the snapshot a
watcher gets first, and the time each event happened."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from services.invoker.clients.inference import ModelLoad, Preview
from services.invoker.execution.events import ExecutionEvent
from services.invoker.queue.items import RunMode

if TYPE_CHECKING:
    from services.invoker.sessions.manager import SessionView


@dataclass(frozen=True)
class SessionQueued(ExecutionEvent):
    run_mode: RunMode


@dataclass(frozen=True)
class SessionStarted(ExecutionEvent):
    run_mode: RunMode


@dataclass(frozen=True)
class InvocationProgress(ExecutionEvent):
    """A node's progress (denoising steps); `node_id` is its run id."""

    node_id: str
    step: int
    total_steps: int
    preview: Preview | None = None
    time: datetime | None = None
    """When the step ended, by the inference service's clock (relayed steps)."""


@dataclass(frozen=True)
class ModelLoadEvent(ExecutionEvent):
    """A model load of a node's generation, relayed from the inference service;
    `node_id` is the node's run id."""

    node_id: str
    load: ModelLoad


@dataclass(frozen=True)
class SessionSnapshot(ExecutionEvent):
    """The session as it stood when the watch began, sent first to a watcher;
    `queue_item_id` is 0 when no run was queued or running."""

    session: SessionView


@dataclass(frozen=True)
class RemoteEvent(ExecutionEvent):
    """An event of a run on another invoker process sharing the database, as it sent it:
    a serialized SessionEvent (without preview image), passed on to watchers as is."""

    message: bytes


@dataclass(frozen=True)
class Stamped:
    """An event with the time it happened, as published on the session event bus."""

    time: datetime
    event: ExecutionEvent
