"""The inference process's events and the bus they travel on.

`InferenceEvents` is built once in `main` and shared: the model loads publish
`ModelLoadStarted` / `ModelLoadCompleted` / `ModelLoadFailed` on it, generations publish
their own events, and `GenerationService.WatchInferenceEvents` subscribes to it. Every
event carries `time` and its routing `context` (the generation, session and invocation it
belongs to; all empty for a load asked for through ModelCacheService). Publishing never
blocks and may happen from any thread (loads run in worker threads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.common.errors import EaselError
from services.common.event_bus import EventBus
from services.common.model_taxonomy import SubModelType


@dataclass(frozen=True)
class EventContext:
    """Whom an event belongs to; empty strings when it belongs to none."""

    generation_id: str = ""
    session_id: str = ""
    invocation_id: str = ""


NO_CONTEXT = EventContext()


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event carries: whom it belongs to and when it happened (keyword-only, so
    that each event's own fields come first)."""

    context: EventContext = NO_CONTEXT
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ModelLoad:
    """What every model-load event says about the load: the model, the part, its hash,
    the files, the device and the data type."""

    model_key: str
    submodel: SubModelType | None
    hash: str
    path: str
    device: str
    precision: str


@dataclass(frozen=True)
class ModelLoadStarted(Event):
    """A load began: every load request sends it, cache hits included."""

    load: ModelLoad


@dataclass(frozen=True)
class ModelLoadCompleted(Event):
    """A load finished and the model is in the cache."""

    load: ModelLoad
    size_bytes: int
    duration_s: float
    cache_hit: bool


@dataclass(frozen=True)
class ModelLoadFailed(Event):
    """A load failed; `error` is the domain error a caller would get."""

    model_key: str
    submodel: SubModelType | None
    error: EaselError


class InferenceEvents:
    """The process's event bus; build it inside the event loop."""

    def __init__(self) -> None:
        self.bus: EventBus[Event] = EventBus()

    def publish(self, event: Event) -> None:
        self.bus.publish(event)
