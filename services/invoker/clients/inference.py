"""The invoker's use of the inference service: generations as awaitable calls.

Each call creates one generation, waits for it to end and returns its result as plain
values (PNG bytes or a tensor name). Cancelling the awaiting task, or setting the caller's
`cancelled` event, cancels the generation in the inference service too, so a cancelled
node never leaves the GPU busy. Progress events of the generation (with their previews)
reach `on_progress`, and its model loads `on_model_load`.

A preview costs the inference service a copy of the latents off the device, a colour
mapping and a PNG per step, and the event its bytes, so one is asked for only when the
origin takes previews and someone wants them (`previews_wanted`, asked when the
generation is created).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from easel.inference.v1 import generation_service_pb2 as pb
from easel.inference.v1 import generation_service_pb2_grpc
from services.common import errors
from services.common.channels import open_channel
from services.common.error_status import ERROR_BY_CODE, from_rpc_error
from services.common.settings import CommonSettings

CANCEL_TIMEOUT_S = 10.0
RELAY_DRAIN_S = 5.0
"""How long a finished generation's last events may take to be relayed."""


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


ProgressCallback = Callable[[int, int, Preview | None], None]
"""Called with (step, total_steps, preview or None) as a generation advances."""
PreviewsWanted = Callable[[str], bool]
"""Whether anyone wants the previews of a session's generations now, by session id."""
ModelLoadCallback = Callable[[ModelLoad], None]

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
    """Runs generations in the inference service; build it inside the event loop."""

    def __init__(
        self, settings: CommonSettings, previews_wanted: PreviewsWanted = lambda _session: True
    ) -> None:
        self._previews_wanted = previews_wanted
        self._channel = open_channel(settings.inference_address, settings)
        self._stub = generation_service_pb2_grpc.GenerationServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

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
        return _image(await self._run(origin, text_to_image=operation))

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
        return _image(await self._run(origin, image_to_image=operation))

    async def upscale(
        self, model_key: str, image_png: bytes, scale: float | None, origin: Origin = Origin()
    ) -> GeneratedImage:
        operation = pb.Upscale(upscaler_model_key=model_key, image_png=image_png, scale=scale)
        return _image(await self._run(origin, upscale=operation))

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
        return _tensor(await self._run(origin, encode_prompt=operation))

    async def create_noise(
        self, seed: int | None, width: int, height: int, origin: Origin = Origin()
    ) -> str:
        """The name of a noise tensor for an image of width x height."""
        operation = pb.CreateNoise(seed=seed, width=width, height=height)
        return _tensor(await self._run(origin, create_noise=operation))

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
        return _tensor(await self._run(origin, denoise_latents=operation))

    async def decode_latents(
        self, model_key: str, latents: str, origin: Origin = Origin()
    ) -> GeneratedImage:
        operation = pb.DecodeLatents(latents=latents, model_key=model_key)
        return _image(await self._run(origin, decode_latents=operation))

    async def encode_image(
        self, model_key: str, image_png: bytes, origin: Origin = Origin()
    ) -> str:
        """The name of the image's latents tensor."""
        operation = pb.EncodeImage(image_png=image_png, model_key=model_key)
        return _tensor(await self._run(origin, encode_image=operation))

    async def _run(self, origin: Origin, **operation: object) -> pb.Generation:
        """Create the generation, wait for its end and return it once COMPLETED."""
        previews = origin.previews and self._previews_wanted(origin.session_id)
        preview = pb.PREVIEW_MODE_EVERY_STEP if previews else pb.PREVIEW_MODE_NONE
        request = pb.CreateGenerationRequest(
            session_id=origin.session_id,
            invocation_id=origin.invocation_id,
            preview=preview,
            **operation,
        )
        created = await self._call(self._stub.CreateGeneration(request))
        generation_id = created.generation.id
        watch = (
            asyncio.create_task(self._relay_events(generation_id, origin))
            if origin.on_progress is not None or origin.on_model_load is not None
            else None
        )
        try:
            generation = await self._wait(generation_id, origin.cancelled)
            if watch is not None:
                # The watch ends by itself after the generation's last event: relay them all.
                await asyncio.wait({watch}, timeout=RELAY_DRAIN_S)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel(generation_id))
            raise
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
        return _completed(generation)

    async def _wait(self, generation_id: str, cancelled: asyncio.Event | None) -> pb.Generation:
        """The finished generation; setting `cancelled` cancels it and still waits for it."""
        waiting = asyncio.ensure_future(
            self._call(self._stub.WaitGeneration(pb.WaitGenerationRequest(id=generation_id)))
        )
        if cancelled is not None:
            flagged = asyncio.ensure_future(cancelled.wait())
            try:
                await asyncio.wait({waiting, flagged}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                waiting.cancel()
                raise
            finally:
                flagged.cancel()
            if not waiting.done():
                await self._cancel(generation_id)
        try:
            return (await waiting).generation
        except asyncio.CancelledError:
            waiting.cancel()
            raise

    async def _cancel(self, generation_id: str) -> None:
        request = pb.CancelGenerationRequest(id=generation_id)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub.CancelGeneration(request, timeout=CANCEL_TIMEOUT_S)

    async def _relay_events(self, generation_id: str, origin: Origin) -> None:
        """Passes the generation's progress and model loads to the origin's callbacks."""
        request = pb.WatchInferenceEventsRequest(generation_ids=[generation_id])
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for response in self._stub.WatchInferenceEvents(request):
                event = response.event
                kind = event.WhichOneof("payload")
                if kind == "generation_progress" and origin.on_progress is not None:
                    progress = event.generation_progress
                    preview = None
                    if progress.HasField("preview"):
                        shown = progress.preview
                        preview = Preview(shown.png, shown.width, shown.height)
                    origin.on_progress(progress.step, progress.total_steps, preview)
                elif kind in _LOAD_PHASES and origin.on_model_load is not None:
                    origin.on_model_load(_model_load(_LOAD_PHASES[kind], getattr(event, kind)))

    @staticmethod
    async def _call(call):
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None


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
