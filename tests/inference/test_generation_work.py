"""A generation's work loading its models: each model's record is looked up once per
generation and serves every part, and a record that changed since the last generation
still has the cache read its parts again. Embeddings are taught to the text encoders for
one piece of work and removed however it ends."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType, SubModelType
from services.inference.events import EventContext, ModelLoadCompleted
from services.inference.generation.conditioning import encode_prompt
from services.inference.generation.denoise import DenoiseCancelled, StepHooks
from services.inference.generation.operations import TextToImageParams
from services.inference.generation.work import (
    EmbeddingRef,
    MainModel,
    ModelLocks,
    ModelPart,
    Workshop,
    diffusion_work,
)
from services.inference.tensors.store import TensorStore
from tests.inference.conftest import record
from tests.inference.test_patches import assert_bit_identical, snapshot
from tests.inference.zoo import EMBEDDING_TRIGGER


def _params(prompt: str, steps: int) -> TextToImageParams:
    return TextToImageParams(
        positive_prompt=prompt,
        negative_prompt="",
        width=64,
        height=64,
        steps=steps,
        cfg_scale=7.5,
        scheduler="euler",
        seed=1,
    )


def _embedding_record(path: Path, key: str, base: BaseModelType = BaseModelType.SD_1):
    return record(
        path,
        key=key,
        base=base,
        type=ModelType.TEXTUAL_INVERSION,
        format=ModelFormat.EMBEDDING_FILE,
    )


PARTS = {
    SubModelType.UNET,
    SubModelType.TEXT_ENCODER,
    SubModelType.TOKENIZER,
    SubModelType.SCHEDULER,
    SubModelType.VAE,
}


@pytest.fixture
def tensors(tmp_path: Path):
    store = TensorStore(tmp_path / "tensors", budget_bytes=1024 * 1024)
    yield store
    store.close()


async def test_a_generation_looks_each_record_up_once_and_a_changed_one_reloads(
    zoo, make_loads, tensors
):
    loads, records, events = make_loads()
    sd1 = record(zoo.sd1_diffusers, key="sd1", hash="blake3:aa")
    records.add(
        sd1, record(zoo.tiny_lora, key="lora", type=ModelType.LORA, format=ModelFormat.LYCORIS)
    )
    lookups: Counter[str] = Counter()
    look_up = records.get

    async def counted(key: str):
        lookups[key] += 1
        return await look_up(key)

    records.get = counted  # type: ignore[method-assign]
    shop = Workshop(loads, tensors, asyncio.get_running_loop())
    params = _params("a cat", steps=1)
    main = MainModel("sd1", BaseModelType.SD_1)
    work = diffusion_work(shop, main, ModelPart("sd1", SubModelType.VAE), [("lora", 1.0)], params)

    def completed() -> dict[SubModelType | None, bool]:
        done = [event for event in events if isinstance(event, ModelLoadCompleted)]
        return {event.load.submodel: event.cache_hit for event in done}

    context = EventContext(generation_id="g1")
    await asyncio.to_thread(work, StepHooks(context=context))
    assert lookups == {"sd1": 1, "lora": 1}
    assert completed() == dict.fromkeys(PARTS, False) | {None: False}
    assert {event.context for event in events} == {context}

    events.clear()
    await asyncio.to_thread(work, StepHooks())
    assert lookups == {"sd1": 2, "lora": 2}
    assert completed() == dict.fromkeys(PARTS, True) | {None: True}

    records.add(replace(sd1, hash="blake3:bb"))  # the model's files changed
    events.clear()
    await asyncio.to_thread(work, StepHooks())
    assert lookups == {"sd1": 3, "lora": 3}
    assert completed() == dict.fromkeys(PARTS, False) | {None: True}


async def test_an_embedding_is_removed_when_the_work_is_cancelled_mid_denoise(
    zoo, make_loads, tensors
):
    loads, records, _ = make_loads()
    records.add(
        record(zoo.sd1_diffusers, key="sd1"), _embedding_record(zoo.tiny_embedding, "style")
    )
    encoder = (await loads.load("sd1", SubModelType.TEXT_ENCODER)).entry.model
    tokenizer = (await loads.load("sd1", SubModelType.TOKENIZER)).entry.model
    before, vocabulary = snapshot(encoder), len(tokenizer)
    token_rows: list[int] = []

    def should_cancel() -> bool:
        """Cancel at the first denoising step, noting the encoder's token table first."""
        token_rows.append(encoder.get_input_embeddings().num_embeddings)
        return len(token_rows) > 1

    shop = Workshop(loads, tensors, asyncio.get_running_loop())
    embedding = EmbeddingRef("style", EMBEDDING_TRIGGER, "text_to_image.embedding_keys[0]")
    work = diffusion_work(
        shop,
        MainModel("sd1", BaseModelType.SD_1),
        ModelPart("sd1", SubModelType.VAE),
        [],
        _params(f"a {EMBEDDING_TRIGGER} cat", steps=5),
        [embedding],
    )
    with pytest.raises(DenoiseCancelled):
        await asyncio.to_thread(work, StepHooks(should_cancel=should_cancel))

    assert token_rows[0] == vocabulary + 2  # taught (two vectors) while the work ran
    assert_bit_identical(encoder, before)
    assert encoder.get_input_embeddings().num_embeddings == vocabulary
    assert len(tokenizer) == vocabulary
    assert [entry.key for entry in loads.cache.entries() if entry.locks] == []


async def test_an_sdxl_embedding_teaches_each_encoder_its_own_vectors(zoo, make_loads, tensors):
    loads, records, _ = make_loads()
    sdxl = record(zoo.sdxl_diffusers, key="sdxl", base=BaseModelType.SDXL)
    records.add(sdxl, _embedding_record(zoo.sdxl_embedding, "xl-style", BaseModelType.SDXL))
    shop = Workshop(loads, tensors, asyncio.get_running_loop())
    main = MainModel("sdxl", BaseModelType.SDXL)
    trigger = "<xl-style>"
    prompt = f"a {trigger} cat"

    def encode(embeddings: list[EmbeddingRef]) -> tuple[torch.Tensor, list[dict]]:
        with ExitStack() as stack:
            encoders = ModelLocks(shop, EventContext(), stack).text_encoders(main, embeddings)
            states = [snapshot(encoder.model) for encoder in encoders]
            return encode_prompt(encoders, prompt).embeds, states

    plain, states = await asyncio.to_thread(encode, [])
    ref = EmbeddingRef("xl-style", trigger, "encode_prompt.embedding_keys[0]")
    taught, _ = await asyncio.to_thread(encode, [ref])
    again, _ = await asyncio.to_thread(encode, [])

    first_width = 768  # the first encoder's (clip_l) part of the concatenated embeddings
    assert not torch.equal(taught[..., :first_width], plain[..., :first_width])
    assert not torch.equal(taught[..., first_width:], plain[..., first_width:])
    assert torch.equal(again, plain)
    parts = (SubModelType.TEXT_ENCODER, SubModelType.TEXT_ENCODER_2)
    for part, state in zip(parts, states, strict=True):
        assert_bit_identical((await loads.load("sdxl", part)).entry.model, state)
