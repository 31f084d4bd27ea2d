"""The invoker's use of the inference service: generations as awaitable calls.

Each call creates one generation, waits for it to end and returns its result as plain
values (PNG bytes or a tensor name). Cancelling the awaiting task, or setting the caller's
`cancelled` event, cancels the generation in the inference service too, so a cancelled
node never leaves the GPU busy. Progress events of the generation reach `on_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from easel.inference.v1 import generation_service_pb2 as pb
from easel.inference.v1 import generation_service_pb2_grpc
from services.common import errors
from services.common.channels import open_channel
from services.common.error_status import ERROR_BY_CODE, from_rpc_error
from services.common.settings import CommonSettings

CANCEL_TIMEOUT_S = 10.0

ProgressCallback = Callable[[int, int], None]
"""Called with (step, total_steps) as a generation advances."""

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class Origin:
    """Who asks for a generation: the session and node it is recorded under, where its
    progress goes, and the event that cancels it."""

    session_id: str = ""
    invocation_id: str = ""
    on_progress: ProgressCallback | None = None
    cancelled: asyncio.Event | None = None


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

    def __init__(self, settings: CommonSettings) -> None:
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
    ) -> GeneratedImage:
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
        )
        return _image(await self._run(origin, image_to_image=operation))

    async def upscale(
        self, model_key: str, image_png: bytes, scale: float | None, origin: Origin = Origin()
    ) -> GeneratedImage:
        operation = pb.Upscale(upscaler_model_key=model_key, image_png=image_png, scale=scale)
        return _image(await self._run(origin, upscale=operation))

    async def encode_prompt(
        self, model_key: str, prompt: str, loras: Sequence[Lora] = (), origin: Origin = Origin()
    ) -> str:
        """The name of the prompt's conditioning tensor."""
        operation = pb.EncodePrompt(model_key=model_key, prompt=prompt, loras=_loras(loras))
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
        request = pb.CreateGenerationRequest(
            session_id=origin.session_id, invocation_id=origin.invocation_id, **operation
        )
        created = await self._call(self._stub.CreateGeneration(request))
        generation_id = created.generation.id
        watch = (
            asyncio.create_task(self._relay_progress(generation_id, origin.on_progress))
            if origin.on_progress is not None
            else None
        )
        try:
            generation = await self._wait(generation_id, origin.cancelled)
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

    async def _relay_progress(self, generation_id: str, on_progress: ProgressCallback) -> None:
        request = pb.WatchInferenceEventsRequest(generation_ids=[generation_id])
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for response in self._stub.WatchInferenceEvents(request):
                if response.event.HasField("generation_progress"):
                    progress = response.event.generation_progress
                    on_progress(progress.step, progress.total_steps)

    @staticmethod
    async def _call(call):
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None


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
