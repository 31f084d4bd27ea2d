"""Generations as GenerationService offers them: requests checked and turned into queued
work, the queue's generations, and the watch over the process's events.

`create` checks everything it can before queueing, so a rejected request leaves nothing
behind: the request's fields, its images (decoded off the event loop), its models (each
key looked up in the model manager and of the type its field takes: a LoRA is no main
model; LoRAs and embeddings of the main model's base) and its input tensors (present and
of the right kind). An embedding's trigger is fixed here, from its record's name. What
only running shows (files missing, no loader, out of memory, an embedding's vectors that
do not fit the text encoders) ends the generation in ERROR instead.

Watch filter: an event passes when it matches at least one non-empty field of the filter
(any of the values within a field): its generation is in `generation_ids`, its session in
`session_ids`, or it is a model load of a key in `model_keys`. An empty filter passes
every event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from services.common.errors import (
    EaselError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from services.common.event_bus import Delivery, follow
from services.common.model_taxonomy import BaseModelType, ModelType, SubModelType
from services.inference.events import (
    Event,
    InferenceEvents,
    ModelLoadCompleted,
    ModelLoadFailed,
    ModelLoadStarted,
)
from services.inference.generation.denoise import Sampling
from services.inference.generation.images import decode_png
from services.inference.generation.jobs import (
    Generation,
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    GenerationStatus,
)
from services.inference.generation.noise import random_seed
from services.inference.generation.operations import (
    SIZE_MULTIPLE,
    ImageToImageParams,
    TextToImageParams,
    check_denoise_range,
    check_sampling,
    check_seed,
    check_size,
)
from services.inference.generation.queue import GenerationQueue
from services.inference.generation.requests import (
    DEFAULT_CFG_SCALE,
    DEFAULT_LORA_WEIGHT,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    MAX_LORA_WEIGHT,
    CreateNoiseRequest,
    DecodeLatentsRequest,
    DenoiseLatentsRequest,
    EncodeImageRequest,
    EncodePromptRequest,
    GenerationOptions,
    GenerationRequest,
    ImageToImageRequest,
    LoraRef,
    TextToImageRequest,
    UpscaleRequest,
)
from services.inference.generation.schedulers import DEFAULT_SCHEDULER
from services.inference.generation.upscale import check_output_size, check_scale
from services.inference.generation.work import (
    DenoiseInputs,
    EmbeddingRef,
    MainModel,
    ModelPart,
    Work,
    Workshop,
    create_noise_work,
    decode_latents_work,
    denoise_latents_work,
    diffusion_work,
    encode_image_work,
    encode_prompt_work,
    upscale_work,
)
from services.inference.model_loads import ModelLoadService
from services.inference.model_records import ModelRecord
from services.inference.tensors.store import TensorKind, TensorStore

WRONG_MODEL_TYPE = "WRONG_MODEL_TYPE"
WRONG_TENSOR_KIND = "WRONG_TENSOR_KIND"
BASE_MISMATCH = "BASE_MISMATCH"
DUPLICATE_TRIGGER = "DUPLICATE_TRIGGER"
LATENT_FACTOR = 8
"""Pixels per latent along each side, as CreateNoise shapes its noise."""

_ACTIVE = frozenset({GenerationStatus.QUEUED, GenerationStatus.RUNNING})
_TERMINAL_EVENTS = (GenerationCompleted, GenerationFailed, GenerationCancelled)
_MODEL_LOAD_EVENTS = (ModelLoadStarted, ModelLoadCompleted)


@dataclass(frozen=True)
class GenerationSnapshot(Event):
    """A generation's whole state, sent first for each watched generation."""

    generation: Generation


@dataclass(frozen=True)
class WatchFilter:
    """Which events a watch passes (see the module doc for how fields combine)."""

    generation_ids: frozenset[str] = frozenset()
    session_ids: frozenset[str] = frozenset()
    model_keys: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.generation_ids or self.session_ids or self.model_keys)

    @property
    def only_generations(self) -> bool:
        """Only `generation_ids` is set: the watch ends once they have all ended."""
        return bool(self.generation_ids) and not self.session_ids and not self.model_keys

    def matches(self, event: Event) -> bool:
        if self.empty:
            return True
        context = event.context
        if context.generation_id in self.generation_ids:
            return True
        if context.session_id and context.session_id in self.session_ids:
            return True
        return _model_key(event) in self.model_keys

    def snapshots(self, generation: Generation) -> bool:
        """Whether the watch starts with this generation's snapshot."""
        if generation.id in self.generation_ids:
            return True
        if generation.status not in _ACTIVE:
            return False
        if self.empty:
            return True
        return bool(generation.context.session_id) and (
            generation.context.session_id in self.session_ids
        )


