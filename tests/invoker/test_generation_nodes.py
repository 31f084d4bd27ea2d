"""The generation and latents nodes against a real model manager and inference process
with the tiny models, shared by the module: results as stored PNGs, the building blocks
giving the pixels of txt2img, default models, and cancellation reaching the inference
service, the `<name>` triggers of prompts selecting installed embeddings, and previews only
while someone wants them. Images are 64x64 with 2 steps."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clients.sdk import EaselClient
from easel.inference.v1 import generation_service_pb2 as pb
from easel.model_manager.v1 import model_pb2 as m
from services.common import errors
from services.common.model_taxonomy import ModelType
from services.common.settings import CommonSettings
from services.invoker.clients.inference import InferenceClient, Origin, Sampling
from services.invoker.clients.model_records import ModelRecordsClient
from services.invoker.images.library import ImageLibrary, open_image_library
from services.invoker.invocations import generation, latents
from services.invoker.invocations.base import BaseInvocation
from services.invoker.invocations.context import InvocationContext, ProgressSink
from services.invoker.invocations.fields import ModelRef
from services.invoker.sessions.context import NodeImages
from tests.model_fixtures import ModelZoo
from tests.model_records import register_model, register_sd1, register_upscaler
from tests.running_suite import running_suite

SIZE = 64
STEPS = 2
WAIT_S = 120


@dataclass
class Suite:
    client: EaselClient
    settings: CommonSettings
    library: ImageLibrary
    sd1: str
    embedding: str


@dataclass
class Services:
    inference: InferenceClient
    models: ModelRecordsClient


@pytest.fixture(scope="module")
async def suite(
    tmp_path_factory: pytest.TempPathFactory, model_zoo: ModelZoo
) -> AsyncIterator[Suite]:
    folder = tmp_path_factory.mktemp("generation_nodes")
    library = await open_image_library(folder / "images")
    try:
        with (
            running_suite(folder, ["model_manager", "inference"]) as running,
            EaselClient(running.settings) as client,
        ):
            sd1 = register_sd1(client, model_zoo)
            register_upscaler(client, "x4", model_zoo.esrgan_x4, 4)
            embedding = dict(
                type=m.MODEL_TYPE_TEXTUAL_INVERSION, format=m.MODEL_FORMAT_EMBEDDING_FILE
            )
            style = register_model(
                client, "my-style", model_zoo.sd1_embedding_pt, m.BASE_MODEL_TYPE_SD_1, **embedding
            )
            # Triggers that must not select these: another base, and two of one name.
            register_model(
                client, "xl-style", model_zoo.sdxl_embedding, m.BASE_MODEL_TYPE_SDXL, **embedding
            )
            for copy in ("twin_a.pt", "twin_b.pt"):
                path = shutil.copy(model_zoo.sd1_embedding_pt, folder / copy)
                register_model(client, "twin", path, m.BASE_MODEL_TYPE_SD_1, **embedding)
            yield Suite(client, running.settings, library, sd1, style)
    finally:
        await library.close()


@pytest.fixture
async def services(suite: Suite) -> AsyncIterator[Services]:
    opened = Services(InferenceClient(suite.settings), ModelRecordsClient(suite.settings))
    yield opened
    await opened.inference.close()
    await opened.models.close()


def context_for(
    suite: Suite,
    services: Services,
    node: BaseInvocation,
    session_id: str,
    progress: ProgressSink = lambda step, total, message="", preview=None, time=None: None,
) -> InvocationContext:
    images = NodeImages(suite.library, session_id, "node", dict, node)
    return InvocationContext(
        session_id=session_id,
        node_id="node",
        images=images,
        inference=services.inference,
        models=services.models,
        progress=progress,
    )


async def run(suite: Suite, services: Services, node: BaseInvocation, session_id: str) -> Any:
    return await node.invoke(context_for(suite, services, node, session_id))


async def pixels(suite: Suite, output: Any) -> np.ndarray:
    png = await suite.library.load_png(output.image.image_name)
    return np.asarray(Image.open(io.BytesIO(png)))


def txt2img(**fields: Any) -> generation.TextToImageInvocation:
    values: dict[str, Any] = dict(
        prompt="a cat", negative_prompt="ugly", width=SIZE, height=SIZE, steps=STEPS, seed=5
    )
    return generation.TextToImageInvocation(**(values | fields))


def generations(suite: Suite, session_id: str) -> list[pb.Generation]:
    request = pb.ListGenerationsRequest(session_id=session_id)
    return list(suite.client.generation.ListGenerations(request).generations)


async def test_txt2img_then_upscale_with_the_default_models_store_pngs(
    suite: Suite, services: Services
) -> None:
    progress: list[tuple[int, int]] = []
    node = txt2img()  # no model: the only installed main model
    context = context_for(
        suite,
        services,
        node,
        "t2i",
        lambda step, total, message="", preview=None, time=None: progress.append((step, total)),
    )
    output = await node.invoke(context)

    assert (output.width, output.height) == (SIZE, SIZE)
    record = await suite.library.get(output.image.image_name)
    assert (record.width, record.height, record.session_id) == (SIZE, SIZE, "t2i")
    assert record.is_intermediate
    (made,) = generations(suite, "t2i")
    assert (made.invocation_id, made.operation_kind) == ("node", pb.OPERATION_KIND_TEXT_TO_IMAGE)
    assert progress[-1] == (STEPS, STEPS)

    upscaled = await run(suite, services, generation.UpscaleInvocation(image=output.image), "t2i")
    assert (upscaled.width, upscaled.height) == (SIZE * 4, SIZE * 4)
    assert (await pixels(suite, upscaled)).shape[:2] == (SIZE * 4, SIZE * 4)


async def test_the_building_blocks_give_the_pixels_of_txt2img(
    suite: Suite, services: Services
) -> None:
    model = ModelRef(key=suite.sd1)
    whole = await run(suite, services, txt2img(model=model), "whole")

    session = "blocks"
    positive = await run(suite, services, latents.PromptInvocation(prompt="a cat"), session)
    negative = await run(suite, services, latents.PromptInvocation(prompt="ugly"), session)
    noise = await run(
        suite, services, latents.NoiseInvocation(seed=5, width=SIZE, height=SIZE), session
    )
    denoise = latents.DenoiseLatentsInvocation(
        positive_conditioning=positive.conditioning,
        negative_conditioning=negative.conditioning,
        noise=noise.noise,
        model=model,
        steps=STEPS,
    )
    denoised = await run(suite, services, denoise, session)
    decoded = await run(
        suite, services, latents.LatentsToImageInvocation(latents=denoised.latents), session
    )

    assert noise.seed == 5
    assert np.array_equal(await pixels(suite, decoded), await pixels(suite, whole))

    encoded = await run(
        suite, services, latents.ImageToLatentsInvocation(image=decoded.image), session
    )
    kinds = [g.operation_kind for g in generations(suite, session)]
    assert kinds.count(pb.OPERATION_KIND_ENCODE_IMAGE) == 1
    assert encoded.latents.latents_name


async def test_an_empty_model_input_without_a_single_model_of_its_type_is_refused(
    services: Services,
) -> None:
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await services.models.default_key("vae", ModelType.VAE)
    assert caught.value.reason == "MISSING_REQUIRED_INPUT"
    assert caught.value.violations[0].field == "vae"


def stepping(suite: Suite, services: Services, node: BaseInvocation, session_id: str):
    """A context for `node` and an event set once its generation reports a step."""
    stepped = asyncio.Event()
    progress = lambda step, total, message="", preview=None, time=None: stepped.set()  # noqa: E731
    return context_for(suite, services, node, session_id, progress), stepped


async def test_cancelling_the_node_task_cancels_the_generation(
    suite: Suite, services: Services
) -> None:
    node = txt2img(steps=1000)
    context, stepped = stepping(suite, services, node, "cancel_task")
    task = asyncio.create_task(node.invoke(context))
    await asyncio.wait_for(stepped.wait(), WAIT_S)
    (running,) = generations(suite, "cancel_task")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    request = pb.WaitGenerationRequest(id=running.id)
    ended = suite.client.generation.WaitGeneration(request, timeout=WAIT_S).generation
    assert ended.status == pb.GENERATION_STATUS_CANCELLED
    assert ended.step < 1000


async def test_setting_the_cancelled_event_cancels_the_generation(
    suite: Suite, services: Services
) -> None:
    node = txt2img(steps=1000)
    context, stepped = stepping(suite, services, node, "cancel_event")
    task = asyncio.create_task(node.invoke(context))
    await asyncio.wait_for(stepped.wait(), WAIT_S)
    (running,) = generations(suite, "cancel_event")
    context.cancelled.set()

    with pytest.raises(errors.OperationCancelledError) as caught:
        await task
    assert caught.value.metadata == {"generation_id": running.id}
    request = pb.GetGenerationRequest(id=running.id)
    ended = suite.client.generation.GetGeneration(request).generation
    assert ended.status == pb.GENERATION_STATUS_CANCELLED


STYLED = "a <my-style> cat"


def generated(suite: Suite, **operation: Any) -> np.ndarray:
    """The pixels of a generation run directly in the inference service."""
    request = pb.CreateGenerationRequest(**operation)
    created = suite.client.generation.CreateGeneration(request).generation
    wait = pb.WaitGenerationRequest(id=created.id)
    done = suite.client.generation.WaitGeneration(wait, timeout=WAIT_S).generation
    assert done.status == pb.GENERATION_STATUS_COMPLETED, (done.error_type, done.error)
    return np.asarray(Image.open(io.BytesIO(done.result.image.png)))


def direct_txt2img(
    suite: Suite, prompt: str, negative_prompt: str = "ugly", **fields: Any
) -> np.ndarray:
    """txt2img()'s generation with these prompts, asked of the inference service directly."""
    operation = pb.TextToImage(
        model_key=suite.sd1,
        positive_prompt=prompt,
        negative_prompt=negative_prompt,
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        cfg_scale=7.5,
        scheduler="euler",
        seed=5,
        **fields,
    )
    return generated(suite, text_to_image=operation)


