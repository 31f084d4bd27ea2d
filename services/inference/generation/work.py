"""The work of each operation, as the generation queue runs it: in a worker thread, with
the models it needs loaded by key, locked while it computes and released after it.

Models load through the model load service on the event loop (`ModelLocks` hands each
load to the loop and waits for it), so a generation's loads publish their ModelLoad*
events with the generation's context like any other load. Every lock, every LoRA patch
and every taught embedding is held on one exit stack that the work leaves however it
ends (result, error, cancellation): no lock or patch outlives the work. A main model's
UNet is loaded first: it is the largest part, so a model that cannot fit fails before
anything else is read.

Image results are encoded as PNG here, in the worker thread; tensor results go into the
tensor store under the generation's id and session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from services.common.errors import InvalidArgumentError, OperationCancelledError
from services.common.model_taxonomy import BaseModelType, SubModelType
from services.inference.events import EventContext
from services.inference.generation.conditioning import Conditioning, TextEncoder, encode_prompt
from services.inference.generation.denoise import Sampling, StepHooks, denoise_latents
from services.inference.generation.images import encode_png
from services.inference.generation.noise import Noise, create_noise
from services.inference.generation.operations import (
    DiffusionModel,
    ImageToImageParams,
    TextToImageParams,
    image_to_image,
    text_to_image,
)
from services.inference.generation.step_range import StepRange
from services.inference.generation.upscale import upscale
from services.inference.generation.vae import decode_latents, encode_image
from services.inference.loading.lora import applied_loras
from services.inference.loading.textual_inversion import (
    EMBEDDING_INCOMPATIBLE,
    TextualInversion,
    applied_embeddings,
)
from services.inference.model_loads import LoadedModel, ModelLoadService
from services.inference.model_records import ModelRecord
from services.inference.tensors.store import TensorInfo, TensorKind, TensorStore

Work = Callable[[StepHooks], Any]

NOISE_PART = "noise"
LATENTS_PART = "latents"

# The (tokenizer, text encoder) pairs of a main model, by base, in the order their
# embeddings are concatenated.
_FIRST_ENCODER = (SubModelType.TOKENIZER, SubModelType.TEXT_ENCODER)
_SECOND_ENCODER = (SubModelType.TOKENIZER_2, SubModelType.TEXT_ENCODER_2)
_TEXT_ENCODERS = {
    BaseModelType.SDXL: (_FIRST_ENCODER, _SECOND_ENCODER),
    BaseModelType.SDXL_REFINER: (_SECOND_ENCODER,),
}


@dataclass(frozen=True)
class ImageResult:
    """An image a generation produced, as PNG bytes; `seed` is its noise's (TextToImage
    and ImageToImage only)."""

    png: bytes
    width: int
    height: int
    seed: int | None = None


@dataclass(frozen=True)
class MainModel:
    """A main model by key, with the base that says which parts it has."""

    key: str
    base: BaseModelType


@dataclass(frozen=True)
class ModelPart:
    """One loadable model: a model without parts (submodel None) or a part of a main one."""

    key: str
    submodel: SubModelType | None = None


@dataclass(frozen=True)
class EmbeddingRef:
    """A textual inversion by model key, with its trigger and the request field that
    named it (errors found while running name it too)."""

    key: str
    trigger: str
    field: str


@dataclass(frozen=True)
class Workshop:
    """What every piece of work uses: the model loads, the tensor store and the event loop
    that loads run on."""

    loads: ModelLoadService
    tensors: TensorStore
    loop: asyncio.AbstractEventLoop


class ModelLocks:
    """The models of one piece of work, loaded and locked on `stack` until it closes.

    Each model's record is looked up once, when the work first needs the model, and serves
    for all its parts (one model manager call per model, not per part). It is looked up
    when the work runs, not when the generation was created: a model whose record changed
    while the generation waited loads as it is now, and the cache reads again what it
    holds of the old files. The main model's UNet and text encoders locked here are what
    LoRAs patch."""

    def __init__(self, shop: Workshop, context: EventContext, stack: ExitStack) -> None:
        self._shop = shop
        self._context = context
        self._stack = stack
        self._records: dict[str, ModelRecord] = {}
        self._lora_targets: dict[SubModelType, torch.nn.Module] = {}

    def lock(self, part: ModelPart) -> Any:
        loaded = asyncio.run_coroutine_threadsafe(self._load(part), self._shop.loop).result()
        return self._stack.enter_context(loaded.lock())

    async def _load(self, part: ModelPart) -> LoadedModel:
        loads = self._shop.loads
        record = self._records.get(part.key)
        if record is None:
            record = self._records[part.key] = await loads.record(part.key)
        return await loads.load_record(record, part.submodel, self._context)

    def unet(self, main: MainModel) -> Any:
        unet = self.lock(ModelPart(main.key, SubModelType.UNET))
        self._lora_targets[SubModelType.UNET] = unet
        return unet

    def text_encoders(
        self, main: MainModel, embeddings: Sequence[EmbeddingRef] = ()
    ) -> list[TextEncoder]:
        """The main model's tokenizers and text encoders, each taught `embeddings` until
        the stack closes (a copy of the tokenizer learns the triggers' tokens)."""
        pairs = []
        for tokenizer, encoder in _TEXT_ENCODERS.get(main.base, (_FIRST_ENCODER,)):
            model = self.lock(ModelPart(main.key, encoder))
            self._lora_targets[encoder] = model
            pairs.append((encoder, self.lock(ModelPart(main.key, tokenizer)), model))
        if not embeddings:
            return [TextEncoder(tokenizer, model) for _, tokenizer, model in pairs]
        learnt = [(ref, self.lock(ModelPart(ref.key))) for ref in embeddings]
        taught = []
        for part, tokenizer, model in pairs:
            vectors = [
                (ref.trigger, _vectors_for(ref, inversion, part, model))
                for ref, inversion in learnt
            ]
            embedded = self._stack.enter_context(applied_embeddings(tokenizer, model, vectors))
            taught.append(TextEncoder(embedded.tokenizer, model, embedded.expand))
        return taught

    def scheduler_config(self, main: MainModel) -> dict[str, Any]:
        return self.lock(ModelPart(main.key, SubModelType.SCHEDULER))

    def diffusion_model(
        self, main: MainModel, vae: ModelPart, embeddings: Sequence[EmbeddingRef] = ()
    ) -> DiffusionModel:
        unet = self.unet(main)
        return DiffusionModel(
            unet=unet,
            text_encoders=self.text_encoders(main, embeddings),
            scheduler_config=self.scheduler_config(main),
            vae=self.lock(vae),
        )

    def apply_loras(self, loras: Sequence[tuple[str, float]]) -> None:
        """Patch the UNet and text encoders locked so far with each LoRA until the stack
        closes."""
        if not loras:
            return
        weights = [(self.lock(ModelPart(key)), weight) for key, weight in loras]
        self._stack.enter_context(applied_loras(dict(self._lora_targets), weights))


def _vectors_for(
    ref: EmbeddingRef, inversion: TextualInversion, part: SubModelType, encoder: Any
) -> torch.Tensor:
    """The embedding's vectors for the text encoder `part`, which must be of its width
    (INVALID_ARGUMENT EMBEDDING_INCOMPATIBLE naming the request field otherwise)."""
    width = encoder.get_input_embeddings().embedding_dim
    vectors = inversion.vectors.get(part)
    if vectors is not None and vectors.shape[-1] == width:
        return vectors
    carried = ", ".join(f"{p}: {v.shape[-1]}" for p, v in inversion.vectors.items())
    raise InvalidArgumentError(
        f"{ref.field}: embedding {ref.key} ({ref.trigger}) has no vectors for the main "
        f"model's {part}, which takes {width}-wide vectors (the embedding's widths: "
        f"{carried})",
        field=ref.field,
        reason=EMBEDDING_INCOMPATIBLE,
        metadata={"key": ref.key, "trigger": ref.trigger, "text_encoder": str(part)},
    )


def _stop_if_cancelled(hooks: StepHooks) -> None:
    if hooks.should_cancel is not None and hooks.should_cancel():
        raise OperationCancelledError("cancelled")


def _image_result(image: Image.Image, seed: int | None = None) -> ImageResult:
    return ImageResult(encode_png(image), image.width, image.height, seed)


def _store(
    shop: Workshop,
    hooks: StepHooks,
    parts: dict[str, torch.Tensor],
    kind: TensorKind,
    seed: int | None = None,
) -> TensorInfo:
    return shop.tensors.put(
        parts,
        kind=kind,
        generation_id=hooks.context.generation_id,
        session_id=hooks.context.session_id,
        seed=seed,
    )


def diffusion_work(
    shop: Workshop,
    main: MainModel,
    vae: ModelPart,
    loras: Sequence[tuple[str, float]],
    params: TextToImageParams | ImageToImageParams,
    embeddings: Sequence[EmbeddingRef] = (),
) -> Work:
    """TextToImage, or ImageToImage for ImageToImageParams."""
    operation = image_to_image if isinstance(params, ImageToImageParams) else text_to_image

    def work(hooks: StepHooks) -> ImageResult:
        with ExitStack() as stack:
            models = ModelLocks(shop, hooks.context, stack)
            model = models.diffusion_model(main, vae, embeddings)
            models.apply_loras(loras)
            _stop_if_cancelled(hooks)
            generated = operation(model, params, hooks)
        return _image_result(generated.image, generated.seed)

    return work


def upscale_work(
    shop: Workshop, upscaler: ModelPart, image: Image.Image, scale: float | None
) -> Work:
    def work(hooks: StepHooks) -> ImageResult:
        with ExitStack() as stack:
            model = ModelLocks(shop, hooks.context, stack).lock(upscaler)
            _stop_if_cancelled(hooks)
            result = upscale(model, image, scale)
        return _image_result(result)

    return work


def encode_prompt_work(
    shop: Workshop,
    main: MainModel,
    prompt: str,
    loras: Sequence[tuple[str, float]],
    embeddings: Sequence[EmbeddingRef] = (),
) -> Work:
    def work(hooks: StepHooks) -> TensorInfo:
        with ExitStack() as stack:
            models = ModelLocks(shop, hooks.context, stack)
            encoders = models.text_encoders(main, embeddings)
            models.apply_loras(loras)
            _stop_if_cancelled(hooks)
            conditioning = encode_prompt(encoders, prompt)
        return _store(shop, hooks, conditioning.parts(), TensorKind.CONDITIONING)

    return work


def create_noise_work(shop: Workshop, seed: int, latent_height: int, latent_width: int) -> Work:
    def work(hooks: StepHooks) -> TensorInfo:
        noise = create_noise(seed, latent_height, latent_width)
        return _store(shop, hooks, {NOISE_PART: noise.latents}, TensorKind.NOISE, seed=seed)

    return work


@dataclass(frozen=True)
class DenoiseInputs:
    """The tensors a DenoiseLatents takes, by name (`latents` empty: none)."""

    positive: str
    negative: str
    noise: str
    latents: str = ""


def denoise_latents_work(
    shop: Workshop,
    main: MainModel,
    inputs: DenoiseInputs,
    step_range: StepRange,
    sampling: Sampling,
    loras: Sequence[tuple[str, float]],
) -> Work:
    def work(hooks: StepHooks) -> TensorInfo:
        tensors = shop.tensors
        positive = Conditioning.from_parts(tensors.get(inputs.positive).parts)
        negative = Conditioning.from_parts(tensors.get(inputs.negative).parts)
        stored_noise = tensors.get(inputs.noise)
        noise = Noise(stored_noise.parts[NOISE_PART], stored_noise.info.seed or 0)
        latents = tensors.get(inputs.latents).parts[LATENTS_PART] if inputs.latents else None
        with ExitStack() as stack:
            models = ModelLocks(shop, hooks.context, stack)
            unet = models.unet(main)
            scheduler_config = models.scheduler_config(main)
            models.apply_loras(loras)
            _stop_if_cancelled(hooks)
            result = denoise_latents(
                unet,
                scheduler_config,
                positive=positive,
                negative=negative,
                noise=noise,
                step_range=step_range,
                sampling=sampling,
                latents=latents,
                hooks=hooks,
            )
        return _store(shop, hooks, {LATENTS_PART: result}, TensorKind.LATENTS)

    return work


def decode_latents_work(shop: Workshop, vae: ModelPart, latents: str) -> Work:
    def work(hooks: StepHooks) -> ImageResult:
        stored = shop.tensors.get(latents).parts[LATENTS_PART]
        with ExitStack() as stack:
            model = ModelLocks(shop, hooks.context, stack).lock(vae)
            _stop_if_cancelled(hooks)
            image = decode_latents(model, stored)
        return _image_result(image)

    return work


def encode_image_work(shop: Workshop, vae: ModelPart, image: Image.Image) -> Work:
    def work(hooks: StepHooks) -> TensorInfo:
        with ExitStack() as stack:
            model = ModelLocks(shop, hooks.context, stack).lock(vae)
            _stop_if_cancelled(hooks)
            latents = encode_image(model, image)
        return _store(shop, hooks, {LATENTS_PART: latents}, TensorKind.LATENTS)

    return work
