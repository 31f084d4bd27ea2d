"""The invoker's use of the inference service: generations as awaitable calls.

Each call runs one generation in one RunGeneration stream and returns its result as plain
values (PNG bytes or a tensor name). The stream carries every event of the generation from
before it was queued, so the progress events (with their previews) reaching `on_progress`
and the model loads reaching `on_model_load` are all of them, in order. Cancelling the
awaiting task, or setting the caller's `cancelled` event, ends the stream, which cancels
the generation in the inference service too, so a cancelled node never leaves the GPU busy.

Several inference workers may serve the invoker (see `inference_workers`); the client's
routing is on `InferenceClient`. A worker that goes away fails the generations it was
running, and those that need its tensors, with INFERENCE_WORKER_LOST (UNAVAILABLE).

A preview costs the inference service a copy of the latents off the device, a colour
mapping and a PNG per step, and the event its bytes, so one is asked for only when the
origin takes previews and someone wants them (`previews_wanted`, asked when the
generation is created).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import grpc

from easel.inference.v1 import generation_service_pb2 as pb
from easel.inference.v1 import generation_service_pb2_grpc, tensor_store_service_pb2_grpc
from easel.inference.v1 import tensor_store_service_pb2 as tensor_pb
from services.common import errors
from services.common.channels import open_channel
from services.common.error_status import ERROR_BY_CODE, from_rpc_error
from services.common.settings import CommonSettings
from services.invoker.clients.inference_workers import (
    SERVICE_CONFIG,
    Worker,
    WorkerChannels,
    balanced_target,
    resolve_workers,
)

INFERENCE_WORKER_LOST = "INFERENCE_WORKER_LOST"
"""Reason of a node whose worker went away with its generation or its input tensors."""
INFERENCE_UNAVAILABLE = "INFERENCE_UNAVAILABLE"
LOOKUP_S = 5.0
"""Deadline of asking one worker whether it holds a tensor."""
REMEMBERED_TENSORS = 100_000
"""Tensor names whose worker the client remembers (older ones are asked for again)."""
REMEMBERED_SESSIONS = 10_000


@dataclass(frozen=True)
class Preview:
    """A small PNG of a generation's work in progress."""

    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class ModelLoad:
    """A model load of a generation, as the inference service reports it: `phase` is
    "started", "completed" or "failed"; the fields of the other phases stay empty."""

    phase: str
    model_key: str
    submodel_type: int
    hash: str = ""
    path: str = ""
    device: str = ""
    precision: str = ""
    size_bytes: int = 0
    load_seconds: float = 0.0
    cache_hit: bool = False
    error_type: str = ""
    error: str = ""
    error_code: int = 0
    time: datetime | None = None
    """When it happened, by the inference service's clock."""


ProgressCallback = Callable[[int, int, Preview | None, datetime], None]
"""Called with (step, total_steps, preview or None, when the step ended by the inference
service's clock) as a generation advances."""
PreviewsWanted = Callable[[str], bool]
"""Whether anyone wants the previews of a session's generations now, by session id."""
ModelLoadCallback = Callable[[ModelLoad], None]

V = TypeVar("V")
_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class Origin:
    """Who asks for a generation: the session and node it is recorded under, where its
    progress (with a preview per step when `previews`) and model loads go, and the event
    that cancels it."""

    session_id: str = ""
    invocation_id: str = ""
    on_progress: ProgressCallback | None = None
    cancelled: asyncio.Event | None = None
    on_model_load: ModelLoadCallback | None = None
    previews: bool = False


@dataclass(frozen=True)
class Lora:
    """A LoRA applied to a generation, at `weight` (None: the service's default)."""

    model_key: str
    weight: float | None = None


@dataclass(frozen=True)
class GeneratedImage:
    """An image a generation made."""

    png: bytes
    width: int
    height: int
    seed: int | None
    """The seed the generation used, for those that start from noise."""


@dataclass(frozen=True)
class Sampling:
    """How a denoising runs; zero and empty values take the service's defaults."""

    steps: int = 0
    cfg_scale: float | None = None
    scheduler: str = ""