async def test_a_trigger_in_a_prompt_selects_the_installed_embedding_of_its_name(
    suite: Suite, services: Services
) -> None:
    async def node_pixels(**fields: Any) -> np.ndarray:
        return await pixels(suite, await run(suite, services, txt2img(**fields), "ti"))

    taught = [suite.embedding]
    styled = await node_pixels(prompt=STYLED)
    assert np.array_equal(styled, direct_txt2img(suite, STYLED, embedding_keys=taught))
    assert not np.array_equal(styled, direct_txt2img(suite, STYLED))

    in_negative = await node_pixels(negative_prompt="<my-style>")
    assert np.array_equal(
        in_negative, direct_txt2img(suite, "a cat", "<my-style>", embedding_keys=taught)
    )
    assert not np.array_equal(in_negative, direct_txt2img(suite, "a cat", "<my-style>"))

    # The sdxl embedding does not fit the sd-1 model: its trigger stays plain text.
    other_base = await node_pixels(prompt="a <xl-style> cat")
    assert np.array_equal(other_base, direct_txt2img(suite, "a <xl-style> cat"))


async def test_img2img_and_the_prompt_node_use_the_embeddings_their_prompts_trigger(
    suite: Suite, services: Services
) -> None:
    start = await run(suite, services, txt2img(), "ti2")
    png = await suite.library.load_png(start.image.image_name)
    node = generation.ImageToImageInvocation(
        image=start.image, prompt=STYLED, negative_prompt="ugly", steps=STEPS, seed=5
    )
    redrawn = await pixels(suite, await run(suite, services, node, "ti2"))

    def direct(**fields: Any) -> np.ndarray:
        operation = pb.ImageToImage(
            model_key=suite.sd1,
            init_image_png=png,
            positive_prompt=STYLED,
            negative_prompt="ugly",
            strength=0.75,
            steps=STEPS,
            cfg_scale=7.5,
            scheduler="euler",
            seed=5,
            **fields,
        )
        return generated(suite, image_to_image=operation)

    assert np.array_equal(redrawn, direct(embedding_keys=[suite.embedding]))
    assert not np.array_equal(redrawn, direct())

    conditioning = await run(suite, services, latents.PromptInvocation(prompt=STYLED), "ti2")
    unconditioned = await run(suite, services, latents.PromptInvocation(prompt="ugly"), "ti2")
    noise = await run(
        suite, services, latents.NoiseInvocation(seed=5, width=SIZE, height=SIZE), "ti2"
    )
    denoise = latents.DenoiseLatentsInvocation(
        positive_conditioning=conditioning.conditioning,
        negative_conditioning=unconditioned.conditioning,
        noise=noise.noise,
        steps=STEPS,
    )
    denoised = await run(suite, services, denoise, "ti2")
    decode = latents.LatentsToImageInvocation(latents=denoised.latents)
    decoded = await pixels(suite, await run(suite, services, decode, "ti2"))
    assert np.array_equal(decoded, direct_txt2img(suite, STYLED, embedding_keys=[suite.embedding]))


