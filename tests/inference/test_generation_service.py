"""GenerationService and TensorStoreService over the wire: a real model manager with the
tiny models registered and a real inference process, shared by the module.

The denoising itself is tested in test_generation_core; these tests check what the wire
adds: requests and defaults, the queue, results as PNG bytes and tensor names, the watch
stream, cancellation, locks released, and every error as its status. Images are 64x64
(8x8 latents) with a few steps. The test that stops the model manager comes last.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from clients.sdk import EaselClient
from easel.inference.v1 import generation_service_pb2 as pb
from easel.inference.v1 import model_cache_service_pb2 as cache_pb
from easel.inference.v1 import tensor_store_service_pb2 as tensor_pb
from easel.model_manager.v1 import model_pb2 as m
from services.common import errors
from tests.conftest import SUITE_TOKEN
from tests.inference.images import gradient
from tests.inference.zoo import EMBEDDING_TRIGGER, InferenceZoo
from tests.model_records import register_model
from tests.processes import (
    ServiceProcess,
    client_settings,
    start_service,
    suite_env,
    wait_serving,
)

SIZE = 64
STEPS = 3
CACHE_BYTES = 1024**3  # the whole tiny pipeline fits; the 2 GiB sparse checkpoint does not
KEEP_COUNT = 8  # finished generations the server keeps
WAIT_S = 120
SCHEDULERS = {"euler", "euler_a", "heun", "ddim", "ddpm", "pndm", "lms", "k_lms", "dpmpp_2m"}
SCHEDULERS |= {"dpmpp_2m_karras", "unipc", "lcm"}


@dataclass
class Suite:
    client: EaselClient
    manager: ServiceProcess
    inference: ServiceProcess
    keys: dict[str, str]


def _register_models(client: EaselClient, zoo: InferenceZoo, missing: Any) -> dict[str, str]:
    sd1, any_base = m.BASE_MODEL_TYPE_SD_1, m.BASE_MODEL_TYPE_ANY
    sd1_main = (sd1, m.MODEL_TYPE_MAIN)
    diffusers = dict(format=m.MODEL_FORMAT_DIFFUSERS, repo_variant=m.MODEL_REPO_VARIANT_DEFAULT)
    checkpoint = dict(format=m.MODEL_FORMAT_CHECKPOINT)
    single_file = m.MainModelSettings(config_path=str(zoo.sd1_diffusers))
    embedding = dict(type=m.MODEL_TYPE_TEXTUAL_INVERSION, format=m.MODEL_FORMAT_EMBEDDING_FILE)
    return {
        "sd1": register_model(client, "sd1", zoo.sd1_diffusers, *sd1_main, **diffusers),
        "sd1_file": register_model(
            client, "sd1 file", zoo.sd1_single_file, *sd1_main, **checkpoint, main=single_file
        ),
        "lora": register_model(
            client, "lora", zoo.tiny_lora, sd1, m.MODEL_TYPE_LORA, format=m.MODEL_FORMAT_LYCORIS
        ),
        # Named so that its trigger is EMBEDDING_TRIGGER.
        "embedding": register_model(client, "tiny-style", zoo.tiny_embedding, sd1, **embedding),
        "sdxl_embedding": register_model(
            client, "sdxl-style", zoo.sdxl_embedding, m.BASE_MODEL_TYPE_SDXL, **embedding
        ),
        # 1024-wide vectors recorded as fitting any base: the sd-1 text encoder takes 768.
        "wide_embedding": register_model(client, "wide", zoo.sd2_embedding, any_base, **embedding),
        "vae": register_model(
            client, "vae", zoo.vae_diffusers, sd1, m.MODEL_TYPE_VAE, format=m.MODEL_FORMAT_DIFFUSERS
        ),
        "upscaler": register_model(
            client,
            "x4",
            zoo.esrgan_x4,
            any_base,
            type=m.MODEL_TYPE_UPSCALER,
            **checkpoint,
            upscaler=m.UpscalerSettings(scale=4),
        ),
        "gone": register_model(client, "gone", missing, *sd1_main, **diffusers),
        "no_loader": register_model(
            client, "no loader", zoo.sd1_diffusers_fp16, any_base, m.MODEL_TYPE_MAIN, **diffusers
        ),
        "too_big": register_model(client, "too big", zoo.sparse_2g, *sd1_main, **checkpoint),
    }


@pytest.fixture(scope="module")
def suite(zoo: InferenceZoo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    folder = tmp_path_factory.mktemp("generation_service")
    root = folder / "root"
    root.mkdir()
    env = suite_env(
        root,
        EASEL_AUTH_TOKEN=SUITE_TOKEN,
        EASEL_MODEL_CACHE_RAM_BYTES=str(CACHE_BYTES),
        EASEL_GENERATION_KEEP_COUNT=str(KEEP_COUNT),
    )
    manager = start_service("model_manager", env, folder)
    inference = start_service("inference", env, folder)
    try:
        wait_serving(manager)
        wait_serving(inference)
        with EaselClient(client_settings(env)) as client:
            keys = _register_models(client, zoo, folder / "gone")
            yield Suite(client, manager, inference, keys)
    finally:
        inference.stop()
        manager.stop()


# --- helpers ------------------------------------------------------------------------------


def _text_to_image(model_key: str, seed: int | None = 1, **fields: Any) -> pb.TextToImage:
    values: dict[str, Any] = dict(
        model_key=model_key,
        positive_prompt="a cat",
        negative_prompt="the",
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        seed=seed,
    )
    return pb.TextToImage(**(values | fields))


def _create(suite: Suite, preview: int = 0, session_id: str = "", **operation: Any):
    request = pb.CreateGenerationRequest(session_id=session_id, preview=preview, **operation)
    return suite.client.generation.CreateGeneration(request).generation


def _wait(suite: Suite, generation_id: str) -> pb.Generation:
    request = pb.WaitGenerationRequest(id=generation_id)
    return suite.client.generation.WaitGeneration(request, timeout=WAIT_S).generation


def _run(suite: Suite, session_id: str = "", **operation: Any) -> pb.Generation:
    """Create a generation, wait for it and return it; it must complete."""
    done = _wait(suite, _create(suite, session_id=session_id, **operation).id)
    assert done.status == pb.GENERATION_STATUS_COMPLETED, (done.error_type, done.error)
    return done


def _tensor(suite: Suite, session_id: str = "", **operation: Any) -> str:
    return _run(suite, session_id, **operation).result.tensor.name


def _pixels(generation: pb.Generation) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(generation.result.image.png))).astype(np.int16)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _locked(suite: Suite) -> list[tuple[str, int]]:
    models = suite.client.model_cache.ListCachedModels(cache_pb.ListCachedModelsRequest()).models
    return [(model.key, model.submodel_type) for model in models if model.locked]


def _tensor_names(suite: Suite) -> list[str]:
    tensors = suite.client.tensors.ListTensors(tensor_pb.ListTensorsRequest()).tensors
    return [tensor.name for tensor in tensors]


def _payload(event: pb.InferenceEvent) -> str:
    return event.WhichOneof("payload")


def _loaded_keys(events: list[pb.InferenceEvent]) -> set[str]:
    return {e.model_load_started.model_key for e in events if e.HasField("model_load_started")}


# --- results ------------------------------------------------------------------------------


def test_a_seed_gives_the_same_pixels_and_another_seed_others(suite: Suite) -> None:
    sd1 = suite.keys["sd1"]
    first = _run(suite, text_to_image=_text_to_image(sd1, seed=1))
    again = _run(suite, text_to_image=_text_to_image(sd1, seed=1))
    other = _run(suite, text_to_image=_text_to_image(sd1, seed=2))
    chosen = _run(suite, text_to_image=_text_to_image(sd1, seed=None))

    assert np.array_equal(_pixels(first), _pixels(again))
    assert not np.array_equal(_pixels(first), _pixels(other))
    image = first.result.image
    assert (image.width, image.height, image.seed) == (SIZE, SIZE, 1)
    assert _pixels(first).shape == (SIZE, SIZE, 3)
    assert (first.step, first.total_steps) == (STEPS, STEPS)
    assert first.operation_kind == pb.OPERATION_KIND_TEXT_TO_IMAGE
    assert first.start_time.ToNanoseconds() <= first.end_time.ToNanoseconds()
    assert chosen.result.image.HasField("seed")
    assert chosen.result.image.seed < 2**32

    generation = suite.client.generation
    basic = generation.GetGeneration(
        pb.GetGenerationRequest(id=first.id, view=pb.GENERATION_VIEW_BASIC)
    ).generation
    assert (basic.result.image.png, basic.result.image.width) == (b"", SIZE)
    assert generation.GetGeneration(pb.GetGenerationRequest(id=first.id)).generation == first
    page = generation.ListGenerations(pb.ListGenerationsRequest(page_size=2))
    assert [g.id for g in page.generations] == [chosen.id, other.id]
    assert page.generations[0].result.image.png == b""
    following = generation.ListGenerations(
        pb.ListGenerationsRequest(page_size=2, page_token=page.next_page_token)
    )
    assert [g.id for g in following.generations][:2] == [again.id, first.id]


def test_building_blocks_give_the_pixels_of_text_to_image(suite: Suite) -> None:
    sd1, session = suite.keys["sd1"], "blocks"
    whole = _run(suite, text_to_image=_text_to_image(sd1, seed=5, negative_prompt="ugly"))

    positive = _tensor(suite, session, encode_prompt=pb.EncodePrompt(model_key=sd1, prompt="a cat"))
    negative = _tensor(suite, session, encode_prompt=pb.EncodePrompt(model_key=sd1, prompt="ugly"))
    noise = _tensor(suite, session, create_noise=pb.CreateNoise(seed=5, width=SIZE, height=SIZE))
    denoise = pb.DenoiseLatents(
        model_key=sd1,
        positive_conditioning=positive,
        negative_conditioning=negative,
        noise=noise,
        steps=STEPS,
    )
    latents_run = _run(suite, session, denoise_latents=denoise)
    latents = latents_run.result.tensor.name
    decode = pb.DecodeLatents(latents=latents, model_key=sd1)
    decoded = _run(suite, session, decode_latents=decode)

    assert np.array_equal(_pixels(decoded), _pixels(whole))
    assert latents_run.total_steps == STEPS
    assert not decoded.result.image.HasField("seed")
    tensors = suite.client.tensors
    listed = tensors.ListTensors(tensor_pb.ListTensorsRequest(session_id=session)).tensors
    assert [t.name for t in listed] == [latents, noise, negative, positive]
    noise_info = tensors.GetTensor(tensor_pb.GetTensorRequest(name=noise)).tensor
    assert noise_info.kind == tensor_pb.TENSOR_KIND_NOISE
    assert (list(noise_info.shape), noise_info.dtype) == ([1, 4, SIZE // 8, SIZE // 8], "float32")
    assert noise_info.session_id == session
    assert listed[0].kind == tensor_pb.TENSOR_KIND_LATENTS
    assert listed[0].generation_id == latents_run.id
    assert listed[2].kind == tensor_pb.TENSOR_KIND_CONDITIONING
    only_noise = tensor_pb.ListTensorsRequest(session_id=session, kind=tensor_pb.TENSOR_KIND_NOISE)
    assert [t.name for t in tensors.ListTensors(only_noise).tensors] == [noise]

    for info in listed:
        freed = tensors.DeleteTensor(tensor_pb.DeleteTensorRequest(name=info.name)).freed_bytes
        assert freed == info.size_bytes > 0
    with pytest.raises(errors.NotFoundError) as caught:
        tensors.GetTensor(tensor_pb.GetTensorRequest(name=noise))
    assert caught.value.reason == "TENSOR_NOT_FOUND"


def test_image_to_image_runs_floor_steps_x_strength_and_its_blocks_match(suite: Suite) -> None:
    sd1, session = suite.keys["sd1"], "img2img"
    init = _png(gradient(SIZE))

    def image_to_image(strength: float, steps: int = 10) -> pb.Generation:
        request = pb.ImageToImage(
            model_key=sd1, positive_prompt="a cat", init_image_png=init, steps=steps, seed=7
        )
        request.strength = strength
        return _run(suite, image_to_image=request)

    full, light, seven = image_to_image(1.0), image_to_image(0.3), image_to_image(0.7)
    assert (full.total_steps, full.step) == (10, 10)
    assert (light.total_steps, light.step) == (3, 3)
    assert seven.total_steps == 7  # 0.7 arrives as 0.699999988: rounded before the floor

    encode = pb.EncodeImage(image_png=init, model_key=sd1)
    init_latents = _tensor(suite, session, encode_image=encode)
    reconstruction = _run(
        suite, decode_latents=pb.DecodeLatents(latents=init_latents, model_key=sd1)
    )
    distance = {
        name: np.abs(_pixels(result) - _pixels(reconstruction)).mean()
        for name, result in (("full", full), ("light", light))
    }
    assert distance["light"] < distance["full"]

    prompts = [
        _tensor(suite, session, encode_prompt=pb.EncodePrompt(model_key=sd1, prompt=text))
        for text in ("a cat", "")
    ]
    noise = _tensor(suite, session, create_noise=pb.CreateNoise(seed=7, width=SIZE, height=SIZE))
    denoise = pb.DenoiseLatents(
        model_key=sd1,
        positive_conditioning=prompts[0],
        negative_conditioning=prompts[1],
        noise=noise,
        latents=init_latents,
        steps=10,
        denoising_start=0.7,
    )
    latents_run = _run(suite, session, denoise_latents=denoise)
    decode = pb.DecodeLatents(latents=latents_run.result.tensor.name, model_key=sd1)
    assert latents_run.total_steps == 3
    assert np.array_equal(_pixels(_run(suite, decode_latents=decode)), _pixels(light))


def test_a_lora_changes_the_pixels_of_its_generation_only(suite: Suite) -> None:
    sd1, lora = suite.keys["sd1"], suite.keys["lora"]
    plain = _run(suite, text_to_image=_text_to_image(sd1, seed=3))
    patched = _run(
        suite, text_to_image=_text_to_image(sd1, seed=3, loras=[pb.LoraWeight(model_key=lora)])
    )
    no_effect = _run(
        suite,
        text_to_image=_text_to_image(sd1, seed=3, loras=[pb.LoraWeight(model_key=lora, weight=0)]),
    )
    after = _run(suite, text_to_image=_text_to_image(sd1, seed=3))

    assert not np.array_equal(_pixels(patched), _pixels(plain))
    assert np.array_equal(_pixels(no_effect), _pixels(plain))
    assert np.array_equal(_pixels(after), _pixels(plain))  # the cached weights are as before
    assert _locked(suite) == []


def test_an_embedding_changes_the_pixels_where_its_trigger_is_and_only_there(
    suite: Suite,
) -> None:
    sd1, embedding = suite.keys["sd1"], suite.keys["embedding"]
    triggered = f"a {EMBEDDING_TRIGGER} cat"

    def t2i(**fields: Any) -> np.ndarray:
        return _pixels(_run(suite, text_to_image=_text_to_image(sd1, seed=4, **fields)))

    plain = t2i(positive_prompt=triggered)  # the trigger read as plain text
    taught = t2i(positive_prompt=triggered, embedding_keys=[embedding])
    in_negative = t2i(negative_prompt=EMBEDDING_TRIGGER, embedding_keys=[embedding])
    untriggered = t2i(embedding_keys=[embedding])
    after = t2i(positive_prompt=triggered)

    assert not np.array_equal(taught, plain)
    assert not np.array_equal(in_negative, t2i(negative_prompt=EMBEDDING_TRIGGER))
    assert np.array_equal(untriggered, t2i())  # named but not triggered: no effect
    assert np.array_equal(after, plain)  # the cached tokenizer and encoder are as before
    assert _locked(suite) == []

    # The building blocks with the embedding give the pixels of TextToImage with it.
    encoded = [
        _tensor(
            suite,
            encode_prompt=pb.EncodePrompt(model_key=sd1, prompt=text, embedding_keys=keys),
        )
        for text, keys in ((triggered, [embedding]), ("the", []))
    ]
    noise = _tensor(suite, create_noise=pb.CreateNoise(seed=4, width=SIZE, height=SIZE))
    denoise = pb.DenoiseLatents(
        model_key=sd1,
        positive_conditioning=encoded[0],
        negative_conditioning=encoded[1],
        noise=noise,
        steps=STEPS,
    )
    latents = _tensor(suite, denoise_latents=denoise)
    decoded = _run(suite, decode_latents=pb.DecodeLatents(latents=latents, model_key=sd1))
    assert np.array_equal(_pixels(decoded), taught)


def test_embedding_keys_that_cannot_serve_are_refused_or_fail_leaving_nothing(
    suite: Suite,
) -> None:
    sd1, lora = suite.keys["sd1"], suite.keys["lora"]
    embedding, sdxl_embedding = suite.keys["embedding"], suite.keys["sdxl_embedding"]
    generation = suite.client.generation
    generations_before = len(generation.ListGenerations(pb.ListGenerationsRequest()).generations)
    image = _png(gradient(SIZE))
    refused = [
        (
            {"text_to_image": _text_to_image(sd1, embedding_keys=[sd1])},
            "text_to_image.embedding_keys[0]",
            "WRONG_MODEL_TYPE",
        ),
        (
            {
                "image_to_image": pb.ImageToImage(
                    model_key=sd1, init_image_png=image, embedding_keys=[embedding, lora]
                )
            },
            "image_to_image.embedding_keys[1]",
            "WRONG_MODEL_TYPE",
        ),
        (
            {"encode_prompt": pb.EncodePrompt(model_key=sd1, embedding_keys=[sdxl_embedding])},
            "encode_prompt.embedding_keys[0]",
            "BASE_MISMATCH",
        ),
        (
            {"text_to_image": _text_to_image(sd1, embedding_keys=[embedding, embedding])},
            "text_to_image.embedding_keys[1]",
            "DUPLICATE_TRIGGER",
        ),
    ]
    for operation, field, reason in refused:
        with pytest.raises(errors.InvalidArgumentError) as caught:
            _create(suite, **operation)
        assert (caught.value.violations[0].field, caught.value.reason) == (field, reason)
    with pytest.raises(errors.NotFoundError):
        _create(suite, text_to_image=_text_to_image(sd1, embedding_keys=["no-such-model"]))
    after = generation.ListGenerations(pb.ListGenerationsRequest()).generations
    assert len(after) == generations_before

    # Vectors of the wrong width only show when the work loads them.
    wide = _text_to_image(sd1, positive_prompt="a <wide> cat")
    wide.embedding_keys.append(suite.keys["wide_embedding"])
    failed = _wait(suite, _create(suite, text_to_image=wide).id)
    assert failed.status == pb.GENERATION_STATUS_ERROR
    assert (failed.error_type, failed.error_code) == (
        "EMBEDDING_INCOMPATIBLE",
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
    )
    assert "text_to_image.embedding_keys[0]" in failed.error
    assert _locked(suite) == []


def test_a_single_file_checkpoint_gives_the_pixels_of_its_diffusers_folder(suite: Suite) -> None:
    folder = _run(suite, text_to_image=_text_to_image(suite.keys["sd1"], seed=9))
    single = _run(suite, text_to_image=_text_to_image(suite.keys["sd1_file"], seed=9))
    assert np.array_equal(_pixels(single), _pixels(folder))


def test_upscale_to_the_native_and_to_a_chosen_factor(suite: Suite) -> None:
    image = _png(Image.new("RGB", (16, 12), (200, 30, 90)))
    key = suite.keys["upscaler"]
    native = _run(suite, upscale=pb.Upscale(upscaler_model_key=key, image_png=image))
    halved = _run(suite, upscale=pb.Upscale(upscaler_model_key=key, image_png=image, scale=2))

    assert (native.result.image.width, native.result.image.height) == (64, 48)
    assert _pixels(halved).shape == (24, 32, 3)


def test_upscale_beyond_the_side_limit_is_refused_at_create(suite: Suite) -> None:
    image = _png(Image.new("RGB", (1025, 4)))
    upscale = pb.Upscale(upscaler_model_key=suite.keys["upscaler"], image_png=image, scale=8)
    before = suite.client.generation.ListGenerations(pb.ListGenerationsRequest()).generations
    with pytest.raises(errors.InvalidArgumentError) as caught:
        suite.client.generation.CreateGeneration(pb.CreateGenerationRequest(upscale=upscale))
    assert caught.value.reason == "OUTPUT_TOO_LARGE"
    assert [v.field for v in caught.value.violations] == ["upscale.scale"]
    after = suite.client.generation.ListGenerations(pb.ListGenerationsRequest()).generations
    assert after == before


def test_list_schedulers_sorted_and_paged(suite: Suite) -> None:
    generation = suite.client.generation
    schedulers = generation.ListSchedulers(pb.ListSchedulersRequest()).schedulers
    names = [s.name for s in schedulers]
    assert names == sorted(names)
    assert set(names) >= SCHEDULERS
    euler = next(s for s in schedulers if s.name == "euler")
    assert euler.diffusers_class == "EulerDiscreteScheduler"
    page = generation.ListSchedulers(pb.ListSchedulersRequest(page_size=5))
    assert [s.name for s in page.schedulers] == names[:5]
    assert page.next_page_token


def test_finished_generations_beyond_the_kept_count_are_forgotten(suite: Suite) -> None:
    noise = pb.CreateNoise(seed=1, width=SIZE, height=SIZE)
    runs = [_run(suite, session_id="kept", create_noise=noise) for _ in range(KEEP_COUNT + 1)]

    generation = suite.client.generation
    listed = generation.ListGenerations(pb.ListGenerationsRequest()).generations
    assert [g.id for g in listed] == [g.id for g in reversed(runs[1:])]
    with pytest.raises(errors.NotFoundError) as caught:
        generation.GetGeneration(pb.GetGenerationRequest(id=runs[0].id))
    assert caught.value.reason == "GENERATION_NOT_FOUND"
    tensors = tensor_pb.ListTensorsRequest(session_id="kept")  # tensors outlive generations
    assert len(suite.client.tensors.ListTensors(tensors).tensors) == KEEP_COUNT + 1


# --- events, cancellation, locks -----------------------------------------------------------


def test_progress_events_previews_and_a_cancel_that_frees_the_locks(suite: Suite) -> None:
    sd1, session = suite.keys["sd1"], "watch"
    long = _create(suite, session_id=session, text_to_image=_text_to_image(sd1, steps=1000))
    request = pb.WatchInferenceEventsRequest(session_ids=[session])
    stream = suite.client.generation.WatchInferenceEvents(request, timeout=WAIT_S)
    first = next(stream).event
    assert _payload(first) == "generation_snapshot"
    assert first.generation_snapshot.generation.id == long.id
    short = _create(
        suite,
        session_id=session,
        preview=pb.PREVIEW_MODE_EVERY_STEP,
        text_to_image=_text_to_image(sd1),
    )

    events: list[pb.InferenceEvent] = []
    for response in stream:
        events.append(response.event)
        if response.event.generation_id == long.id and _payload(response.event) == (
            "generation_progress"
        ):
            break
    assert (sd1, m.SUB_MODEL_TYPE_UNET) in _locked(suite)
    with pytest.raises(errors.DeadlineExceededError):  # the deadline ends the wait only
        suite.client.generation.WaitGeneration(pb.WaitGenerationRequest(id=long.id), timeout=0.2)
    running = suite.client.generation.GetGeneration(pb.GetGenerationRequest(id=long.id))
    assert running.generation.status == pb.GENERATION_STATUS_RUNNING
    step_at_cancel = suite.client.generation.CancelGeneration(
        pb.CancelGenerationRequest(id=long.id)
    ).generation.step
    for response in stream:
        events.append(response.event)
        if response.event.generation_id == short.id and _payload(response.event) in (
            "generation_completed",
            "generation_error",
        ):
            break
    stream.cancel()

    cancelled = _wait(suite, long.id)
    assert cancelled.status == pb.GENERATION_STATUS_CANCELLED
    assert 1 <= cancelled.step <= step_at_cancel + 1  # stopped within a step
    assert {event.dropped_count for event in events} == {0}
    assert {event.session_id for event in events} == {session}

    long_events = [e for e in events if e.generation_id == long.id]
    long_steps = [
        e.generation_progress.step for e in long_events if e.HasField("generation_progress")
    ]
    assert long_steps == list(range(long_steps[0], cancelled.step + 1))
    assert _payload(long_events[-1]) == "generation_cancelled"
    assert long_events[-1].generation_cancelled.step == cancelled.step

    short_events = [e for e in events if e.generation_id == short.id]
    kinds = [_payload(e) for e in short_events]
    assert kinds[:2] == ["generation_queued", "generation_started"]
    assert short_events[1].generation_started.total_steps == STEPS
    assert kinds[-1] == "generation_completed"
    progress = [e.generation_progress for e in short_events if e.HasField("generation_progress")]
    assert [p.step for p in progress] == list(range(1, STEPS + 1))
    assert {p.total_steps for p in progress} == {STEPS}
    assert {(p.preview.width, p.preview.height) for p in progress} == {(SIZE // 8, SIZE // 8)}
    assert Image.open(io.BytesIO(progress[0].preview.png)).size == (SIZE // 8, SIZE // 8)
    loaded = [e.model_load_completed for e in short_events if e.HasField("model_load_completed")]
    # Each part is loaded (found in the cache) once: unet, text encoder, tokenizer, scheduler, vae.
    assert len(loaded) == kinds.count("model_load_started") == 5
    assert {(load.model_key, load.cache_hit) for load in loaded} == {(sd1, True)}
    assert short_events[-1].generation_completed.result.image.png
    assert _locked(suite) == []


def test_watch_generation_ids_with_model_keys_passes_either(suite: Suite) -> None:
    """generation_ids with model_keys: the events of the generation (its model loads
    included) and the loads of the keys, from anywhere; nothing else."""
    sd1, upscaler, vae = suite.keys["sd1"], suite.keys["upscaler"], suite.keys["vae"]
    cache = suite.client.model_cache
    blocker = _create(suite, text_to_image=_text_to_image(sd1, steps=1000))
    watched = _create(suite, text_to_image=_text_to_image(sd1))
    request = pb.WatchInferenceEventsRequest(generation_ids=[watched.id], model_keys=[upscaler])
    stream = suite.client.generation.WatchInferenceEvents(request, timeout=WAIT_S)
    first = next(stream).event
    assert first.generation_snapshot.generation.status == pb.GENERATION_STATUS_QUEUED
    queued = pb.ListGenerationsRequest(statuses=[pb.GENERATION_STATUS_QUEUED])
    listed = suite.client.generation.ListGenerations(queued).generations
    assert [g.id for g in listed] == [watched.id]

    cache.LoadModel(cache_pb.LoadModelRequest(key=vae))
    other = _create(suite, create_noise=pb.CreateNoise(width=SIZE, height=SIZE))
    cache.LoadModel(cache_pb.LoadModelRequest(key=upscaler))
    suite.client.generation.CancelGeneration(pb.CancelGenerationRequest(id=blocker.id))
    _wait(suite, other.id)
    cache.LoadModel(cache_pb.LoadModelRequest(key=upscaler))  # the last event expected

    events = []
    for response in stream:
        events.append(response.event)
        if len([e for e in events if e.model_load_completed.model_key == upscaler]) == 2:
            break
    stream.cancel()

    generation_events = [e for e in events if e.generation_id]
    assert {e.generation_id for e in generation_events} == {watched.id}
    assert "generation_completed" in [_payload(e) for e in generation_events]
    assert _loaded_keys(generation_events) == {sd1}
    others = [e for e in events if not e.generation_id]
    assert [_payload(e) for e in others] == ["model_load_started", "model_load_completed"] * 2
    assert _loaded_keys(others) == {upscaler}

    # Only generation_ids: a snapshot each, then the end once all of them have ended.
    request = pb.WatchInferenceEventsRequest(generation_ids=[watched.id, other.id])
    ended = list(suite.client.generation.WatchInferenceEvents(request, timeout=WAIT_S))
    assert [r.event.generation_snapshot.generation.id for r in ended] == [watched.id, other.id]
    with pytest.raises(errors.NotFoundError):
        next(
            suite.client.generation.WatchInferenceEvents(
                pb.WatchInferenceEventsRequest(generation_ids=["no-such-generation"]),
                timeout=WAIT_S,
            )
        )


# --- errors ----------------------------------------------------------------------------------


def test_bad_requests_are_refused_naming_the_field_and_leave_nothing(suite: Suite) -> None:
    sd1, lora = suite.keys["sd1"], suite.keys["lora"]
    generation = suite.client.generation
    generations_before = len(generation.ListGenerations(pb.ListGenerationsRequest()).generations)
    tensors_before = _tensor_names(suite)
    image = _png(gradient(SIZE))

    def i2i(**fields: Any) -> dict[str, Any]:
        values = {"model_key": sd1, "init_image_png": image} | fields
        return {"image_to_image": pb.ImageToImage(**values)}

    invalid = [
        ({}, "operation"),
        ({"text_to_image": _text_to_image(lora)}, "text_to_image.model_key"),
        ({"text_to_image": _text_to_image(sd1, width=60)}, "text_to_image.width"),
        ({"text_to_image": _text_to_image(sd1, steps=1001)}, "text_to_image.steps"),
        ({"text_to_image": _text_to_image(sd1, scheduler="nope")}, "text_to_image.scheduler"),
        ({"text_to_image": _text_to_image(sd1, vae_key=sd1)}, "text_to_image.vae_key"),
        (i2i(strength=0), "image_to_image.strength"),
        (i2i(init_image_png=b"not a png"), "image_to_image.init_image_png"),
        ({"create_noise": pb.CreateNoise(width=0, height=SIZE)}, "create_noise.width"),
        ({"encode_image": pb.EncodeImage(image_png=image)}, "encode_image.model_key"),
        (
            {"encode_prompt": pb.EncodePrompt(model_key=sd1, loras=[pb.LoraWeight(model_key=sd1)])},
            "encode_prompt.loras[0].model_key",
        ),
    ]
    for operation, field in invalid:
        with pytest.raises(errors.InvalidArgumentError) as caught:
            _create(suite, **operation)
        assert caught.value.violations[0].field == field, caught.value
    with pytest.raises(errors.InvalidArgumentError) as caught:
        _create(suite, text_to_image=_text_to_image(lora))
    assert caught.value.reason == "WRONG_MODEL_TYPE"

    with pytest.raises(errors.NotFoundError):
        _create(suite, text_to_image=_text_to_image("no-such-model"))
    missing_tensor = pb.DenoiseLatents(
        model_key=sd1, positive_conditioning="x", negative_conditioning="x", noise="x"
    )
    with pytest.raises(errors.NotFoundError) as caught:
        _create(suite, denoise_latents=missing_tensor)
    assert caught.value.reason == "TENSOR_NOT_FOUND"
    for call, tensor_request in (
        (suite.client.tensors.GetTensor, tensor_pb.GetTensorRequest(name="x")),
        (suite.client.tensors.DeleteTensor, tensor_pb.DeleteTensorRequest(name="x")),
    ):
        with pytest.raises(errors.NotFoundError):
            call(tensor_request)

    after = generation.ListGenerations(pb.ListGenerationsRequest()).generations
    assert len(after) == generations_before
    assert _tensor_names(suite) == tensors_before
    assert _locked(suite) == []


def test_failures_while_running_end_the_generation_in_error(suite: Suite) -> None:
    tensors_before = _tensor_names(suite)
    expected = {
        "gone": ("MODEL_FILES_MISSING", grpc.StatusCode.FAILED_PRECONDITION),
        "no_loader": ("NO_LOADER", grpc.StatusCode.UNIMPLEMENTED),
        "too_big": ("OUT_OF_MEMORY", grpc.StatusCode.RESOURCE_EXHAUSTED),
    }
    for name, (error_type, code) in expected.items():
        created = _create(suite, text_to_image=_text_to_image(suite.keys[name]))
        assert created.status == pb.GENERATION_STATUS_QUEUED
        failed = _wait(suite, created.id)
        assert failed.status == pb.GENERATION_STATUS_ERROR
        assert (failed.error_type, failed.error_code) == (error_type, code.value[0]), failed.error
        assert failed.error
        assert not failed.HasField("result")
    assert _locked(suite) == []
    assert _tensor_names(suite) == tensors_before


def test_without_the_model_manager_create_is_unavailable_and_the_service_stays_up(
    suite: Suite,
) -> None:
    """Stops the module's model manager: keep this test last."""
    suite.manager.stop()
    with pytest.raises(errors.UnavailableError) as caught:
        _create(suite, text_to_image=_text_to_image(suite.keys["sd1"]))
    assert caught.value.reason == "MODEL_MANAGER_UNAVAILABLE"

    wait_serving(suite.inference, timeout=5)
    noise = _run(suite, create_noise=pb.CreateNoise(seed=1, width=SIZE, height=SIZE))
    assert noise.result.tensor.kind == tensor_pb.TENSOR_KIND_NOISE
    assert _locked(suite) == []
