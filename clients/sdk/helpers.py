"""What users do most, each in one call, on the sync client (`Helpers`) and the asyncio
client (`AsyncHelpers`): generate an image and save it, install a model following its
progress, run a graph and iterate its events, upload and download images.

Both mixins drive the same stubs the same way; what a run's or an install's events mean
is read once, by `SessionRun` and `InstallProgress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from clients.sdk.graphs import edge, graph, node
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import image_service_pb2 as image_pb
from easel.invoker.v1 import session_service_pb2 as session_pb
from easel.model_manager.v1 import model_install_service_pb2 as install_pb
from easel.model_manager.v1 import model_pb2
from services.common.errors import (
    EaselError,
    InvalidArgumentError,
    OperationCancelledError,
    UnavailableError,
)

CHUNK_BYTES = 1024 * 1024
"""Largest chunk of an image upload the invoker accepts."""

TERMINAL_EVENTS = frozenset({"session_complete", "session_cancelled", "session_error"})
"""Session event payloads that end a run."""

GENERATE_NODE = "txt2img"
SAVE_NODE = "save"

LocalPath = str | os.PathLike[str]
SessionEventCallback = Callable[[session_pb.SessionEvent], Any]
InstallEventCallback = Callable[[install_pb.InstallEvent], Any]


class JobFailedError(EaselError):
    """A job (a session's run, a model install) ended in failure: `reason` is its error
    type (e.g. OUT_OF_MEMORY, MODEL_NOT_FOUND), `metadata` names the job."""

    default_reason = "JOB_FAILED"


def txt2img_graph(prompt: str, model: str | None, inputs: Mapping[str, Any]) -> graph_pb2.Graph:
    """txt2img saving its image for the user; inputs left out take the node's defaults."""
    values = dict(inputs)
    if model:
        values["model"] = {"key": model}
    return graph(
        [node(GENERATE_NODE, "txt2img", prompt=prompt, **values), node(SAVE_NODE, "save_image")],
        [edge(f"{GENERATE_NODE}.image", f"{SAVE_NODE}.image")],
    )


def invoke_request(session_id: str, priority: int) -> session_pb.InvokeSessionRequest:
    return session_pb.InvokeSessionRequest(session_id=session_id, all=True, priority=priority)


def is_terminal(event: session_pb.SessionEvent) -> bool:
    return event.WhichOneof("payload") in TERMINAL_EVENTS


class SessionRun:
    """What one run's events say: each node's outputs, and how the run ended."""

    def __init__(self) -> None:
        self.outputs: dict[str, dict[str, Any]] = {}
        self.session_id = ""
        self.end: session_pb.SessionEvent | None = None

    def add(self, event: session_pb.SessionEvent) -> None:
        self.session_id = self.session_id or event.session_id
        if event.HasField("invocation_complete"):
            outputs = event.invocation_complete.outputs
            self.outputs[event.node_id] = {key: outputs[key] for key in outputs}
        elif is_terminal(event):
            self.end = event

    def image_name(self, node_id: str) -> str:
        """The image node `node_id` made; raises the run's failure if it did not end well."""
        metadata = {"session_id": self.session_id}
        if self.end is None:
            raise UnavailableError(
                "the session's events ended before its run did",
                reason="EVENTS_ENDED",
                metadata=metadata,
            )
        if self.end.HasField("session_cancelled"):
            raise OperationCancelledError(
                "the session's run was cancelled", reason="SESSION_CANCELLED", metadata=metadata
            )
        if self.end.HasField("session_error"):
            failure = self.end.session_error
            raise JobFailedError(
                failure.error,
                reason=failure.error_type or None,
                metadata={**metadata, "node_id": self.end.node_id},
            )
        return str(self.outputs[node_id]["image"]["image_name"])


def install_request(
    source: str, config: Mapping[str, Any] | None, access_token: str, inplace: bool
) -> install_pb.CreateInstallJobRequest:
    request = install_pb.CreateInstallJobRequest(
        heuristic_source=source, access_token=access_token, inplace=inplace
    )
    if config:
        request.config.update(config)
    return request


class InstallProgress:
    """Follows one install job's events to its end."""

    def __init__(self, job: install_pb.InstallJob) -> None:
        self._job = job
        self._config: model_pb2.ModelConfig | None = None
        self._failure: EaselError | None = None

    def add(self, event: install_pb.InstallEvent) -> None:
        payload = event.WhichOneof("payload")
        if payload == "snapshot":
            job = event.snapshot.job
            if job.status == install_pb.INSTALL_STATUS_COMPLETED:
                self._config = job.config_out
            elif job.status == install_pb.INSTALL_STATUS_ERROR:
                self._failure = self._failed(job.error_type, job.error)
            elif job.status == install_pb.INSTALL_STATUS_CANCELLED:
                self._failure = self._cancelled()
        elif payload == "completed":
            self._config = event.completed.config
        elif payload == "error":
            self._failure = self._failed(event.error.error_type, event.error.error)
        elif payload == "cancelled":
            self._failure = self._cancelled()

    def result(self) -> model_pb2.ModelConfig:
        """The installed model's record; raises the job's failure."""
        if self._failure is not None:
            raise self._failure
        if self._config is None:
            raise UnavailableError(
                "the install job's events ended before the job did",
                reason="EVENTS_ENDED",
                metadata=self._metadata(),
            )
        return self._config

    def _metadata(self) -> dict[str, str]:
        return {"job_id": str(self._job.id), "source": self._job.source_string}

    def _failed(self, error_type: str, error: str) -> JobFailedError:
        return JobFailedError(error, reason=error_type or None, metadata=self._metadata())

    def _cancelled(self) -> OperationCancelledError:
        return OperationCancelledError(
            "the install job was cancelled", reason="INSTALL_CANCELLED", metadata=self._metadata()
        )


def upload_requests(
    data: bytes, *, is_intermediate: bool, session_id: str, metadata: Mapping[str, Any] | None
) -> Iterator[image_pb.UploadImageRequest]:
    """An UploadImage stream: the metadata, then the bytes in chunks of at most 1 MiB."""
    header = image_pb.UploadImageMetadata(
        is_intermediate=is_intermediate,
        session_id=session_id,
        metadata=_struct(metadata or {}),
        size_bytes=len(data),
    )
    yield image_pb.UploadImageRequest(metadata=header)
    for start in range(0, len(data), CHUNK_BYTES):
        yield image_pb.UploadImageRequest(chunk=data[start : start + CHUNK_BYTES])


def image_bytes(image: bytes | LocalPath) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def save_file(dest_dir: LocalPath, name: str, data: bytes) -> Path:
    """Write `data` to `dest_dir/name` (made if missing), whole or not at all."""
    if Path(name).name != name or name.startswith("."):
        raise InvalidArgumentError(f"{name!r} is not a plain file name", field="name")
    folder = Path(dest_dir)
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, part = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(part, folder / name)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return folder / name


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


class Helpers:
    """One-call workflows of the sync client (mixed into `EaselClient`)."""

    sessions: Any
    images: Any
    model_install: Any

    def run_session(
        self,
        session_id: str,
        *,
        priority: int = 0,
        include_previews: bool = False,
        timeout: float | None = None,
    ) -> Iterator[session_pb.SessionEvent]:
        """Run the session's ready nodes and yield its events, from its snapshot to the
        run's terminal event (session_complete, session_cancelled or session_error).

        The run is queued once the watch has its snapshot, so no event is missed.
        `timeout` bounds the whole run (DeadlineExceededError). Leaving the loop early
        stops watching only; CancelSession stops the run.
        """
        request = session_pb.WatchSessionEventsRequest(
            session_ids=[session_id], include_previews=include_previews
        )
        stream = self.sessions.WatchSessionEvents(request, timeout=timeout)
        try:
            for response in stream:
                event = response.event
                if event.HasField("snapshot"):
                    self.sessions.InvokeSession(invoke_request(session_id, priority))
                yield event
                if is_terminal(event):
                    return
        finally:
            stream.cancel()

    def run_graph(
        self,
        session_graph: graph_pb2.Graph,
        *,
        priority: int = 0,
        include_previews: bool = False,
        timeout: float | None = None,
    ) -> Iterator[session_pb.SessionEvent]:
        """Create a session from `session_graph` (see `clients.sdk.graphs`), run it and
        yield its events as `run_session` does; each event names the session."""
        request = session_pb.CreateSessionRequest(graph=session_graph)
        session = self.sessions.CreateSession(request).session
        yield from self.run_session(
            session.id, priority=priority, include_previews=include_previews, timeout=timeout
        )

    def generate_image(
        self,
        prompt: str,
        dest_dir: LocalPath = ".",
        *,
        model: str | None = None,
        on_event: SessionEventCallback | None = None,
        timeout: float | None = None,
        **inputs: Any,
    ) -> Path:
        """Generate an image from `prompt` in a txt2img session and save it into
        `dest_dir` under its image name; return its path.

        `model` is a main model's key (the default main model when None); `inputs` are
        txt2img's other inputs (negative_prompt, width, height, steps, cfg_scale,
        scheduler, seed, loras), each the node's default when left out. `on_event` sees
        every session event (progress, model loads). A failed run raises JobFailedError
        (its reason the node's error type), a cancelled one OperationCancelledError.
        """
        run = SessionRun()
        for event in self.run_graph(txt2img_graph(prompt, model, inputs), timeout=timeout):
            run.add(event)
            if on_event is not None:
                on_event(event)
        return self.download_image(run.image_name(SAVE_NODE), dest_dir)

    def install_model(
        self,
        source: str,
        *,
        config: Mapping[str, Any] | None = None,
        access_token: str = "",
        inplace: bool = False,
        on_progress: InstallEventCallback | None = None,
        timeout: float | None = None,
    ) -> model_pb2.ModelConfig:
        """Install the model at `source` (a local path, a URL or a HuggingFace repo id)
        and return its record once installed.

        `on_progress` sees each InstallEvent: the job's snapshot, then downloading
        (bytes, total_bytes), running, and its end. A failed install raises JobFailedError
        (reason its error type), a cancelled one OperationCancelledError. `timeout` bounds
        the wait (DeadlineExceededError), leaving the job running.
        """
        request = install_request(source, config, access_token, inplace)
        job = self.model_install.CreateInstallJob(request).job
        progress = InstallProgress(job)
        watch = install_pb.WatchInstallJobsRequest(job_ids=[job.id])
        for response in self.model_install.WatchInstallJobs(watch, timeout=timeout):
            progress.add(response.event)
            if on_progress is not None:
                on_progress(response.event)
        return progress.result()

    def upload_image(
        self,
        image: bytes | LocalPath,
        *,
        is_intermediate: bool = False,
        session_id: str = "",
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> image_pb.ImageRecord:
        """Upload a PNG (its bytes or a file's path) in chunks; return its image record."""
        requests = upload_requests(
            image_bytes(image),
            is_intermediate=is_intermediate,
            session_id=session_id,
            metadata=metadata,
        )
        return self.images.UploadImage(requests, timeout=timeout).image

    def download_image(
        self, name: str, dest_dir: LocalPath = ".", *, timeout: float | None = None
    ) -> Path:
        """Save the stored image `name` as `dest_dir/name`; return that path."""
        request = image_pb.GetImageContentRequest(name=name)
        stream = self.images.GetImageContent(request, timeout=timeout)
        return save_file(dest_dir, name, b"".join(part.chunk for part in stream))


class AsyncHelpers:
    """The same workflows on the asyncio client (mixed into `AsyncEaselClient`). They take
    no `timeout`: bound them with `asyncio.timeout`, whose cancellation ends their calls
    (a run or an install goes on). The callbacks may be functions or coroutine functions."""

    sessions: Any
    images: Any
    model_install: Any

    async def run_session(
        self,
        session_id: str,
        *,
        priority: int = 0,
        include_previews: bool = False,
    ) -> AsyncIterator[session_pb.SessionEvent]:
        """As `Helpers.run_session`, an async iterator; to leave early, close it
        (`contextlib.aclosing`) so that watching stops at once."""
        request = session_pb.WatchSessionEventsRequest(
            session_ids=[session_id], include_previews=include_previews
        )
        stream = self.sessions.WatchSessionEvents(request)
        try:
            async for response in stream:
                event = response.event
                if event.HasField("snapshot"):
                    await self.sessions.InvokeSession(invoke_request(session_id, priority))
                yield event
                if is_terminal(event):
                    return
        finally:
            stream.cancel()

    async def run_graph(
        self,
        session_graph: graph_pb2.Graph,
        *,
        priority: int = 0,
        include_previews: bool = False,
    ) -> AsyncIterator[session_pb.SessionEvent]:
        """As `Helpers.run_graph`, an async iterator."""
        request = session_pb.CreateSessionRequest(graph=session_graph)
        session = (await self.sessions.CreateSession(request)).session
        events = self.run_session(session.id, priority=priority, include_previews=include_previews)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def generate_image(
        self,
        prompt: str,
        dest_dir: LocalPath = ".",
        *,
        model: str | None = None,
        on_event: SessionEventCallback | None = None,
        **inputs: Any,
    ) -> Path:
        """As `Helpers.generate_image`."""
        run = SessionRun()
        events = self.run_graph(txt2img_graph(prompt, model, inputs))
        async with contextlib.aclosing(events):
            async for event in events:
                run.add(event)
                await _call(on_event, event)
        return await self.download_image(run.image_name(SAVE_NODE), dest_dir)

    async def install_model(
        self,
        source: str,
        *,
        config: Mapping[str, Any] | None = None,
        access_token: str = "",
        inplace: bool = False,
        on_progress: InstallEventCallback | None = None,
    ) -> model_pb2.ModelConfig:
        """As `Helpers.install_model`."""
        request = install_request(source, config, access_token, inplace)
        job = (await self.model_install.CreateInstallJob(request)).job
        progress = InstallProgress(job)
        watch = install_pb.WatchInstallJobsRequest(job_ids=[job.id])
        async for response in self.model_install.WatchInstallJobs(watch):
            progress.add(response.event)
            await _call(on_progress, response.event)
        return progress.result()

    async def upload_image(
        self,
        image: bytes | LocalPath,
        *,
        is_intermediate: bool = False,
        session_id: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> image_pb.ImageRecord:
        """As `Helpers.upload_image`."""
        requests = upload_requests(
            await asyncio.to_thread(image_bytes, image),
            is_intermediate=is_intermediate,
            session_id=session_id,
            metadata=metadata,
        )
        return (await self.images.UploadImage(requests)).image

    async def download_image(self, name: str, dest_dir: LocalPath = ".") -> Path:
        """As `Helpers.download_image`."""
        request = image_pb.GetImageContentRequest(name=name)
        parts = [part.chunk async for part in self.images.GetImageContent(request)]
        return await asyncio.to_thread(save_file, dest_dir, name, b"".join(parts))


async def _call(callback: Callable[[Any], Any] | None, event: Any) -> None:
    if callback is not None:
        outcome = callback(event)
        if inspect.isawaitable(outcome):
            await outcome
