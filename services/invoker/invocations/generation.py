"""Whole generations in one node: txt2img, img2img and upscale, run by the inference
service. A model input left empty takes the default model of its type, and an empty seed
a random one; either is filled in on the node as it runs, so the `easel_node` chunk of the
image it saves records the model and seed that made it."""

from __future__ import annotations

from typing import ClassVar

from services.common.model_taxonomy import ModelType
from services.invoker.clients.inference import Sampling
from services.invoker.invocations.base import BaseInvocation, InputField
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ImageRef, ModelRef
from services.invoker.invocations.image_ops import ImageWithSizeOutput, store_image_png
from services.invoker.invocations.latents import MAX_SIDE, SEED_MAX, new_seed
from services.invoker.invocations.models import (
    PROMPT_DESCRIPTION,
    LoraRef,
    embedding_keys,
    to_loras,
)


class _Denoising(BaseInvocation):
    """The inputs txt2img and img2img share."""

    cacheable: ClassVar[bool] = False  # an empty seed is random
    category: ClassVar[str] = "generation"
    prompt: str = InputField(
        "", description=PROMPT_DESCRIPTION.format(what="What the image should show;")
    )
    negative_prompt: str = InputField(
        "", description=PROMPT_DESCRIPTION.format(what="What it should not show;")
    )
    model: ModelRef | None = InputField(None, description="Main model; empty: the default.")
    steps: int = InputField(30, ge=1, le=1000, description="Denoising steps.")
    cfg_scale: float = InputField(7.5, ge=1, le=200, description="Classifier-free guidance.")
    scheduler: str = InputField("euler", description="Scheduler name.")
    seed: int | None = InputField(None, ge=0, le=SEED_MAX, description="Seed; empty: random.")
    loras: list[LoraRef] = InputField([], description="LoRAs applied to the model.")

    def sampling(self) -> Sampling:
        return Sampling(self.steps, self.cfg_scale, self.scheduler)

    async def settle(self, context: InvocationContext) -> tuple[str, int, list[str]]:
        """Fills in an empty model and seed; returns the model key, the seed and the
        embeddings the prompts trigger."""
        self.model = ModelRef(key=await context.model_key("model", self.model, ModelType.MAIN))
        if self.seed is None:
            self.seed = new_seed()
        prompts = (self.prompt, self.negative_prompt)
        return self.model.key, self.seed, await embedding_keys(context, self.model.key, prompts)


class TextToImageInvocation(_Denoising):
    """Generates an image from a prompt."""

    invocation_type: ClassVar[str] = "txt2img"
    title: ClassVar[str] = "Text to Image"
    width: int = InputField(512, ge=8, le=MAX_SIDE, multiple_of=8, description="Image width.")
    height: int = InputField(512, ge=8, le=MAX_SIDE, multiple_of=8, description="Image height.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        model_key, seed, embeddings = await self.settle(context)
        image = await context.inference.text_to_image(
            model_key,
            self.prompt,
            self.negative_prompt,
            self.width,
            self.height,
            self.sampling(),
            seed,
            to_loras(self.loras),
            origin=context.origin(),
            embedding_keys=embeddings,
        )
        return await store_image_png(context, image.png, image.width, image.height)


class ImageToImageInvocation(_Denoising):
    """Redraws an image after a prompt; `strength` says how much of it changes."""

    invocation_type: ClassVar[str] = "img2img"
    title: ClassVar[str] = "Image to Image"
    image: ImageRef = InputField(description="The image to start from.")
    strength: float = InputField(0.75, ge=0, le=1, description="How much the image changes.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        model_key, seed, embeddings = await self.settle(context)
        image = await context.inference.image_to_image(
            model_key,
            await context.images.load_png(self.image),
            self.prompt,
            self.negative_prompt,
            self.strength,
            self.sampling(),
            seed,
            to_loras(self.loras),
            origin=context.origin(),
            embedding_keys=embeddings,
        )
        return await store_image_png(context, image.png, image.width, image.height)


class UpscaleInvocation(BaseInvocation):
    """Upscales an image with an upscaler model (ESRGAN)."""

    invocation_type: ClassVar[str] = "upscale"
    category: ClassVar[str] = "generation"
    image: ImageRef = InputField(description="The image to upscale.")
    model: ModelRef | None = InputField(None, description="Upscaler model; empty: the default.")
    scale: float | None = InputField(
        None, gt=0, le=16, description="Upscaling factor; empty: the model's own."
    )

    async def resolve(self, context: InvocationContext) -> None:
        self.model = ModelRef(key=await context.model_key("model", self.model, ModelType.UPSCALER))

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        key = await context.model_key("model", self.model, ModelType.UPSCALER)
        self.model = ModelRef(key=key)
        png = await context.images.load_png(self.image)
        image = await context.inference.upscale(key, png, self.scale, context.origin())
        return await store_image_png(context, image.png, image.width, image.height)