def _model_key(event: object) -> str | None:
    if isinstance(event, _MODEL_LOAD_EVENTS):
        return event.load.model_key
    if isinstance(event, ModelLoadFailed):
        return event.model_key
    return None


@dataclass(frozen=True)
class _Prepared:
    """A checked request, ready to queue."""

    work: Work
    total_steps: int = 0
    inputs: tuple[str, ...] = ()


class Generations:
    """GenerationService's domain; build it inside the event loop, then `start` it."""

    def __init__(
        self,
        loads: ModelLoadService,
        tensors: TensorStore,
        events: InferenceEvents,
        *,
        keep_count: int,
        keep_age_s: float,
    ) -> None:
        self._loads = loads
        self._tensors = tensors
        self._events = events
        self._queue = GenerationQueue(events, tensors, keep_count=keep_count, keep_age_s=keep_age_s)
        self._shop = Workshop(loads, tensors, asyncio.get_running_loop())
        self._closing = asyncio.Event()

    def start(self) -> None:
        self._queue.start()

    async def close(self) -> None:
        """End every watch (UNAVAILABLE) and cancel every unfinished generation."""
        self._closing.set()
        await self._queue.close()

    # --- requests -------------------------------------------------------------------------

    async def create(self, request: GenerationRequest, options: GenerationOptions) -> Generation:
        """Check `request` and queue it (module doc)."""
        return self._enqueue(request, await self._prepare(request), options)

    def get(self, generation_id: str) -> Generation:
        return self._queue.get(generation_id)

    def list(
        self, session_id: str = "", statuses: Iterable[GenerationStatus] = ()
    ) -> list[Generation]:
        return self._queue.list(session_id, frozenset(statuses))

    def cancel(self, generation_id: str) -> Generation:
        return self._queue.cancel(generation_id)

    async def wait(self, generation_id: str) -> Generation:
        return await self._queue.wait(generation_id)

    async def watch(self, watch_filter: WatchFilter) -> AsyncIterator[Delivery]:
        """The snapshot of what is watched, oldest first, then the live events that pass
        the filter. With only `generation_ids` it ends once all of them have ended and
        their last events are sent; otherwise it runs until the reader stops. NOT_FOUND,
        before anything is sent, for an unknown id."""
        for generation_id in sorted(watch_filter.generation_ids):
            if not generation_id:
                raise InvalidArgumentError(
                    "generation ids must not be empty", field="generation_ids"
                )
            self._queue.get(generation_id)
        subscription = self._events.bus.subscribe(watch_filter.matches)
        try:
            snapshot = sorted(
                (g for g in self._queue.list() if watch_filter.snapshots(g)),
                key=lambda g: g.create_time,
            )
            for generation in snapshot:
                yield Delivery(GenerationSnapshot(generation, context=generation.context), 0)
            unfinished = None
            if watch_filter.only_generations:
                unfinished = {g.id for g in snapshot if not g.status.terminal}
                if not unfinished:
                    return
            async for delivery in follow(subscription, self._closing, "inference service"):
                yield delivery
                if unfinished is None:
                    continue
                if isinstance(delivery.event, _TERMINAL_EVENTS):
                    unfinished.discard(delivery.event.context.generation_id)
                if delivery.dropped_before:  # its terminal event may be among those missed
                    unfinished = {i for i in unfinished if self._still_running(i)}
                if not unfinished:
                    return
        finally:
            subscription.close()

    async def run(
        self, request: GenerationRequest, options: GenerationOptions
    ) -> AsyncIterator[Delivery]:
        """Create a generation and follow it in one stream: its snapshot, its events, then
        its terminal snapshot. The subscription exists before the generation is queued, so
        no event is missed; the last snapshot is the queue's, so a reader that missed
        events still gets the outcome. Leaving early cancels the generation; a shutdown
        ends the stream UNAVAILABLE (the generation cancelled by it)."""
        prepared = await self._prepare(request)
        mine: set[str] = set()
        subscription = self._events.bus.subscribe(lambda event: event.context.generation_id in mine)
        generation: Generation | None = None
        try:
            generation = self._enqueue(request, prepared, options)
            # Added before the event loop turns, so every later event of it is delivered
            # (GenerationQueued, published inside `create`, is what the snapshot says).
            mine.add(generation.id)
            yield Delivery(GenerationSnapshot(generation, context=generation.context), 0)
            ended = asyncio.ensure_future(self._queue.wait(generation.id))
            delivery: asyncio.Future[Delivery] | None = None
            try:
                while not ended.done():
                    delivery = asyncio.ensure_future(anext(subscription))
                    await asyncio.wait({delivery, ended}, return_when=asyncio.FIRST_COMPLETED)
                    if delivery.done():
                        yield delivery.result()
                    else:
                        delivery.cancel()
                generation = ended.result()
            finally:
                # Also when the call ends mid-wait: no task of it is left pending.
                ended.cancel()
                if delivery is not None:
                    delivery.cancel()
            # Its terminal event was delivered as it ended: it waits in the buffer.
            while subscription.pending():
                yield await anext(subscription)
            if self._closing.is_set() and generation.status is GenerationStatus.CANCELLED:
                raise UnavailableError("the inference service is shutting down")
            yield Delivery(GenerationSnapshot(generation, context=generation.context), 0)
        finally:
            subscription.close()
            if generation is not None and not generation.status.terminal:
                with contextlib.suppress(EaselError):
                    self._queue.cancel(generation.id)

    def _still_running(self, generation_id: str) -> bool:
        try:
            return not self._queue.get(generation_id).status.terminal
        except NotFoundError:  # ended and forgotten already
            return False

    # --- preparing the work ---------------------------------------------------------------

    def _enqueue(
        self, request: GenerationRequest, prepared: _Prepared, options: GenerationOptions
    ) -> Generation:
        return self._queue.create(
            request.kind,
            prepared.work,
            total_steps=prepared.total_steps,
            session_id=options.session_id,
            invocation_id=options.invocation_id,
            inputs=prepared.inputs,
            preview=options.preview,
        )

    async def _prepare(self, request: GenerationRequest) -> _Prepared:
        match request:
            case TextToImageRequest() | ImageToImageRequest():
                return await self._image(request)
            case UpscaleRequest():
                return await self._upscale(request)
            case EncodePromptRequest():
                return await self._encode_prompt(request)
            case CreateNoiseRequest():
                return self._create_noise(request)
            case DenoiseLatentsRequest():
                return await self._denoise_latents(request)
            case DecodeLatentsRequest():
                return await self._decode_latents(request)
            case EncodeImageRequest():
                return await self._encode_image(request)

    async def _image(self, request: TextToImageRequest | ImageToImageRequest) -> _Prepared:
        """TextToImage, or ImageToImage with its initial image and strength."""
        field_name = request.field
        fields: dict[str, Any] = dict(
            positive_prompt=request.positive_prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            steps=request.steps or DEFAULT_STEPS,
            cfg_scale=_cfg_scale(request.cfg_scale),
            scheduler=request.scheduler or DEFAULT_SCHEDULER,
            seed=random_seed() if request.seed is None else request.seed,
        )
        params: TextToImageParams | ImageToImageParams
        if isinstance(request, ImageToImageRequest):
            image = await _decode_image(request.init_image_png, f"{field_name}.init_image_png")
            strength = DEFAULT_STRENGTH if request.strength is None else request.strength
            params = ImageToImageParams(**fields, init_image=image, strength=strength)
        else:
            params = TextToImageParams(**fields)
        step_range = params.check(field_name)
        loras = _check_lora_weights(request.loras, field_name)
        main = await self._main_model(request.model_key, f"{field_name}.model_key")
        vae = await self._vae(request.vae_key, main, f"{field_name}.vae_key")
        await self._check_loras(request.loras, main, field_name)
        embeddings = await self._embeddings(request.embedding_keys, main, field_name)
        work = diffusion_work(self._shop, main, vae, loras, params, embeddings)
        return _Prepared(work, total_steps=step_range.count)

    async def _upscale(self, request: UpscaleRequest) -> _Prepared:
        field_name = request.field
        check_scale(request.scale, f"{field_name}.scale")
        image = await _decode_image(request.image_png, f"{field_name}.image_png")
        if request.scale is not None:
            check_output_size(image.size, request.scale, f"{field_name}.scale")
        key_field = f"{field_name}.upscaler_model_key"
        await self._record(request.upscaler_model_key, key_field, ModelType.UPSCALER)
        upscaler = ModelPart(request.upscaler_model_key)
        return _Prepared(upscale_work(self._shop, upscaler, image, request.scale))

    async def _encode_prompt(self, request: EncodePromptRequest) -> _Prepared:
        loras = _check_lora_weights(request.loras, request.field)
        main = await self._main_model(request.model_key, f"{request.field}.model_key")
        await self._check_loras(request.loras, main, request.field)
        embeddings = await self._embeddings(request.embedding_keys, main, request.field)
        work = encode_prompt_work(self._shop, main, request.prompt, loras, embeddings)
        return _Prepared(work)

    def _create_noise(self, request: CreateNoiseRequest) -> _Prepared:
        check_size(request.width, request.height, request.field, allow_native=False)
        seed = random_seed() if request.seed is None else request.seed
        check_seed(seed, f"{request.field}.seed")
        work = create_noise_work(
            self._shop, seed, request.height // LATENT_FACTOR, request.width // LATENT_FACTOR
        )
        return _Prepared(work)

    async def _denoise_latents(self, request: DenoiseLatentsRequest) -> _Prepared:
        field_name = request.field
        steps = request.steps or DEFAULT_STEPS
        sampling = Sampling(request.scheduler or DEFAULT_SCHEDULER, _cfg_scale(request.cfg_scale))
        check_sampling(steps, sampling.cfg_scale, sampling.scheduler, field_name)
        step_range = check_denoise_range(
            steps,
            request.denoising_start,
            1.0 if request.denoising_end is None else request.denoising_end,
            has_latents=bool(request.latents),
            field=field_name,
        )
        loras = _check_lora_weights(request.loras, field_name)
        inputs = DenoiseInputs(
            positive=request.positive_conditioning,
            negative=request.negative_conditioning,
            noise=request.noise,
            latents=request.latents,
        )
        main = await self._main_model(request.model_key, f"{field_name}.model_key")
        await self._check_loras(request.loras, main, field_name)
        self._check_tensor(inputs.positive, TensorKind.CONDITIONING, field_name, "positive")
        self._check_tensor(inputs.negative, TensorKind.CONDITIONING, field_name, "negative")
        noise = self._check_tensor(inputs.noise, TensorKind.NOISE, field_name, "noise")
        names = [inputs.positive, inputs.negative, inputs.noise]
        if inputs.latents:
            latents = self._check_tensor(inputs.latents, TensorKind.LATENTS, field_name, "latents")
            if latents != noise:
                raise InvalidArgumentError(
                    f"latents of shape {list(latents)} do not match the noise's {list(noise)}",
                    field=f"{field_name}.latents",
                    reason="TENSOR_SHAPE_MISMATCH",
                )
            names.append(inputs.latents)
        work = denoise_latents_work(self._shop, main, inputs, step_range, sampling, loras)
        return _Prepared(work, total_steps=step_range.count, inputs=tuple(names))

    async def _decode_latents(self, request: DecodeLatentsRequest) -> _Prepared:
        field_name = request.field
        self._check_tensor(request.latents, TensorKind.LATENTS, field_name, "latents")
        vae = await self._vae_or_main(request.model_key, f"{field_name}.model_key")
        return _Prepared(
            decode_latents_work(self._shop, vae, request.latents), inputs=(request.latents,)
        )

    async def _encode_image(self, request: EncodeImageRequest) -> _Prepared:
        field_name = f"{request.field}.image_png"
        image = await _decode_image(request.image_png, field_name)
        if image.width % SIZE_MULTIPLE or image.height % SIZE_MULTIPLE:
            raise InvalidArgumentError(
                f"the image is {image.width}x{image.height}; its sides must be multiples "
                f"of {SIZE_MULTIPLE}",
                field=field_name,
            )
        vae = await self._vae_or_main(request.model_key, f"{request.field}.model_key")
        return _Prepared(encode_image_work(self._shop, vae, image))

    # --- checks -----------------------------------------------------------------------------

    async def _record(self, key: str, field_name: str, *types: ModelType) -> ModelRecord:
        """The record of `key`, which must be of one of `types` (INVALID_ARGUMENT naming
        `field_name` otherwise); NOT_FOUND an unknown key, UNAVAILABLE no model manager."""
        if not key:
            raise InvalidArgumentError(f"{field_name} is required", field=field_name)
        record = await self._loads.records.get(key)
        if record.type not in types:
            wanted = " or ".join(str(t) for t in types)
            raise InvalidArgumentError(
                f"model {key} is a {record.type} model; {field_name} takes a {wanted} model",
                field=field_name,
                reason=WRONG_MODEL_TYPE,
                metadata={"key": key, "type": str(record.type)},
            )
        return record

    async def _main_model(self, key: str, field_name: str) -> MainModel:
        record = await self._record(key, field_name, ModelType.MAIN)
        return MainModel(key, record.base)

    async def _vae(self, vae_key: str, main: MainModel, field_name: str) -> ModelPart:
        """The VAE a main model's generation uses: `vae_key`'s, or the main model's own."""
        if not vae_key:
            return ModelPart(main.key, SubModelType.VAE)
        await self._record(vae_key, field_name, ModelType.VAE)
        return ModelPart(vae_key)

    async def _vae_or_main(self, key: str, field_name: str) -> ModelPart:
        record = await self._record(key, field_name, ModelType.VAE, ModelType.MAIN)
        return ModelPart(key, SubModelType.VAE if record.type is ModelType.MAIN else None)

    async def _check_loras(self, loras: Iterable[LoraRef], main: MainModel, field: str) -> None:
        for index, lora in enumerate(loras):
            key_field = f"{field}.loras[{index}].model_key"
            record = await self._record(lora.model_key, key_field, ModelType.LORA)
            if record.base not in (main.base, BaseModelType.ANY):
                raise InvalidArgumentError(
                    f"LoRA {lora.model_key} is for {record.base} models, the main model is "
                    f"{main.base}",
                    field=key_field,
                    reason=BASE_MISMATCH,
                    metadata={"key": lora.model_key, "base": str(record.base)},
                )

    async def _embeddings(
        self, keys: Iterable[str], main: MainModel, field: str
    ) -> list[EmbeddingRef]:
        """Each key's textual inversion, for the main model's base, with its trigger: the
        record's name in angle brackets, which no other embedding of the request shares
        (compared without case: CLIP's tokenizer lowercases the tokens it learns)."""
        embeddings: list[EmbeddingRef] = []
        triggers: set[str] = set()
        for index, key in enumerate(keys):
            key_field = f"{field}.embedding_keys[{index}]"
            record = await self._record(key, key_field, ModelType.TEXTUAL_INVERSION)
            if record.base not in (main.base, BaseModelType.ANY):
                raise InvalidArgumentError(
                    f"embedding {key} is for {record.base} models, the main model is {main.base}",
                    field=key_field,
                    reason=BASE_MISMATCH,
                    metadata={"key": key, "base": str(record.base)},
                )
            trigger = f"<{record.name}>"
            if trigger.lower() in triggers:
                raise InvalidArgumentError(
                    f"embedding {key} has the trigger {trigger} of an earlier embedding",
                    field=key_field,
                    reason=DUPLICATE_TRIGGER,
                    metadata={"key": key, "trigger": trigger},
                )
            triggers.add(trigger.lower())
            embeddings.append(EmbeddingRef(key, trigger, key_field))
        return embeddings

    def _check_tensor(self, name: str, kind: TensorKind, operation: str, field_name: str):
        """The shape of tensor `name`, which must exist and be of `kind`."""
        path = f"{operation}.{field_name}"
        if not name:
            raise InvalidArgumentError(f"{path} is required", field=path)
        info = self._tensors.info(name)
        if info.kind is not kind:
            raise InvalidArgumentError(
                f"tensor {name} holds {info.kind}; {path} takes {kind}",
                field=path,
                reason=WRONG_TENSOR_KIND,
                metadata={"name": name, "kind": str(info.kind)},
            )
        return info.shape


def _cfg_scale(value: float | None) -> float:
    return DEFAULT_CFG_SCALE if value is None else value


def _check_lora_weights(loras: Iterable[LoraRef], field: str) -> list[tuple[str, float]]:
    """(key, weight) pairs, unset weights made full strength; a weight beyond +-10 is
    INVALID_ARGUMENT."""
    weighted = []
    for index, lora in enumerate(loras):
        weight = DEFAULT_LORA_WEIGHT if lora.weight is None else lora.weight
        if not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
            raise InvalidArgumentError(
                f"a LoRA weight must be between -{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}, "
                f"got {weight}",
                field=f"{field}.loras[{index}].weight",
            )
        weighted.append((lora.model_key, weight))
    return weighted


async def _decode_image(data: bytes, field_name: str) -> Image.Image:
    if not data:
        raise InvalidArgumentError(f"{field_name} is required", field=field_name)
    return await asyncio.to_thread(decode_png, data, field_name)