class InferenceClient:
    """Runs generations on the inference workers; build it inside the event loop.

    A whole generation (txt2img, img2img, upscale) goes to any worker, over the balanced
    channel. A building block goes to the worker that holds its input tensors, which the
    client remembers from the generations that made them (and otherwise asks the workers
    for); one without inputs goes to the worker of its session's earlier blocks, so a
    graph's tensors meet in one worker, or, for a session's first block, to the next
    worker in turn.
    """

    def __init__(
        self, settings: CommonSettings, previews_wanted: PreviewsWanted = lambda _session: True
    ) -> None:
        self._previews_wanted = previews_wanted
        self._address = settings.inference_address
        config = [("grpc.service_config", SERVICE_CONFIG)]
        self._balanced = open_channel(balanced_target(self._address), settings, options=config)
        self._any_worker = generation_service_pb2_grpc.GenerationServiceStub(self._balanced)
        tls = settings.tls_cert_file is not None or settings.tls_ca_file is not None

        def open_worker(worker: Worker) -> grpc.aio.Channel:
            options = list(config)
            if tls and worker.tls_name:
                options.append(("grpc.ssl_target_name_override", worker.tls_name))
            return open_channel(worker.target, settings, options=options)

        self._workers = WorkerChannels(open_worker)
        self._owners: _Recent[Worker] = _Recent(REMEMBERED_TENSORS)
        self._session_workers: _Recent[Worker] = _Recent(REMEMBERED_SESSIONS)
        self._turn = 0

    async def close(self) -> None:
        await self._balanced.close()
        await self._workers.close()

    async def text_to_image(
        self,
        model_key: str,
        positive_prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        sampling: Sampling,
        seed: int | None,
        loras: Sequence[Lora] = (),
        vae_key: str = "",
        origin: Origin = Origin(),
        embedding_keys: Sequence[str] = (),
    ) -> GeneratedImage:
        """`embedding_keys`: the textual-inversion models whose `<name>` triggers the
        prompts may use."""
        operation = pb.TextToImage(
            model_key=model_key,
            positive_prompt=positive_prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=sampling.steps,
            cfg_scale=sampling.cfg_scale,
            scheduler=sampling.scheduler,
            seed=seed,
            vae_key=vae_key,
            loras=_loras(loras),
            embedding_keys=embedding_keys,
        )
        return _image(await self._whole(origin, text_to_image=operation))

    async def image_to_image(
        self,
        model_key: str,
        init_image_png: bytes,
        positive_prompt: str,
        negative_prompt: str,
        strength: float | None,
        sampling: Sampling,
        seed: int | None,
        loras: Sequence[Lora] = (),
        vae_key: str = "",
        origin: Origin = Origin(),
        embedding_keys: Sequence[str] = (),
    ) -> GeneratedImage:
        operation = pb.ImageToImage(
            model_key=model_key,
            init_image_png=init_image_png,
            positive_prompt=positive_prompt,
            negative_prompt=negative_prompt,
            strength=strength,
            steps=sampling.steps,
            cfg_scale=sampling.cfg_scale,
            scheduler=sampling.scheduler,
            seed=seed,
            vae_key=vae_key,
            loras=_loras(loras),
            embedding_keys=embedding_keys,
        )
        return _image(await self._whole(origin, image_to_image=operation))

    async def upscale(
        self, model_key: str, image_png: bytes, scale: float | None, origin: Origin = Origin()
    ) -> GeneratedImage:
        operation = pb.Upscale(upscaler_model_key=model_key, image_png=image_png, scale=scale)
        return _image(await self._whole(origin, upscale=operation))

    async def encode_prompt(
        self,
        model_key: str,
        prompt: str,
        loras: Sequence[Lora] = (),
        origin: Origin = Origin(),
        embedding_keys: Sequence[str] = (),
    ) -> str:
        """The name of the prompt's conditioning tensor."""
        operation = pb.EncodePrompt(
            model_key=model_key, prompt=prompt, loras=_loras(loras), embedding_keys=embedding_keys
        )
        return _tensor(await self._block(origin, (), encode_prompt=operation))

    async def create_noise(
        self, seed: int | None, width: int, height: int, origin: Origin = Origin()
    ) -> str:
        """The name of a noise tensor for an image of width x height."""
        operation = pb.CreateNoise(seed=seed, width=width, height=height)
        return _tensor(await self._block(origin, (), create_noise=operation))

    async def denoise_latents(
        self,
        model_key: str,
        positive_conditioning: str,
        negative_conditioning: str,
        noise: str,
        latents: str,
        sampling: Sampling,
        denoising_start: float = 0.0,
        denoising_end: float | None = None,
        loras: Sequence[Lora] = (),
        origin: Origin = Origin(),
    ) -> str:
        """The name of the denoised latents tensor."""
        operation = pb.DenoiseLatents(
            model_key=model_key,
            positive_conditioning=positive_conditioning,
            negative_conditioning=negative_conditioning,
            noise=noise,
            latents=latents,
            steps=sampling.steps,
            cfg_scale=sampling.cfg_scale,
            scheduler=sampling.scheduler,
            denoising_start=denoising_start,
            denoising_end=denoising_end,
            loras=_loras(loras),
        )
        inputs = (positive_conditioning, negative_conditioning, noise, latents)
        return _tensor(await self._block(origin, inputs, denoise_latents=operation))

    async def decode_latents(
        self, model_key: str, latents: str, origin: Origin = Origin()
    ) -> GeneratedImage:
        operation = pb.DecodeLatents(latents=latents, model_key=model_key)
        return _image(await self._block(origin, (latents,), decode_latents=operation))

    async def encode_image(
        self, model_key: str, image_png: bytes, origin: Origin = Origin()
    ) -> str:
        """The name of the image's latents tensor."""
        operation = pb.EncodeImage(image_png=image_png, model_key=model_key)
        return _tensor(await self._block(origin, (), encode_image=operation))

    # --- routing ----------------------------------------------------------------------------

    async def _whole(self, origin: Origin, **operation: object) -> pb.Generation:
        """A generation on any worker (gRPC's round robin picks it)."""
        try:
            return await self._run(self._any_worker, origin, **operation)
        except _NotStarted as not_started:
            raise not_started.error from None

    async def _block(
        self, origin: Origin, inputs: Sequence[str], **operation: object
    ) -> pb.Generation:
        """A building block on the worker that holds `inputs`; without inputs, on its
        session's worker, or the next one that can be reached."""
        names = [name for name in inputs if name]
        if names:
            candidates = [await self._owner(names, origin.session_id)]
        else:
            candidates = await self._candidates(origin.session_id)
        if not candidates:
            raise errors.UnavailableError(
                f"no inference worker found at {self._address}",
                reason=INFERENCE_UNAVAILABLE,
                metadata={"address": self._address},
            )
        for index, worker in enumerate(candidates):
            stub = generation_service_pb2_grpc.GenerationServiceStub(self._workers.get(worker))
            try:
                generation = await self._run(stub, origin, worker, **operation)
            except _NotStarted as not_started:
                if names:
                    raise _lost(worker, not_started.error, tensors=names) from None
                if index == len(candidates) - 1:
                    raise not_started.error from None
                continue
            if origin.session_id:
                self._session_workers.put(origin.session_id, worker)
            if generation.result.HasField("tensor"):
                self._owners.put(generation.result.tensor.name, worker)
            return generation
        raise AssertionError("unreachable: the last candidate returns or raises")

    async def _owner(self, names: Sequence[str], session_id: str) -> Worker:
        """The worker holding the first of `names` that one is known to hold; for names
        made before this client (another invoker, a restart) the workers are asked. When
        none holds them, the session's worker, whose answer then says they are missing."""
        for name in names:
            known = self._owners.get(name)
            if known is not None:
                return known
        workers = await resolve_workers(self._address)
        for worker in workers:
            stub = tensor_store_service_pb2_grpc.TensorStoreServiceStub(self._workers.get(worker))
            try:
                await stub.GetTensor(tensor_pb.GetTensorRequest(name=names[0]), timeout=LOOKUP_S)
            except grpc.aio.AioRpcError:
                continue
            self._owners.put(names[0], worker)
            return worker
        candidates = await self._candidates(session_id)
        if not candidates:
            raise errors.UnavailableError(
                f"no inference worker found at {self._address}",
                reason=INFERENCE_UNAVAILABLE,
                metadata={"address": self._address},
            )
        return candidates[0]

    async def _candidates(self, session_id: str) -> list[Worker]:
        """Where a block without inputs may run, best first: the session's worker, then
        every worker in turn from the next one, those seen down last."""
        workers = await resolve_workers(self._address)
        self._turn += 1
        if workers:
            shift = self._turn % len(workers)
            workers = workers[shift:] + workers[:shift]
        workers.sort(key=self._workers.looks_down)
        pinned = self._session_workers.get(session_id) if session_id else None
        if pinned is not None and pinned in workers:
            workers.remove(pinned)
            workers.insert(0, pinned)
        return workers

    # --- one generation ---------------------------------------------------------------------

    async def _run(
        self,
        stub: generation_service_pb2_grpc.GenerationServiceStub,
        origin: Origin,
        worker: Worker | None = None,
        **operation: object,
    ) -> pb.Generation:
        """Run a generation in one RunGeneration call, relaying its events, and return it
        once COMPLETED. Cancelling the awaiting task or setting `origin.cancelled` ends the
        call, which cancels the generation in its worker."""
        previews = origin.previews and self._previews_wanted(origin.session_id)
        preview = pb.PREVIEW_MODE_EVERY_STEP if previews else pb.PREVIEW_MODE_NONE
        request = pb.RunGenerationRequest(
            generation=pb.CreateGenerationRequest(
                session_id=origin.session_id,
                invocation_id=origin.invocation_id,
                preview=preview,
                **operation,
            )
        )
        call = stub.RunGeneration()
        stream = _Stream(call, origin, worker)
        reading = asyncio.ensure_future(stream.read(request))
        flagged = asyncio.ensure_future(origin.cancelled.wait()) if origin.cancelled else None
        try:
            await asyncio.wait({reading, flagged} - {None}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # cancelled by the origin: the stream goes on to the end
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await call.write(pb.RunGenerationRequest(cancel=pb.RunGenerationCancel()))
                await reading
        except asyncio.CancelledError:
            call.cancel()
            reading.cancel()
            raise
        finally:
            if flagged is not None:
                flagged.cancel()
        return _completed(reading.result())


class _NotStarted(Exception):
    """A RunGeneration call found no worker to take it: nothing was created."""

    def __init__(self, error: errors.EaselError) -> None:
        super().__init__(error.message)
        self.error = error


class _Stream:
    """One RunGeneration call read to its end: its events relayed to the origin, the
    generation's last snapshot returned."""

    def __init__(self, call: Any, origin: Origin, worker: Worker | None) -> None:
        self._call = call
        self._origin = origin
        self._worker = worker
        self.generation_id = ""

    async def read(self, request: pb.RunGenerationRequest) -> pb.Generation:
        last: pb.Generation | None = None
        try:
            await self._call.write(request)
            async for response in self._call:
                event = response.event
                if event.HasField("generation_snapshot"):
                    last = event.generation_snapshot.generation
                    self.generation_id = last.id
                else:
                    _relay(event, self._origin)
        except grpc.aio.AioRpcError as error:
            failure = from_rpc_error(error)
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise failure from None
            if not self.generation_id:
                raise _NotStarted(failure) from None
            raise _lost(self._worker, failure, generation_id=self.generation_id) from None
        if last is None or last.status in _UNFINISHED:
            raise errors.InternalError(
                f"the inference service ended generation {self.generation_id} without its end"
            )
        return last


def _lost(
    worker: Worker | None,
    cause: errors.EaselError,
    generation_id: str = "",
    tensors: Sequence[str] = (),
) -> errors.UnavailableError:
    """The inference worker running a generation, or holding its input tensors, went away."""
    where = f"inference worker {worker.target}" if worker else "the inference worker"
    if tensors:
        message = f"{where}, which holds tensor {tensors[0]}, cannot be reached: {cause.message}"
    else:
        message = f"{where} went away while running generation {generation_id}: {cause.message}"
    metadata = {"worker": worker.target} if worker else {}
    if generation_id:
        metadata["generation_id"] = generation_id
    return errors.UnavailableError(message, reason=INFERENCE_WORKER_LOST, metadata=metadata)


def _relay(event: pb.InferenceEvent, origin: Origin) -> None:
    """Passes a generation's progress and model loads to the origin's callbacks."""
    kind = event.WhichOneof("payload")
    if kind == "generation_progress" and origin.on_progress is not None:
        progress = event.generation_progress
        preview = None
        if progress.HasField("preview"):
            shown = progress.preview
            preview = Preview(shown.png, shown.width, shown.height)
        origin.on_progress(progress.step, progress.total_steps, preview, _time(event))
    elif kind in _LOAD_PHASES and origin.on_model_load is not None:
        load = _model_load(_LOAD_PHASES[kind], getattr(event, kind))
        origin.on_model_load(replace(load, time=_time(event)))


def _time(event: pb.InferenceEvent) -> datetime:
    return event.time.ToDatetime(tzinfo=UTC)


class _Recent(Generic[V]):
    """The most recently put values by key, at most `size` of them."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._values: OrderedDict[str, V] = OrderedDict()

    def put(self, key: str, value: V) -> None:
        self._values[key] = value
        self._values.move_to_end(key)
        if len(self._values) > self._size:
            self._values.popitem(last=False)

    def get(self, key: str) -> V | None:
        return self._values.get(key)


_UNFINISHED = (pb.GENERATION_STATUS_QUEUED, pb.GENERATION_STATUS_RUNNING)
_LOAD_PHASES = {
    "model_load_started": "started",
    "model_load_completed": "completed",
    "model_load_failed": "failed",
}


def _model_load(phase: str, load: Any) -> ModelLoad:
    """A model-load event of any phase as one plain value (absent fields stay empty)."""
    present = {field.name: value for field, value in load.ListFields()}
    duration = present.pop("load_duration", None)
    seconds = 0.0 if duration is None else duration.ToTimedelta().total_seconds()
    return ModelLoad(
        phase, load_seconds=seconds, **{"model_key": "", "submodel_type": 0, **present}
    )


def _completed(generation: pb.Generation) -> pb.Generation:
    """`generation` when COMPLETED; its failure or cancellation as a domain error."""
    if generation.status == pb.GENERATION_STATUS_COMPLETED:
        return generation
    metadata = {"generation_id": generation.id}
    if generation.status == pb.GENERATION_STATUS_CANCELLED:
        raise errors.OperationCancelledError(
            f"generation {generation.id} was cancelled", metadata=metadata
        )
    code = _STATUS_BY_NUMBER.get(generation.error_code, grpc.StatusCode.INTERNAL)
    error_class = ERROR_BY_CODE.get(code, errors.InternalError)
    message = f"generation {generation.id} failed: {generation.error}"
    raise error_class(message, reason=generation.error_type or None, metadata=metadata)


def _image(generation: pb.Generation) -> GeneratedImage:
    image = generation.result.image
    return GeneratedImage(
        image.png, image.width, image.height, image.seed if image.HasField("seed") else None
    )


def _tensor(generation: pb.Generation) -> str:
    return generation.result.tensor.name


def _loras(loras: Sequence[Lora]) -> list[pb.LoraWeight]:
    return [pb.LoraWeight(model_key=lora.model_key, weight=lora.weight) for lora in loras]
