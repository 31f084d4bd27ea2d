"""The generation queue: one generation at a time on the execution device, in creation
order, with cancellation, waiting and expiry.

The work of a generation is a callable that gets the step hooks (progress, previews,
cancellation) and returns the result; it runs in a worker thread so the event loop keeps
serving while the device computes. Tensors a generation takes as input are pinned in
the tensor store from creation to its end, so they are neither spilled nor deleted
under it. Terminal generations are forgotten past `keep_count` (oldest first) or
`keep_age_s` after they ended; pruning happens on every access, which no caller can tell
from pruning on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from typing import Any

import structlog

from services.common.errors import (
    EaselError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OperationCancelledError,
)
from services.common.event_bus import ChangeSignal
from services.inference.events import EventContext, InferenceEvents
from services.inference.generation.denoise import Progress, StepHooks
from services.inference.generation.jobs import (
    Generation,
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    GenerationProgress,
    GenerationQueued,
    GenerationStarted,
    GenerationStatus,
    OperationKind,
)
from services.inference.tensors.store import TensorInfo, TensorStore

log = structlog.get_logger(__name__)

Work = Callable[[StepHooks], Any]


class _Job:
    """A generation with what only the queue sees: its work, inputs and cancel flag."""

    def __init__(self, generation: Generation, work: Work, inputs: tuple[str, ...], preview: bool):
        self.generation = generation
        self.work = work
        self.inputs = inputs
        self.preview = preview
        self.cancel_requested = False

    def update(self, **changes: Any) -> None:
        self.generation = replace(self.generation, **changes)


class GenerationQueue:
    """Generations by id; build it inside the event loop, then `start` it."""

    def __init__(
        self,
        events: InferenceEvents,
        tensors: TensorStore,
        *,
        keep_count: int,
        keep_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._events = events
        self._tensors = tensors
        self._keep_count = keep_count
        self._keep_age_s = keep_age_s
        self._clock = clock
        self._jobs: dict[str, _Job] = {}  # in creation order
        self._pending: deque[str] = deque()
        self._changed = ChangeSignal()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="generation-queue")

    async def close(self) -> None:
        """Stop: every unfinished generation ends CANCELLED (a running one's thread stops
        at its next step)."""
        for job in self._jobs.values():
            job.cancel_requested = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for job in list(self._jobs.values()):
            if not job.generation.status.terminal:
                self._finish(job, GenerationStatus.CANCELLED)
                self._events.publish(
                    GenerationCancelled(job.generation.step, context=job.generation.context)
                )

    # --- requests -----------------------------------------------------------------------

    def create(
        self,
        kind: OperationKind,
        work: Work,
        *,
        total_steps: int = 0,
        session_id: str = "",
        invocation_id: str = "",
        inputs: Iterable[str] = (),
        preview: bool = False,
    ) -> Generation:
        """Queue a generation; its input tensors must exist (NOT_FOUND otherwise, and
        nothing is queued)."""
        inputs = tuple(inputs)
        self._tensors.pin(inputs)
        generation_id = str(uuid.uuid4())
        context = EventContext(generation_id, session_id, invocation_id)
        generation = Generation(
            id=generation_id,
            operation_kind=kind,
            status=GenerationStatus.QUEUED,
            context=context,
            create_time=self._clock(),
            total_steps=total_steps,
        )
        self._prune()
        self._jobs[generation_id] = _Job(generation, work, inputs, preview)
        self._pending.append(generation_id)
        self._events.publish(GenerationQueued(kind, context=context))
        self._changed.notify()
        return generation

    def get(self, generation_id: str) -> Generation:
        return self._job(generation_id).generation

    def list(
        self, session_id: str = "", statuses: Collection[GenerationStatus] = ()
    ) -> list[Generation]:
        """Generations newest first, optionally of one session and some statuses."""
        self._prune()
        return [
            job.generation
            for job in reversed(self._jobs.values())
            if (not session_id or job.generation.context.session_id == session_id)
            and (not statuses or job.generation.status in statuses)
        ]

    def cancel(self, generation_id: str) -> Generation:
        """Cancel a queued generation at once; ask a running one to stop at its next step."""
        job = self._job(generation_id)
        status = job.generation.status
        if status in (GenerationStatus.COMPLETED, GenerationStatus.ERROR):
            raise FailedPreconditionError(
                f"generation {generation_id} has already ended ({status})",
                reason="GENERATION_FINISHED",
                metadata={"id": generation_id, "status": status.value},
            )
        if status is GenerationStatus.QUEUED:
            self._finish(job, GenerationStatus.CANCELLED)
            self._events.publish(GenerationCancelled(0, context=job.generation.context))
        elif status is GenerationStatus.RUNNING:
            job.cancel_requested = True
        return job.generation

    async def wait(self, generation_id: str) -> Generation:
        """The generation once it is terminal."""
        job = self._job(generation_id)
        await self._changed.wait_until(lambda: job.generation.status.terminal)
        return job.generation

    # --- the worker ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._changed.wait_until(lambda: bool(self._pending))
            job = self._jobs.get(self._pending.popleft())
            if job is None or job.generation.status is not GenerationStatus.QUEUED:
                continue  # cancelled while queued
            await self._execute(job)

    async def _execute(self, job: _Job) -> None:
        generation = job.generation
        job.update(status=GenerationStatus.RUNNING, start_time=self._clock())
        self._events.publish(
            GenerationStarted(
                generation.operation_kind, generation.total_steps, context=generation.context
            )
        )
        self._changed.notify()
        try:
            result = await asyncio.to_thread(job.work, self._hooks(job))
        except OperationCancelledError:
            self._finish(job, GenerationStatus.CANCELLED)
            self._events.publish(
                GenerationCancelled(job.generation.step, context=generation.context)
            )
        except EaselError as error:
            self._fail(job, error)
        except Exception as error:
            log.exception("generation failed", generation_id=generation.id)
            self._fail(job, InternalError(f"{type(error).__name__}: {error}"))
        else:
            if job.cancel_requested:  # a step-less operation ended after the request
                self._discard(result)
                self._finish(job, GenerationStatus.CANCELLED)
                self._events.publish(
                    GenerationCancelled(job.generation.step, context=generation.context)
                )
            else:
                self._finish(job, GenerationStatus.COMPLETED, result=result)
                self._events.publish(GenerationCompleted(result, context=generation.context))

    def _hooks(self, job: _Job) -> StepHooks:
        context = job.generation.context

        def on_progress(progress: Progress) -> None:
            job.update(step=progress.step, total_steps=progress.total_steps)
            self._events.publish(
                GenerationProgress(
                    progress.step, progress.total_steps, progress.preview, context=context
                )
            )

        return StepHooks(
            on_progress=on_progress,
            want_preview=job.preview,
            should_cancel=lambda: job.cancel_requested,
            context=context,
        )

    # --- inside -------------------------------------------------------------------------

    def _job(self, generation_id: str) -> _Job:
        if not generation_id:
            raise InvalidArgumentError("a generation id is required", field="id")
        self._prune()
        job = self._jobs.get(generation_id)
        if job is None:
            raise NotFoundError(
                f"generation {generation_id} does not exist",
                reason="GENERATION_NOT_FOUND",
                metadata={"id": generation_id},
            )
        return job

    def _fail(self, job: _Job, error: EaselError) -> None:
        self._finish(job, GenerationStatus.ERROR, error=error)
        self._events.publish(GenerationFailed(error, context=job.generation.context))

    def _finish(self, job: _Job, status: GenerationStatus, **changes: Any) -> None:
        job.update(status=status, end_time=self._clock(), **changes)
        self._tensors.unpin(job.inputs)
        job.inputs = ()
        self._changed.notify()
        self._prune()

    def _discard(self, result: Any) -> None:
        """Delete a tensor a cancelled generation stored anyway."""
        if isinstance(result, TensorInfo):
            with contextlib.suppress(NotFoundError):
                self._tensors.delete(result.name)

    def _prune(self) -> None:
        """Forget terminal generations past the count and the age to keep."""
        ended = [job for job in self._jobs.values() if job.generation.status.terminal]
        ended.sort(key=lambda job: job.generation.end_time or 0.0)
        cutoff = self._clock() - self._keep_age_s
        excess = len(ended) - self._keep_count
        for index, job in enumerate(ended):
            if index < excess or (job.generation.end_time or 0.0) < cutoff:
                del self._jobs[job.generation.id]