async def test_a_trigger_naming_two_embeddings_of_one_base_is_refused(
    suite: Suite, services: Services
) -> None:
    for node in (txt2img(prompt="a <twin> cat"), latents.PromptInvocation(prompt="<twin>")):
        with pytest.raises(errors.FailedPreconditionError) as caught:
            await run(suite, services, node, "twins")
        assert caught.value.reason == "MODEL_AMBIGUOUS"
        assert caught.value.metadata["trigger"] == "<twin>"
        assert len(caught.value.metadata["keys"].split(",")) == 2
    assert generations(suite, "twins") == []


async def test_a_generation_carries_previews_only_while_someone_wants_them(suite: Suite):
    watched = {"watched"}
    client = InferenceClient(suite.settings, previews_wanted=lambda session: session in watched)
    try:
        previews_per_run = []
        for session_id, previews in (("watched", True), ("other", True), ("watched", False)):
            seen: list[bool] = []
            origin = Origin(
                session_id=session_id,
                on_progress=lambda _step, _total, preview, _time, seen=seen: seen.append(
                    preview is not None
                ),
                previews=previews,
            )
            await client.text_to_image(
                suite.sd1, "cat", "", SIZE, SIZE, Sampling(steps=STEPS), 1, origin=origin
            )
            previews_per_run.append(seen)
    finally:
        await client.close()
    assert previews_per_run == [[True] * STEPS, [False] * STEPS, [False] * STEPS]
