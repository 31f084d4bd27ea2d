"""The latents building blocks: prompt → conditioning, noise, denoise, decode, encode.

Each runs one generation in the inference service; the tensors stay there and edges carry
their names, so the invoker never holds (or imports the library of) a tensor. Chained with
the same seed and settings they give the pixels of txt2img.

None of them is cached (`cacheable`): a tensor lives in the memory of one inference process
until it is deleted or that process stops, so a cached name could point at nothing; and a
prompt's meaning also depends on the embeddings installed when it runs. The decode stores
a new image, a side effect, and its input names a tensor only one denoise made.
"""

from __future__ import annotations

import random
from typing import ClassVar

from services.common.model_taxonomy import ModelType
from services.invoker.clients.inference import Sampling
from services.invoker.invocations.base import (
    BaseInvocation,
    BaseOutput,
    InputField,
    InputKind,
    OutputField,
)
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ConditioningRef, ImageRef, LatentsRef, ModelRef
from services.invoker.invocations.image_ops import ImageWithSizeOutput, store_image_png
from services.invoker.invocations.models import (
    PROMPT_DESCRIPTION,
    LoraRef,
    embedding_keys,
    to_loras,
)

SEED_MAX = 2**32 - 1
MAX_SIDE = 16384


def new_seed() -> int:
    """A random seed, for a seed input left unset."""
    return random.randint(0, SEED_MAX)


class ConditioningOutput(BaseOutput):
    output_type: ClassVar[str] = "conditioning_output"
    conditioning: ConditioningRef = OutputField(description="The prompt's conditioning.")


class NoiseOutput(BaseOutput):
    output_type: ClassVar[str] = "noise_output"
    noise: LatentsRef = OutputField(description="The noise.")
    seed: int = OutputField(description="The seed it was made from.")
    width: int = OutputField(description="Width of the image it is for.")
    height: int = OutputField(description="Height of the image it is for.")


class LatentsOutput(BaseOutput):
    output_type: ClassVar[str] = "latents_output"
    latents: LatentsRef = OutputField(description="The latents.")


class PromptInvocation(BaseInvocation):
    """Encodes a prompt into conditioning with a main model's text encoder."""

    invocation_type: ClassVar[str] = "prompt"
    title: ClassVar[str] = "Prompt"
    category: ClassVar[str] = "conditioning"
    cacheable: ClassVar[bool] = False  # names a tensor; `<name>` depends on what is installed
    prompt: str = InputField("", description=PROMPT_DESCRIPTION.format(what="The prompt;"))
    model: ModelRef | None = InputField(None, description="Main model; empty: the default.")
    loras: list[LoraRef] = InputField([], description="LoRAs applied to the text encoder.")

    async def invoke(self, context: InvocationContext) -> ConditioningOutput:
        model_key = await context.model_key("model", self.model, ModelType.MAIN)
        name = await context.inference.encode_prompt(
            model_key,
            self.prompt,
            to_loras(self.loras),
            context.origin(),
            embedding_keys=await embedding_keys(context, model_key, (self.prompt,)),
        )
        return ConditioningOutput(conditioning=ConditioningRef(conditioning_name=name))


class NoiseInvocation(BaseInvocation):
    """Seeded gaussian noise for an image of width x height."""

    invocation_type: ClassVar[str] = "noise"
    category: ClassVar[str] = "latents"
    cacheable: ClassVar[bool] = False  # an empty seed is random
    seed: int | None = InputField(
        None, ge=0, le=SEED_MAX, description="The seed; empty: a random one (not cached)."
    )
    width: int = InputField(512, ge=8, le=MAX_SIDE, multiple_of=8, description="Image width.")
    height: int = InputField(512, ge=8, le=MAX_SIDE, multiple_of=8, description="Image height.")

    async def invoke(self, context: InvocationContext) -> NoiseOutput:
        seed = new_seed() if self.seed is None else self.seed
        name = await context.inference.create_noise(seed, self.width, self.height, context.origin())
        return NoiseOutput(
            noise=LatentsRef(latents_name=name), seed=seed, width=self.width, height=self.height
        )


