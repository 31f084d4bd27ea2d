"""A generation's work loading its models: each model's record is looked up once per
generation and serves every part, and a record that changed since the last generation
still has the cache read its parts again."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType, SubModelType
from services.inference.events import EventContext, ModelLoadCompleted
from services.inference.generation.denoise import StepHooks
from services.inference.generation.operations import TextToImageParams
from services.inference.generation.work import MainModel, ModelPart, Workshop, diffusion_work
from services.inference.tensors.store import TensorStore
from tests.inference.conftest import record

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
    params = TextToImageParams(
        positive_prompt="a cat",
        negative_prompt="",
        width=64,
        height=64,
        steps=1,
        cfg_scale=7.5,
        scheduler="euler",
        seed=1,
    )
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
