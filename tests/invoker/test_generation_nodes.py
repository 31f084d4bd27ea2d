"""The generation and latents nodes against a real model manager and inference process
with the tiny models, shared by the module: results as stored PNGs, the building blocks
giving the pixels of txt2img, default models, and cancellation reaching the inference
service. Images are 64x64 with 2 steps."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
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
from services.invoker.clients.inference import InferenceClient
from services.invoker.clients.model_records import ModelRecordsClient
from services.invoker.images.library import ImageLibrary, open_image_library
from services.invoker.invocations import generation, latents
from services.invoker.invocations.base import BaseInvocation
from services.invoker.invocations.context import InvocationContext, ProgressSink
from services.invoker.invocations.fields import ModelRef
from services.invoker.sessions.context import NodeImages
from tests.conftest import SUITE_TOKEN
from tests.model_fixtures import ModelZoo
from tests.model_records import register_model
from tests.processes import client_settings, start_service, suite_env, wait_serving

SIZE = 64
STEPS = 2
WAIT_S = 120


@dataclass
class Suite:
    client: EaselClient
    settings: CommonSettings
    library: ImageLibrary
    sd1: str


@dataclass
class Services:
    inference: InferenceClient
    models: ModelRecordsClient


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, model_zoo: ModelZoo) -> Iterator[Suite]:
    folder = tmp_path_factory.mktemp("generation_nodes")
    root = folder / "root"
    root.mkdir()
    env = suite_env(root, EASEL_AUTH_TOKEN=SUITE_TOKEN)
    manager = start_service("model_manager", env, folder)
    inference = start_service("inference", env, folder)
    library = open_image_library(folder / "images")
    try:
        wait_serving(manager)
        wait_serving(inference)
        with EaselClient(client_settings(env)) as client:
            sd1 = register_model(
                client,
                "sd1",
                model_zoo.sd1_diffusers,
                base=m.BASE_MODEL_TYPE_SD_1,
                type=m.MODEL_TYPE_MAIN,
                format=m.MODEL_FORMAT_DIFFUSERS,
                repo_variant=m.MODEL_REPO_VARIANT_DEFAULT,
            )
            register_model(
                client,
                "x4",
                model_zoo.esrgan_x4,
                base=m.BASE_MODEL_TYPE_ANY,
                type=m.MODEL_TYPE_UPSCALER,
                format=m.MODEL_FORMAT_CHECKPOINT,
                upscaler=m.UpscalerSettings(scale=4),
            )
            yield Suite(client, client_settings(env), library, sd1)
    finally:
        library.close()
        inference.stop()
        manager.stop()


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
    progress: ProgressSink = lambda step, total, message="", preview=None: None,
) -> InvocationContext:
    images = NodeImages(suite.library, session_id, "node", dict, node.model_dump(mode="json"))
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
        lambda step, total, message="", preview=None: progress.append((step, total)),
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
    progress = lambda step, total, message="", preview=None: stepped.set()  # noqa: E731
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