class DenoiseLatentsInvocation(BaseInvocation):
    """Denoises noise (or noised latents) under conditioning, over a part of the schedule
    from `denoising_start` to `denoising_end`."""

    invocation_type: ClassVar[str] = "denoise_latents"
    category: ClassVar[str] = "latents"
    cacheable: ClassVar[bool] = False  # names a tensor of the inference service
    positive_conditioning: ConditioningRef = InputField(
        kind=InputKind.CONNECTION, description="What the image should show."
    )
    negative_conditioning: ConditioningRef = InputField(
        kind=InputKind.CONNECTION, description="What it should not show."
    )
    noise: LatentsRef | None = InputField(
        None, kind=InputKind.CONNECTION, description="The noise; needed without latents."
    )
    latents: LatentsRef | None = InputField(
        None, kind=InputKind.CONNECTION, description="Latents to continue from (img2img)."
    )
    model: ModelRef | None = InputField(None, description="Main model; empty: the default.")
    steps: int = InputField(30, ge=1, le=1000, description="Steps of the full schedule.")
    cfg_scale: float = InputField(7.5, ge=1, le=200, description="Classifier-free guidance.")
    scheduler: str = InputField("euler", description="Scheduler name.")
    denoising_start: float = InputField(0.0, ge=0, le=1, description="Part skipped at start.")
    denoising_end: float = InputField(1.0, ge=0, le=1, description="Where denoising stops.")
    loras: list[LoraRef] = InputField([], description="LoRAs applied to the UNet.")

    async def invoke(self, context: InvocationContext) -> LatentsOutput:
        model_key = await context.model_key("model", self.model, ModelType.MAIN)
        name = await context.inference.denoise_latents(
            model_key,
            self.positive_conditioning.conditioning_name,
            self.negative_conditioning.conditioning_name,
            self.noise.latents_name if self.noise else "",
            self.latents.latents_name if self.latents else "",
            Sampling(self.steps, self.cfg_scale, self.scheduler),
            self.denoising_start,
            self.denoising_end,
            to_loras(self.loras),
            context.origin(),
        )
        return LatentsOutput(latents=LatentsRef(latents_name=name))


class LatentsToImageInvocation(BaseInvocation):
    """Decodes latents into an image with a main model's VAE."""

    invocation_type: ClassVar[str] = "l2i"
    title: ClassVar[str] = "Latents to Image"
    category: ClassVar[str] = "latents"
    cacheable: ClassVar[bool] = False  # stores an image
    latents: LatentsRef = InputField(kind=InputKind.CONNECTION, description="The latents.")
    model: ModelRef | None = InputField(None, description="Main model; empty: the default.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        model_key = await context.model_key("model", self.model, ModelType.MAIN)
        self.model = ModelRef(key=model_key)  # recorded in the saved image's `easel_node`
        image = await context.inference.decode_latents(
            model_key, self.latents.latents_name, context.origin()
        )
        return await store_image_png(context, image.png, image.width, image.height)


class ImageToLatentsInvocation(BaseInvocation):
    """Encodes an image into latents with a main model's VAE."""

    invocation_type: ClassVar[str] = "i2l"
    title: ClassVar[str] = "Image to Latents"
    category: ClassVar[str] = "latents"
    cacheable: ClassVar[bool] = False  # names a tensor of the inference service
    image: ImageRef = InputField(description="The image.")
    model: ModelRef | None = InputField(None, description="Main model; empty: the default.")

    async def invoke(self, context: InvocationContext) -> LatentsOutput:
        model_key = await context.model_key("model", self.model, ModelType.MAIN)
        png = await context.images.load_png(self.image)
        name = await context.inference.encode_image(model_key, png, context.origin())
        return LatentsOutput(latents=LatentsRef(latents_name=name))
